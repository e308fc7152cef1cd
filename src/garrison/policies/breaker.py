"""Circuit-breaker policy: the pure state machine behind ``CircuitBreakerActor``.

:class:`BreakerPolicy` holds one service's breaker state. It has no thread, no lock, no clock
and no randomness of its own: every method that depends on time takes ``now`` (monotonic
seconds), and the jitter of the recovery backoff comes from an injected
:class:`random.Random`. It is owned by one actor, which asks it before each call, reports
each outcome back, arms a timer for :attr:`BreakerPolicy.next_transition_at`, and logs the
records of :meth:`BreakerPolicy.drain_transitions`.

States: ``"closed"`` (calls flow, outcomes are counted), ``"open"`` (calls are rejected until
the recovery wait is over), ``"half_open"`` (a few probe calls test the service), and the
manual ``"forced_open"`` (rejects until forced closed or reset) and ``"disabled"`` (admits
everything, counts nothing).

Closed → open, checked after each counted outcome:

- ``failure_threshold`` consecutive failures open the breaker, whatever ``min_calls`` says;
- once the sliding window holds at least ``min_calls`` outcomes, an error rate
  ``failures / calls >= error_rate_threshold`` opens it, and so does (when
  ``slow_call_duration`` is set) a slow-call rate ``slow / calls >= slow_call_rate_threshold``.
  A call is slow when its duration is ``>= slow_call_duration``; a slow success is still a
  success for the error rate, and a slow failure counts in both rates.

The window is either the last ``window_size`` outcomes (``window_type="count"``, a ring of
bytes) or the outcomes of the last ``window_size`` seconds (``"time"``), kept in at most 1024
equal buckets (1-second buckets for windows of up to 1024 s): a call at ``now`` falls in
bucket ``floor(now / width)`` and the window is the current bucket and the ``n - 1`` before it,
so memory is bounded whatever the traffic. The rates are re-evaluated only when an outcome is
recorded.

Open → half-open when ``now >= opened_at + wait``: on :meth:`BreakerPolicy.on_timer`, or lazily
at the next :meth:`BreakerPolicy.before_call`. The first opening after a close waits
``recovery_timeout`` exactly. Each consecutive re-opening (a half-open episode that failed)
waits ``recovery_timeout * recovery_backoff_multiplier ** k * U(0.9, 1.1)`` (``k`` re-openings
so far, ``U`` a uniform draw from the injected rng: jitter within ±10%), clamped to
``[recovery_timeout, max_recovery_timeout]``. No jitter is drawn when the multiplier is 1.
Closing resets the wait to ``recovery_timeout``.

Half-open admits ``half_open_max_calls`` probes and rejects the rest at once. It closes when
that many probes have succeeded (unless the share of slow successful probes is
``>= slow_call_rate_threshold``, when slow calls are tracked: then it re-opens), and re-opens
on the first failed probe. A probe that never reports back fails when its permit is at least
``probe_timeout`` old at a later :meth:`~BreakerPolicy.before_call`,
:meth:`~BreakerPolicy.on_timer` or :meth:`~BreakerPolicy.expire_probes`; reports themselves do
not expire other probes. A probe whose outcome is "ignored" frees its slot for another probe.

Permits and generations: every state change (and every reset) starts a new generation.
:meth:`~BreakerPolicy.before_call` returns a :class:`Permit` stamped with the generation;
reports carrying an older generation are ignored, so a call admitted while closed that fails
after the breaker opened does not count twice, and one that succeeds late cannot close it.

Outcome classification (:meth:`~BreakerPolicy.classify`): garrison's own rejections
(:class:`~garrison.errors.Rejected`) and exceptions that are not :class:`Exception`
(cancellation, interpreter exit) are ``"ignored"``; so is anything matching
``ignore_exceptions``. Otherwise, with ``record_exceptions`` empty every error is a
``"failure"``; with it set, matching errors are failures and all others count as a
``"success"`` (the service answered; the error is the caller's business), as in
Resilience4j.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from garrison.errors import ConfigError, Rejected
from garrison.policies.backoff import (
    ExceptionSpec,
    _check_exception_specs,
    _check_int,
    _check_number,
    _from_dict,
    exception_matches,
)

__all__ = [
    "CLOSED",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "OPEN",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreakerConfig",
    "Decision",
    "Outcome",
    "Permit",
    "Rejection",
    "Transition",
    "TransitionReason",
]

BreakerState: TypeAlias = Literal["closed", "open", "half_open", "forced_open", "disabled"]
"""The name of a breaker state, as reported by ``status()`` and transitions."""

Outcome: TypeAlias = Literal["failure", "success", "ignored"]
"""How :meth:`BreakerPolicy.classify` counts an error."""

TransitionReason: TypeAlias = Literal[
    "failure_threshold",
    "error_rate",
    "slow_call_rate",
    "recovery_timeout",
    "probes_succeeded",
    "probe_failed",
    "probe_timeout",
    "probe_slow_calls",
    "forced_open",
    "forced_close",
    "disabled",
    "reset",
    "fleet_trip",
    "fleet_recovered",
]
"""Why a :class:`Transition` happened (``fleet_*``: told by other processes, see
:meth:`BreakerPolicy.trip` and :meth:`BreakerPolicy.recover`)."""

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
FORCED_OPEN: Final = "forced_open"
DISABLED: Final = "disabled"

_STATES: Final[dict[str, BreakerState]] = {
    CLOSED: CLOSED,
    OPEN: OPEN,
    HALF_OPEN: HALF_OPEN,
    FORCED_OPEN: FORCED_OPEN,
    DISABLED: DISABLED,
}
_FAILURE: Final = "failure"
_SUCCESS: Final = "success"
_IGNORED: Final = "ignored"
_WINDOW_TYPES: Final = ("count", "time")
_MAX_TIME_BUCKETS: Final = 1024
_MAX_TRANSITIONS: Final = 256
_TYPE_CACHE_MAX: Final = 256
_SNAPSHOT_VERSION: Final = 1
_JITTER: Final = 0.1


def _time_buckets(window_size: float) -> tuple[int, float]:
    """The bucket count and width (seconds) of a time window of ``window_size`` seconds."""
    count = min(max(1, math.ceil(window_size)), _MAX_TIME_BUCKETS)
    return count, window_size / count


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Settings of one circuit breaker; validated at construction (ConfigError names the key).

    ``window_size`` counts calls for ``window_type="count"`` (an integer) and seconds for
    ``"time"``. ``max_recovery_timeout`` defaults to ``10 * recovery_timeout`` and
    ``probe_timeout`` to ``recovery_timeout`` (see :attr:`effective_max_recovery_timeout`,
    :attr:`effective_probe_timeout`); ``None`` keeps them following ``recovery_timeout``.
    ``record_exceptions`` / ``ignore_exceptions`` hold exception classes or names (``"OSError"``,
    ``"httpx.TransportError"``), matched against the error's class hierarchy. The module
    docstring gives the exact semantics.
    """

    failure_threshold: int = 5
    recovery_timeout: float = 30.0
    error_rate_threshold: float = 0.5
    min_calls: int = 10
    window_size: float = 100
    window_type: Literal["count", "time"] = "count"
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 1.0
    half_open_max_calls: int = 1
    recovery_backoff_multiplier: float = 1.0
    max_recovery_timeout: float | None = None
    record_exceptions: tuple[ExceptionSpec, ...] = ()
    ignore_exceptions: tuple[ExceptionSpec, ...] = ()
    probe_timeout: float | None = None

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _check_int("failure_threshold", self.failure_threshold, 1)
        recovery = _check_number(
            "recovery_timeout", self.recovery_timeout, minimum=0.0, exclusive_minimum=True
        )
        _set(self, "recovery_timeout", recovery)
        _set(
            self,
            "error_rate_threshold",
            _check_number(
                "error_rate_threshold",
                self.error_rate_threshold,
                minimum=0.0,
                exclusive_minimum=True,
                maximum=1.0,
            ),
        )
        min_calls = _check_int("min_calls", self.min_calls, 1)
        if self.window_type not in _WINDOW_TYPES:
            raise ConfigError("window_type", f"must be 'count' or 'time', got {self.window_type!r}")
        if self.window_type == "count":
            size = _check_int("window_size", self.window_size, 1)
            if min_calls > size:
                raise ConfigError(
                    "min_calls",
                    f"must be <= window_size ({size}) for a count window, got {min_calls}",
                )
        else:
            _set(
                self,
                "window_size",
                _check_number("window_size", self.window_size, minimum=0.0, exclusive_minimum=True),
            )
        if self.slow_call_duration is not None:
            _set(
                self,
                "slow_call_duration",
                _check_number(
                    "slow_call_duration",
                    self.slow_call_duration,
                    minimum=0.0,
                    exclusive_minimum=True,
                ),
            )
        _set(
            self,
            "slow_call_rate_threshold",
            _check_number(
                "slow_call_rate_threshold",
                self.slow_call_rate_threshold,
                minimum=0.0,
                exclusive_minimum=True,
                maximum=1.0,
            ),
        )
        _check_int("half_open_max_calls", self.half_open_max_calls, 1)
        _set(
            self,
            "recovery_backoff_multiplier",
            _check_number(
                "recovery_backoff_multiplier", self.recovery_backoff_multiplier, minimum=1.0
            ),
        )
        if self.max_recovery_timeout is not None:
            cap = _check_number("max_recovery_timeout", self.max_recovery_timeout, minimum=0.0)
            if cap < recovery:
                raise ConfigError(
                    "max_recovery_timeout",
                    f"must be >= recovery_timeout ({recovery:g}), got {cap:g}",
                )
            _set(self, "max_recovery_timeout", cap)
        for key in ("record_exceptions", "ignore_exceptions"):
            _set(self, key, _check_exception_specs(key, getattr(self, key)))
        if self.probe_timeout is not None:
            _set(
                self,
                "probe_timeout",
                _check_number(
                    "probe_timeout", self.probe_timeout, minimum=0.0, exclusive_minimum=True
                ),
            )

    @property
    def effective_max_recovery_timeout(self) -> float:
        """``max_recovery_timeout``, or ``10 * recovery_timeout`` when it is None."""
        cap = self.max_recovery_timeout
        return 10.0 * self.recovery_timeout if cap is None else cap

    @property
    def effective_probe_timeout(self) -> float:
        """``probe_timeout``, or ``recovery_timeout`` when it is None."""
        timeout = self.probe_timeout
        return self.recovery_timeout if timeout is None else timeout

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CircuitBreakerConfig:
        """Build from a mapping (e.g. a config file section); unknown keys raise ConfigError."""
        return _from_dict(cls, data)


# ---------------------------------------------------------------------------------------------
# Decisions and records
# ---------------------------------------------------------------------------------------------


class Permit(NamedTuple):
    """An admitted call: hand it back to ``on_success`` / ``on_failure`` when it finishes.

    ``generation`` is the breaker generation that admitted the call; ``probe`` is the probe id
    (>= 1) of a half-open probe and 0 otherwise; ``admitted_at`` is when a probe was admitted.
    Plain data: it survives pickling and a restart of the actor (see ``snapshot``).
    """

    generation: int
    probe: int = 0
    admitted_at: float = 0.0

    @property
    def admitted(self) -> bool:
        """Always True: a permit admits the call."""
        return True


class Rejection(NamedTuple):
    """A refused call: the breaker is in ``state``; try again in ``retry_after`` seconds.

    ``retry_after`` is the time left until half-open for ``"open"``, ``inf`` for
    ``"forced_open"`` (no automatic recovery), and 0 for ``"half_open"`` (all probe slots are
    taken; nobody knows when they free up, so the caller's own backoff applies).
    """

    state: BreakerState
    retry_after: float

    @property
    def admitted(self) -> bool:
        """Always False: a rejection refuses the call."""
        return False


Decision: TypeAlias = Permit | Rejection
"""What :meth:`BreakerPolicy.before_call` returns."""


class Transition(NamedTuple):
    """A state change, for the actor to log: ``from_state`` → ``to_state`` at ``at``."""

    from_state: BreakerState
    to_state: BreakerState
    reason: TransitionReason
    at: float | None


# ---------------------------------------------------------------------------------------------
# Sliding windows
# ---------------------------------------------------------------------------------------------


class _Window:
    """Totals over a sliding window of outcomes: ``calls``, ``failures``, ``slow``."""

    __slots__ = ("calls", "failures", "slow")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, failure: bool, slow: bool, now: float) -> None:
        """Add one outcome at ``now``."""
        raise NotImplementedError

    def counts(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow) as of ``now``, without changing anything."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every outcome."""
        raise NotImplementedError

    def dump(self) -> dict[str, Any]:
        """Plain data for a snapshot."""
        raise NotImplementedError

    def load(self, data: Mapping[str, Any]) -> None:
        """Refill from :meth:`dump` output of a window of the same shape (else stay empty)."""
        raise NotImplementedError


class _CountWindow(_Window):
    """The last ``size`` outcomes, in a ring of bytes (bit 0: failure, bit 1: slow)."""

    __slots__ = ("_pos", "_ring", "_size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._ring = bytearray(size)
        self._pos = 0

    def record(self, failure: bool, slow: bool, now: float) -> None:
        pos = self._pos
        ring = self._ring
        if self.calls == self._size:
            old = ring[pos]
            if old:
                if old & 1:
                    self.failures -= 1
                if old & 2:
                    self.slow -= 1
        else:
            self.calls += 1
        code = 0
        if failure:
            code = 1
            self.failures += 1
        if slow:
            code |= 2
            self.slow += 1
        ring[pos] = code
        pos += 1
        self._pos = 0 if pos == self._size else pos

    def counts(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        self._ring = bytearray(self._size)
        self._pos = 0
        self.calls = self.failures = self.slow = 0

    def _chronological(self) -> bytes:
        if self.calls < self._size:
            return bytes(self._ring[: self.calls])
        return bytes(self._ring[self._pos :] + self._ring[: self._pos])

    def dump(self) -> dict[str, Any]:
        return {"type": "count", "size": self._size, "outcomes": list(self._chronological())}

    def load(self, data: Mapping[str, Any]) -> None:
        self.clear()
        if data.get("type") != "count" or data.get("size") != self._size:
            return
        outcomes = data.get("outcomes")
        if not isinstance(outcomes, list):
            raise ValueError("invalid breaker snapshot: window outcomes must be a list")
        for code in outcomes[-self._size :]:
            if not isinstance(code, int) or not 0 <= code <= 3:
                raise ValueError(f"invalid breaker snapshot: window outcome {code!r}")
            self.record(bool(code & 1), bool(code & 2), 0.0)


class _TimeWindow(_Window):
    """The outcomes of the last ``count * width`` seconds, in ``count`` ring buckets."""

    __slots__ = ("_bcalls", "_bfailures", "_bslow", "_count", "_head", "_width")

    def __init__(self, count: int, width: float) -> None:
        super().__init__()
        self._count = count
        self._width = width
        self._bcalls = [0] * count
        self._bfailures = [0] * count
        self._bslow = [0] * count
        self._head = -(1 << 62)  # absolute index of the newest bucket

    def _index(self, now: float) -> int:
        return int(now // self._width)

    def _advance(self, index: int) -> None:
        head = self._head
        count = self._count
        if index - head >= count:
            if self.calls:
                self.clear()
        else:
            bcalls = self._bcalls
            for absolute in range(head + 1, index + 1):
                slot = absolute % count
                calls = bcalls[slot]
                if calls:
                    self.calls -= calls
                    self.failures -= self._bfailures[slot]
                    self.slow -= self._bslow[slot]
                    bcalls[slot] = self._bfailures[slot] = self._bslow[slot] = 0
        self._head = index

    def record(self, failure: bool, slow: bool, now: float) -> None:
        index = int(now // self._width)
        if index > self._head:
            self._advance(index)
        slot = self._head % self._count  # a clock that went backwards writes to the newest
        self._bcalls[slot] += 1
        self.calls += 1
        if failure:
            self._bfailures[slot] += 1
            self.failures += 1
        if slow:
            self._bslow[slot] += 1
            self.slow += 1

    def counts(self, now: float) -> tuple[int, int, int]:
        index = self._index(now)
        head = self._head
        if index <= head:
            return self.calls, self.failures, self.slow
        count = self._count
        if index - head >= count:
            return 0, 0, 0
        calls, failures, slow = self.calls, self.failures, self.slow
        for absolute in range(head + 1, index + 1):
            slot = absolute % count
            calls -= self._bcalls[slot]
            failures -= self._bfailures[slot]
            slow -= self._bslow[slot]
        return calls, failures, slow

    def clear(self) -> None:
        count = self._count
        self._bcalls = [0] * count
        self._bfailures = [0] * count
        self._bslow = [0] * count
        self.calls = self.failures = self.slow = 0

    def dump(self) -> dict[str, Any]:
        return {
            "type": "time",
            "buckets": self._count,
            "width": self._width,
            "head": self._head,
            "calls": list(self._bcalls),
            "failures": list(self._bfailures),
            "slow": list(self._bslow),
        }

    def load(self, data: Mapping[str, Any]) -> None:
        self.clear()
        if (
            data.get("type") != "time"
            or data.get("buckets") != self._count
            or data.get("width") != self._width
        ):
            return
        head = data.get("head")
        lists = [data.get(name) for name in ("calls", "failures", "slow")]
        if not isinstance(head, int) or isinstance(head, bool):
            raise ValueError("invalid breaker snapshot: window head must be an int")
        for values in lists:
            if (
                not isinstance(values, list)
                or len(values) != self._count
                or not all(isinstance(v, int) and v >= 0 for v in values)
            ):
                raise ValueError("invalid breaker snapshot: window buckets")
        bcalls, bfailures, bslow = (list(values) for values in lists)  # type: ignore[arg-type]
        self._bcalls, self._bfailures, self._bslow = bcalls, bfailures, bslow
        self._head = head
        self.calls, self.failures, self.slow = sum(bcalls), sum(bfailures), sum(bslow)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


def _snapshot_int(snapshot: Mapping[str, Any], key: str) -> int:
    value = snapshot.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid breaker snapshot: {key} must be an int, got {value!r}")
    return value


def _snapshot_float(snapshot: Mapping[str, Any], key: str) -> float:
    value = snapshot.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"invalid breaker snapshot: {key} must be a number, got {value!r}")
    return float(value)


class BreakerPolicy:
    """The state of one circuit breaker and the rules that move it. Pure; single-owner.

    ``rng`` draws the recovery-backoff jitter (pass a seeded ``random.Random`` in tests; a
    fresh one is made when omitted). See the module docstring for the semantics. Mutating
    methods return nothing; state changes they cause are queued as :class:`Transition`
    records for :meth:`drain_transitions` (the last 256 are kept).
    """

    __slots__ = (
        "_consecutive",
        "_error_rate",
        "_failure_threshold",
        "_generation",
        "_half_open_max",
        "_max_wait",
        "_min_calls",
        "_next_probe",
        "_opened_at",
        "_outcomes",
        "_permit",
        "_probe_slow",
        "_probe_successes",
        "_probe_timeout",
        "_probes",
        "_probes_admitted",
        "_reopenings",
        "_rng",
        "_slow_duration",
        "_slow_enabled",
        "_slow_rate",
        "_state",
        "_transitions",
        "_wait",
        "_window",
        "config",
    )

    def __init__(self, config: CircuitBreakerConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._failure_threshold = config.failure_threshold
        self._min_calls = config.min_calls
        self._error_rate = config.error_rate_threshold
        self._slow_enabled = config.slow_call_duration is not None
        self._slow_duration = (
            config.slow_call_duration if config.slow_call_duration is not None else math.inf
        )
        self._slow_rate = config.slow_call_rate_threshold
        self._half_open_max = config.half_open_max_calls
        self._probe_timeout = config.effective_probe_timeout
        self._max_wait = config.effective_max_recovery_timeout
        self._window: _Window
        if config.window_type == "count":
            self._window = _CountWindow(int(config.window_size))
        else:
            self._window = _TimeWindow(*_time_buckets(config.window_size))
        self._state: BreakerState = CLOSED
        self._generation = 0
        self._permit = Permit(0)
        self._consecutive = 0
        self._opened_at = 0.0
        self._wait = config.recovery_timeout
        self._reopenings = 0
        self._probes: dict[int, float] = {}
        self._next_probe = 1
        self._probes_admitted = 0
        self._probe_successes = 0
        self._probe_slow = 0
        self._transitions: deque[Transition] = deque(maxlen=_MAX_TRANSITIONS)
        self._outcomes: dict[type[BaseException], Outcome] = {}

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state name (no lazy transition: see :meth:`before_call`)."""
        return self._state

    @property
    def generation(self) -> int:
        """The current generation; it changes with every state change and reset."""
        return self._generation

    @property
    def consecutive_failures(self) -> int:
        """Failures counted in a row while closed."""
        return self._consecutive

    @property
    def recovery_wait(self) -> float:
        """The current open → half-open wait (grows with consecutive re-openings)."""
        return self._wait

    @property
    def next_transition_at(self) -> float | None:
        """When a timer should call :meth:`on_timer`, or None when no timed change is due.

        Open: when half-open is due. Half-open: when the oldest outstanding probe expires.
        """
        state = self._state
        if state is OPEN:
            return self._opened_at + self._wait
        if state is HALF_OPEN and self._probes:
            return min(self._probes.values()) + self._probe_timeout
        return None

    def retry_after(self, now: float) -> float:
        """Seconds until the breaker may admit calls again (0 when it admits them now)."""
        state = self._state
        if state is OPEN:
            left = self._opened_at + self._wait - now
            return left if left > 0.0 else 0.0
        if state is FORCED_OPEN:
            return math.inf
        return 0.0

    def classify(self, error: BaseException) -> Outcome:
        """Count ``error`` as ``"failure"``, ``"success"`` or ``"ignored"``.

        Rejections by garrison and non-``Exception`` errors (cancellation, interpreter exit)
        are ignored, as is anything in ``ignore_exceptions``. With ``record_exceptions``
        empty every other error is a failure; otherwise only matching errors are, and the
        rest count as successes.
        """
        error_type = type(error)
        outcome = self._outcomes.get(error_type)
        if outcome is None:
            config = self.config
            if (
                not issubclass(error_type, Exception)
                or issubclass(error_type, Rejected)
                or exception_matches(error_type, config.ignore_exceptions)
            ):
                outcome = _IGNORED
            elif not config.record_exceptions or exception_matches(
                error_type, config.record_exceptions
            ):
                outcome = _FAILURE
            else:
                outcome = _SUCCESS
            if len(self._outcomes) >= _TYPE_CACHE_MAX:
                self._outcomes.clear()
            self._outcomes[error_type] = outcome
        return outcome

    def status(self, now: float) -> dict[str, Any]:
        """Plain-data view for ``api.status()``; changes nothing.

        Keys: state, calls / failures / slow_calls (in the window as of ``now``),
        error_rate, slow_call_rate, consecutive_failures, failure_threshold, min_calls,
        retry_after, recovery_timeout (the current wait), reopenings, next_transition_at,
        half_open_in_flight, half_open_successes, half_open_max_calls, window_type,
        window_size, generation.
        """
        calls, failures, slow = self._window.counts(now)
        return {
            "state": self._state,
            "calls": calls,
            "failures": failures,
            "slow_calls": slow,
            "error_rate": failures / calls if calls else 0.0,
            "slow_call_rate": slow / calls if calls else 0.0,
            "consecutive_failures": self._consecutive,
            "failure_threshold": self._failure_threshold,
            "min_calls": self._min_calls,
            "retry_after": self.retry_after(now),
            "recovery_timeout": self._wait,
            "reopenings": self._reopenings,
            "next_transition_at": self.next_transition_at,
            "half_open_in_flight": len(self._probes),
            "half_open_successes": self._probe_successes,
            "half_open_max_calls": self._half_open_max,
            "window_type": self.config.window_type,
            "window_size": self.config.window_size,
            "generation": self._generation,
        }

    def drain_transitions(self) -> tuple[Transition, ...]:
        """Return and forget the queued transition records, oldest first."""
        if not self._transitions:
            return ()
        records = tuple(self._transitions)
        self._transitions.clear()
        return records

    # -- calls ---------------------------------------------------------------------------------

    def before_call(self, now: float) -> Permit | Rejection:
        """Admit (a :class:`Permit`) or refuse (a :class:`Rejection`) a call at ``now``.

        Moves open → half-open when the wait is over and expires overdue probes first.
        """
        if self._state is CLOSED:
            return self._permit
        return self._before_call_slow(now)

    def _before_call_slow(self, now: float) -> Permit | Rejection:
        state = self._state
        if state is DISABLED:
            return self._permit
        if state is OPEN:
            due = self._opened_at + self._wait
            if now < due:
                return Rejection(OPEN, due - now)
            self._change(HALF_OPEN, "recovery_timeout", now)
        elif state is FORCED_OPEN:
            return Rejection(FORCED_OPEN, math.inf)
        elif self._probes and self._expire(now):
            return Rejection(OPEN, self._wait)
        if self._probes_admitted >= self._half_open_max:
            return Rejection(HALF_OPEN, 0.0)
        self._probes_admitted += 1
        probe = self._next_probe
        self._next_probe = probe + 1
        self._probes[probe] = now
        return Permit(self._generation, probe, now)

    def on_success(self, permit: Permit, duration: float, now: float) -> None:
        """Report that the call admitted with ``permit`` succeeded after ``duration`` s."""
        if permit.generation != self._generation:
            return
        state = self._state
        if state is CLOSED:
            self._consecutive = 0
            window = self._window
            window.record(False, duration >= self._slow_duration, now)
            if window.calls >= self._min_calls:
                self._check_rates(now)
        elif state is HALF_OPEN:
            self._probe_succeeded(permit.probe, duration >= self._slow_duration, now)

    def on_failure(
        self,
        permit: Permit,
        duration: float,
        now: float,
        error: BaseException | None = None,
    ) -> None:
        """Report that the call admitted with ``permit`` failed after ``duration`` s.

        ``error`` is classified with :meth:`classify` (None: a plain failure, e.g. a bad
        result): an ignored error changes nothing but frees a half-open probe slot, and an
        error that counts as success is reported as one.
        """
        if error is not None:
            outcome = self.classify(error)
            if outcome is not _FAILURE:
                if outcome is _SUCCESS:
                    self.on_success(permit, duration, now)
                else:
                    self.on_ignored(permit)
                return
        if permit.generation != self._generation:
            return
        state = self._state
        if state is CLOSED:
            self._consecutive += 1
            window = self._window
            window.record(True, duration >= self._slow_duration, now)
            if self._consecutive >= self._failure_threshold:
                self._open(now, "failure_threshold")
            elif window.calls >= self._min_calls:
                self._check_rates(now)
        elif state is HALF_OPEN and permit.probe in self._probes:
            self._open(now, "probe_failed")

    def on_ignored(self, permit: Permit) -> None:
        """Report that the call's outcome says nothing about the service (e.g. a Rejected).

        Counts nothing; a half-open probe's slot is freed for another probe.
        """
        if (
            permit.generation == self._generation
            and self._state is HALF_OPEN
            and self._probes.pop(permit.probe, None) is not None
        ):
            self._probes_admitted -= 1

    def _probe_succeeded(self, probe: int, slow: bool, now: float) -> None:
        if self._probes.pop(probe, None) is None:
            return
        self._probe_successes += 1
        if slow:
            self._probe_slow += 1
        if self._probe_successes >= self._half_open_max:
            if self._slow_enabled and self._probe_slow / self._half_open_max >= self._slow_rate:
                self._open(now, "probe_slow_calls")
            else:
                self._close(now, "probes_succeeded")

    def _check_rates(self, now: float) -> None:
        window = self._window
        calls = window.calls
        if window.failures / calls >= self._error_rate:
            self._open(now, "error_rate")
        elif self._slow_enabled and window.slow / calls >= self._slow_rate:
            self._open(now, "slow_call_rate")

    # -- time ----------------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Apply the timed changes due at ``now``: open → half-open, expired probes."""
        state = self._state
        if state is OPEN:
            if now >= self._opened_at + self._wait:
                self._change(HALF_OPEN, "recovery_timeout", now)
        elif state is HALF_OPEN and self._probes:
            self._expire(now)

    def expire_probes(self, now: float) -> bool:
        """Fail the half-open probes whose permits are ``probe_timeout`` old; True if any."""
        if self._state is HALF_OPEN and self._probes:
            return self._expire(now)
        return False

    def _expire(self, now: float) -> bool:
        limit = now - self._probe_timeout
        for admitted_at in self._probes.values():
            if admitted_at <= limit:
                self._open(now, "probe_timeout")
                return True
        return False

    # -- other processes (a shared backend) ----------------------------------------------------

    def trip(self, now: float, opened_at: float | None = None) -> None:
        """Open because other processes tripped (reason ``"fleet_trip"``).

        ``opened_at`` (default ``now``, never later) is when the trip happened, so the
        recovery wait runs from there. Closed and half-open breakers open; an open one
        restarts its wait if the trip is newer than its own opening; forced and disabled
        breakers are left alone.
        """
        state = self._state
        if state is FORCED_OPEN or state is DISABLED:
            return
        at = now if opened_at is None else min(opened_at, now)
        if state is OPEN and at <= self._opened_at:
            return
        self._open(at, "fleet_trip")

    def recover(self, now: float) -> None:
        """Close because another process's probes succeeded (reason ``"fleet_recovered"``);
        only an open or half-open breaker changes."""
        if self._state is OPEN or self._state is HALF_OPEN:
            self._close(now, "fleet_recovered")

    # -- manual control ------------------------------------------------------------------------

    def force_open(self, now: float | None = None) -> None:
        """Reject every call until :meth:`force_close` or :meth:`reset` (``"forced_open"``)."""
        if self._state is not FORCED_OPEN:
            self._change(FORCED_OPEN, "forced_open", now)

    def force_close(self, now: float | None = None) -> None:
        """Close the breaker with fresh counters and the initial recovery wait."""
        self._close(now, "forced_close")

    def reset(self, now: float | None = None) -> None:
        """Return to the initial state (closed, empty window); also leaves disabled/forced."""
        self._close(now, "reset")

    def disable(self, now: float | None = None) -> None:
        """Admit every call and count nothing (``"disabled"``) until reset or forced."""
        if self._state is not DISABLED:
            self._change(DISABLED, "disabled", now)

    # -- transitions ---------------------------------------------------------------------------

    def _recovery_wait(self) -> float:
        config = self.config
        base = config.recovery_timeout
        multiplier = config.recovery_backoff_multiplier
        reopenings = self._reopenings
        if reopenings == 0 or multiplier == 1.0:
            return base
        try:
            raw = base * multiplier**reopenings
        except OverflowError:
            raw = math.inf
        wait = raw * self._rng.uniform(1.0 - _JITTER, 1.0 + _JITTER)
        return min(max(wait, base), self._max_wait)

    def _open(self, now: float, reason: TransitionReason) -> None:
        if self._state is HALF_OPEN:
            self._reopenings += 1
        else:
            self._reopenings = 0
        self._wait = self._recovery_wait()
        self._opened_at = now
        self._change(OPEN, reason, now)

    def _close(self, now: float | None, reason: TransitionReason) -> None:
        self._window.clear()
        self._consecutive = 0
        self._reopenings = 0
        self._wait = self.config.recovery_timeout
        self._change(CLOSED, reason, now)

    def _change(self, to: BreakerState, reason: TransitionReason, now: float | None) -> None:
        previous = self._state
        self._state = to
        self._generation += 1
        self._permit = Permit(self._generation)
        self._probes.clear()
        self._probes_admitted = 0
        self._probe_successes = 0
        self._probe_slow = 0
        if previous is not to:
            self._transitions.append(Transition(previous, to, reason, now))

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (ints, floats, strings, lists, dicts).

        Times are the owner's monotonic clock readings, so a snapshot is meant for a restart
        within the same process (a crashed actor's replacement), not for another host.
        """
        return {
            "version": _SNAPSHOT_VERSION,
            "state": self._state,
            "generation": self._generation,
            "consecutive_failures": self._consecutive,
            "opened_at": self._opened_at,
            "recovery_wait": self._wait,
            "reopenings": self._reopenings,
            "probes": [[probe, at] for probe, at in self._probes.items()],
            "next_probe": self._next_probe,
            "probes_admitted": self._probes_admitted,
            "probe_successes": self._probe_successes,
            "probe_slow": self._probe_slow,
            "window": self._window.dump(),
        }

    @classmethod
    def restore(
        cls,
        config: CircuitBreakerConfig,
        rng: random.Random | None,
        snapshot: Mapping[str, Any],
    ) -> BreakerPolicy:
        """A policy in the state :meth:`snapshot` captured (an open breaker stays open).

        Permits issued before the snapshot stay valid. If the window's shape changed in
        ``config``, the window restarts empty; a recovery wait above the new
        ``max_recovery_timeout`` is cut to it. Raises ValueError for malformed data.
        """
        if not isinstance(snapshot, Mapping) or snapshot.get("version") != _SNAPSHOT_VERSION:
            raise ValueError("invalid breaker snapshot: unknown version")
        policy = cls(config, rng)
        state = _STATES.get(str(snapshot.get("state")))
        if state is None:
            raise ValueError(f"invalid breaker snapshot: state {snapshot.get('state')!r}")
        policy._state = state
        policy._generation = _snapshot_int(snapshot, "generation")
        policy._permit = Permit(policy._generation)
        policy._consecutive = _snapshot_int(snapshot, "consecutive_failures")
        policy._opened_at = _snapshot_float(snapshot, "opened_at")
        policy._wait = min(_snapshot_float(snapshot, "recovery_wait"), policy._max_wait)
        policy._reopenings = _snapshot_int(snapshot, "reopenings")
        policy._next_probe = _snapshot_int(snapshot, "next_probe")
        policy._probes_admitted = _snapshot_int(snapshot, "probes_admitted")
        policy._probe_successes = _snapshot_int(snapshot, "probe_successes")
        policy._probe_slow = _snapshot_int(snapshot, "probe_slow")
        probes = snapshot.get("probes")
        if not isinstance(probes, list):
            raise ValueError("invalid breaker snapshot: probes must be a list")
        for item in probes:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError(f"invalid breaker snapshot: probe {item!r}")
            probe, at = item
            if isinstance(probe, bool) or not isinstance(probe, int):
                raise ValueError(f"invalid breaker snapshot: probe {item!r}")
            if isinstance(at, bool) or not isinstance(at, int | float):
                raise ValueError(f"invalid breaker snapshot: probe {item!r}")
            policy._probes[probe] = float(at)
        window = snapshot.get("window")
        if not isinstance(window, Mapping):
            raise ValueError("invalid breaker snapshot: window must be a mapping")
        policy._window.load(window)
        return policy

    def __repr__(self) -> str:
        return (
            f"BreakerPolicy(state={self._state!r}, generation={self._generation}, "
            f"consecutive_failures={self._consecutive}, calls={self._window.calls})"
        )
