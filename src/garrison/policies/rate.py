"""Pure rate-limiting policy: the decisions behind garrison's ``RateLimiterActor``.

Nothing here has a thread, a clock or a lock. Every decision takes ``now``, the caller's
monotonic time in seconds, which must not decrease from one call to the next. A
:class:`RateLimitPolicy` keeps per-key state for the windows of a :class:`RateLimitConfig`
and answers each request with a :class:`Decision`.

Three algorithms, one contract: a window ``"1m": 100`` is a limit ``N = 100`` over a length
``T = 60`` s; a request of ``cost`` ``c`` uses ``c`` units of it. Several windows are checked
together and a request consumes all of them or none.

====================  ==========================================  ==========================
algorithm             admits a request at ``now`` iff              state per key
====================  ==========================================  ==========================
``sliding_log``       the units admitted in ``(now - T, now]``     one log of the last
(default, exact)      plus ``c`` are at most ``N``. Exact: never   ``max(N)`` admission times
                      more than ``N`` in *any* window of length    (shared by all windows): a
                      ``T``, and never a needless rejection.       list that grows with use,
                                                                   never beyond ``max(N)``,
                                                                   and shrinks when half of
                                                                   it has expired.
``sliding_window``    ``prev * (1 - f) + cur + c <= N``, with      per window two counters
(approximate, O(1))   ``cur``/``prev`` the units of the current    and a window index, all
                      and previous fixed (aligned) windows and     packed in one int.
                      ``f`` the elapsed fraction of the current
                      one. Error bound: at most ``N`` in each
                      aligned window, at most ``2N - 1`` in a
                      sliding window of length ``T`` (worst case:
                      the previous window's traffic bunched at
                      its end); it may also reject where the
                      exact log would admit (previous traffic
                      early in its window). Exact for traffic
                      spread evenly.
``gcra``              the theoretical arrival time ``TAT`` of      per window one float
(smooth rate)         each window, advanced by ``c * T / N``,      (several: packed in one
                      is at most ``T`` ahead of ``now``. A burst   bytes object).
                      of ``N``, then one every ``T / N``: up to
                      ``2N - 1`` in one window of length ``T``
                      *by design*; in any interval of length
                      ``d``, at most ``N + d * N / T``.
====================  ==========================================  ==========================

A rejection carries ``retry_after``: the earliest delay after which *every* window would
admit the same request if nothing else is admitted meanwhile (each window's verdict only
improves with time, so that is the latest of the per-window times). It is exact for
``sliding_log`` and ``gcra``; for ``sliding_window`` it is where the estimate that the
decision uses falls far enough. In every case it is checked against the decision itself, so
the request is admitted at ``now + retry_after`` (never "retry" into another rejection), and
it is minimal up to float rounding (GCRA compares with a relative tolerance of ``2**-50``).
With several windows it is exactly minimal: ``now + retry_after`` is the least float time
``T`` at which the decision admits (or the float after it, where ``T - now`` rounds), and
while a key's state does not change, its repeated rejections are answered from a memo of
``T`` in O(1), with the same answer as the full computation (see ``_Memo``).

Adaptive throttling scales every window down with :meth:`RateLimitPolicy.set_rate_factor`
(effective limit ``max(1, floor(N * f))``, never above ``N``). A request whose cost exceeds
the effective limit (but not ``N``) is admitted only when its windows are otherwise empty.

Per-key state is dropped ``key_ttl - T_max`` seconds (``T_max``: the longest window; the
default ``key_ttl`` is ``T_max``) after it stopped affecting decisions: for ``sliding_log``
exactly ``key_ttl`` after the key's last admission, for ``gcra`` at the latest then, for
``sliding_window`` up to one window later (the previous-window counter still counts). Keys
are kept in order of last admission and dropped from the front, a few per call (each call
adds at most one key), so no call ever scans all keys; :meth:`RateLimitPolicy.expire` frees
the rest when traffic stops.
"""

from __future__ import annotations

import difflib
import math
import re
import struct
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, get_args

from garrison.errors import ConfigError, RateLimited

__all__ = [
    "Algorithm",
    "Decision",
    "OnLimit",
    "RateLimitConfig",
    "RateLimitPolicy",
    "ThrottleStrategy",
    "Window",
    "parse_window",
]

Algorithm = Literal["sliding_log", "gcra", "sliding_window"]
"""The rate-limiting algorithms (see the module docstring)."""
OnLimit = Literal["wait", "reject"]
"""What the limiter actor does with a request over the limit: queue it or reject it."""
ThrottleStrategy = Literal["fixed", "exponential", "adaptive"]
"""How the limiter actor slows down after rate-limit signals from the service."""

_ALGORITHMS: Final = get_args(Algorithm)
_ON_LIMIT: Final = get_args(OnLimit)
_STRATEGIES: Final = get_args(ThrottleStrategy)

_UNITS: Final[Mapping[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_WINDOW_RE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_EXPIRE_PER_CALL: Final = 4
"""Expired keys dropped per call at most (each call adds at most one key)."""
_COMPACT_MIN: Final = 8
"""A sliding log shorter than this is never compacted."""
_REL: Final = 1.0 + 2.0**-50
"""GCRA rounding tolerance relative to ``now`` in emission intervals (a few ulps: far below
one interval, so it never admits an extra unit)."""
_IDX_BITS: Final = 64
_IDX_BIAS: Final = 1 << 63
_IDX_MASK: Final = (1 << _IDX_BITS) - 1


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Window:
    """One limit: at most ``limit`` units per ``seconds``; ``label`` names it (``"1m"``)."""

    seconds: float
    limit: int
    label: str


def parse_window(spec: str | float, *, key: str = "window") -> float:
    """Return the length in seconds of a window spec such as ``"500ms"``, ``"1m"`` or ``10``.

    Units are ``ms``, ``s``, ``m``, ``h`` and ``d``; a bare number means seconds. Raises
    :class:`ConfigError` naming ``key`` when the spec is not a positive, finite length.
    """
    if isinstance(spec, bool) or not isinstance(spec, str | int | float):
        raise ConfigError(key, f"a window is a string like '1s' or '500ms', got {spec!r}")
    if isinstance(spec, str):
        match = _WINDOW_RE.fullmatch(spec)
        if match is None:
            raise ConfigError(
                key, f"{spec!r} is not a window; use a number and a unit, like '1s' or '500ms'"
            )
        number, unit = match.groups()
        if unit and unit not in _UNITS:
            raise ConfigError(key, f"unknown window unit {unit!r}; use s, m, h or d (or ms)")
        seconds = float(number) * _UNITS[unit or "s"]
    else:
        seconds = float(spec)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(key, f"a window must be longer than 0s, got {spec!r}")
    return seconds


def _require_int(key: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        relation = "> 0" if minimum == 1 else f">= {minimum}"
        raise ConfigError(key, f"must be {relation}, got {value}")
    return value


def _require_number(
    key: str, value: object, *, above: float | None = None, at_least: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if above is not None and number <= above:
        raise ConfigError(key, f"must be > {above:g}, got {value!r}")
    if at_least is not None and number < at_least:
        raise ConfigError(key, f"must be >= {at_least:g}, got {value!r}")
    return number


def _require_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ConfigError(key, f"must be one of {options}, got {value!r}")
    return value


_ALIASES: Final[Mapping[str, str]] = {
    "strategy": "throttle_strategy",
    "rate_limit_per_second": "per_second",
    "rate_limit_per_minute": "per_minute",
    "rate_limit_per_hour": "per_hour",
}


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Validated, immutable settings of a rate limiter.

    Windows come from ``limits`` (``{"1s": 10, "1m": 100, "1h": 1000}``; keys like ``"1s"``,
    ``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"``, ``"1d"`` or a bare number of seconds) and from
    ``per_second``, ``per_minute`` and ``per_hour`` (windows ``"1s"``, ``"1m"``, ``"1h"``); at
    least one is required and no window may be given twice. :attr:`windows` has them parsed.

    The policy fields (``algorithm``, ``key_ttl``) are used by :class:`RateLimitPolicy`; the
    others by the limiter actor: ``on_limit`` (``"reject"``: answer ``RateLimited`` at once;
    ``"wait"``: queue the request until it fits, at most ``max_wait_time`` s, ``None`` for no
    cap), ``queue_size``/``queue_timeout``/``priority_queue`` (the waiting queue),
    ``throttle_strategy``/``backoff_multiplier``/``min_rate_fraction`` (how the actor slows
    down after a rate-limit signal from the service; the rate never drops below
    ``min_rate_fraction`` of the configured one).

    ``key_ttl`` (default and minimum: the longest window) is how long an idle key's state
    is kept after its last admission (see the module docstring for the exact rule).
    Invalid values raise :class:`ConfigError` naming the key.
    """

    limits: Mapping[str, int] | None = field(default=None, hash=False)
    per_second: int | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    algorithm: Algorithm = "sliding_log"
    on_limit: OnLimit = "reject"
    throttle_strategy: ThrottleStrategy = "fixed"
    backoff_multiplier: float = 1.5
    max_wait_time: float | None = 60.0
    queue_size: int = 1000
    queue_timeout: float = 300.0
    priority_queue: bool = True
    key_ttl: float | None = None
    min_rate_fraction: float = 0.1
    _windows: tuple[Window, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        windows = self._parse_windows()
        put(self, "_windows", windows)
        if self.limits is not None:
            put(self, "limits", dict(self.limits))
        put(self, "algorithm", _require_choice("algorithm", self.algorithm, _ALGORITHMS))
        put(self, "on_limit", _require_choice("on_limit", self.on_limit, _ON_LIMIT))
        put(
            self,
            "throttle_strategy",
            _require_choice("throttle_strategy", self.throttle_strategy, _STRATEGIES),
        )
        put(
            self,
            "backoff_multiplier",
            _require_number("backoff_multiplier", self.backoff_multiplier, at_least=1.0),
        )
        if self.max_wait_time is not None:
            put(
                self, "max_wait_time", _require_number("max_wait_time", self.max_wait_time, above=0)
            )
        put(self, "queue_size", _require_int("queue_size", self.queue_size, minimum=0))
        put(self, "queue_timeout", _require_number("queue_timeout", self.queue_timeout, above=0))
        if not isinstance(self.priority_queue, bool):
            raise ConfigError(
                "priority_queue", f"must be true or false, got {self.priority_queue!r}"
            )
        longest = windows[-1].seconds
        if self.key_ttl is not None:
            ttl = _require_number("key_ttl", self.key_ttl, above=0)
            if ttl < longest:
                raise ConfigError(
                    "key_ttl",
                    f"must be >= the longest window ({longest:g}s), got {self.key_ttl!r}: "
                    "a shorter ttl would forget admissions that still count",
                )
            put(self, "key_ttl", ttl)
        fraction = _require_number("min_rate_fraction", self.min_rate_fraction, above=0)
        if fraction > 1:
            raise ConfigError("min_rate_fraction", f"must be <= 1, got {self.min_rate_fraction!r}")
        put(self, "min_rate_fraction", fraction)

    def _parse_windows(self) -> tuple[Window, ...]:
        found: list[tuple[str, Window]] = []  # (config key, window)
        if self.limits is not None:
            if not isinstance(self.limits, Mapping):
                raise ConfigError(
                    "limits", f"must be a mapping like {{'1s': 10}}, got {self.limits!r}"
                )
            for spec, limit in self.limits.items():
                key = f"limits.{spec}"
                seconds = parse_window(spec, key=key)
                found.append((key, Window(seconds, _require_int(key, limit, minimum=1), str(spec))))
        for key, seconds, label in (
            ("per_second", 1.0, "1s"),
            ("per_minute", 60.0, "1m"),
            ("per_hour", 3600.0, "1h"),
        ):
            value = getattr(self, key)
            if value is not None:
                found.append((key, Window(seconds, _require_int(key, value, minimum=1), label)))
        if not found:
            raise ConfigError(
                "limits",
                "at least one window is required: limits={'1s': 10} or per_second, "
                "per_minute, per_hour",
            )
        seen: dict[float, str] = {}
        for key, window in found:
            if window.seconds in seen:
                raise ConfigError(
                    key,
                    f"the {window.seconds:g}s window is already given by {seen[window.seconds]}; "
                    "give each window once",
                )
            seen[window.seconds] = key
        return tuple(sorted((w for _, w in found), key=lambda w: w.seconds))

    @property
    def windows(self) -> tuple[Window, ...]:
        """The windows, parsed and sorted from shortest to longest."""
        return self._windows

    @property
    def effective_key_ttl(self) -> float:
        """``key_ttl``, or the longest window when it is not set."""
        return self.key_ttl if self.key_ttl is not None else self._windows[-1].seconds

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimitConfig:
        """Build a config from a mapping (a config-file section), rejecting unknown keys.

        Accepts the seed's names ``strategy`` (for ``throttle_strategy``) and
        ``rate_limit_per_second``/``_minute``/``_hour`` (for ``per_*``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError("rate_limit", f"must be a mapping of settings, got {data!r}")
        known = [f for f in cls.__dataclass_fields__ if not f.startswith("_")]
        kwargs: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        for raw_key, value in data.items():
            name = _ALIASES.get(raw_key, raw_key) if isinstance(raw_key, str) else raw_key
            if name not in known:
                close = difflib.get_close_matches(str(raw_key), [*known, *_ALIASES], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(str(raw_key), f"unknown rate-limit setting{hint}")
            if name in kwargs:
                raise ConfigError(
                    str(raw_key), f"given twice (also as {given_as[name]!r}); give it once"
                )
            kwargs[name] = value
            given_as[name] = raw_key
        return cls(**kwargs)


# --------------------------------------------------------------------------- decisions


class Decision(NamedTuple):
    """The answer to one request.

    ``allowed``: admitted (and, for :meth:`RateLimitPolicy.acquire`, counted). Otherwise
    ``retry_after`` is the earliest delay in seconds after which the same request would be
    admitted if nothing else is, and ``limit_label`` names the window that binds longest
    (``""`` when admitted). A Decision is truthy exactly when it is allowed.
    """

    allowed: bool
    retry_after: float = 0.0
    limit_label: str = ""

    def __bool__(self) -> bool:
        """True when the request was admitted."""
        return self.allowed

    def to_error(self, key: Hashable = None) -> RateLimited:
        """The :class:`RateLimited` error that reports this rejection for ``key``."""
        return RateLimited(
            self.retry_after, key=None if key is None else str(key), limit=self.limit_label
        )


_ALLOWED: Final = Decision(True, 0.0, "")


_new_tuple: Final = tuple.__new__
"""``_new_tuple(Decision, (allowed, retry_after, label))`` builds a Decision without the
NamedTuple constructor's overhead nor a Python call (hot path)."""


def _rejection(now: float, at: float, label: str) -> Decision:
    """The rejection at ``now`` of a request first admitted at ``at`` (> ``now``).

    ``retry_after`` is ``at - now``, rounded up if need be so that ``now + retry_after``
    is not before ``at``.
    """
    retry_after = at - now
    while now + retry_after < at:
        retry_after = math.nextafter(retry_after, math.inf)
    return _new_tuple(Decision, (False, retry_after, label))


_Memo = tuple[int, float, str]
"""A memoised rejection of one key: ``(cost, T, label)``.

``T`` is the least time at which the key's current state admits a request of ``cost``:
every window's verdict is a monotone function of ``now`` (float rounding included, for
``now >= 0``; see ``_refuses``), so the request is refused exactly at the times before
``T``, and the rejection at any such ``now`` is ``T - now`` by ``label`` (the window that
binds longest). ``T`` depends on nothing but the state, the cost and the rate factor, so
while those stay the same a repeated request is answered from the memo in O(1), without
evaluating the windows; the answer is the one the full computation gives, bit for bit.

A memo lives until the key's state changes: an admission drops it, as do expiry,
:meth:`~RateLimitPolicy.reset` and :meth:`~RateLimitPolicy.restore`, and
:meth:`~RateLimitPolicy.set_rate_factor` drops all of them. So only a key whose latest
:meth:`~RateLimitPolicy.acquire` was rejected has one, with the policies of several windows
(one window's rejection is cheap enough without); :meth:`~RateLimitPolicy.peek` reads memos
but never writes one.
"""


# --------------------------------------------------------------------------- policies


class RateLimitPolicy:
    """A keyed rate limiter over the windows of a :class:`RateLimitConfig`; pure and fast.

    ``RateLimitPolicy(config)`` returns the implementation of ``config.algorithm`` (a
    subclass). Not thread-safe: one owner (an actor) calls it, with a non-decreasing ``now``.
    """

    __slots__ = (
        "_factor",
        "_labels",
        "_limits",
        "_memo",
        "_next_expiry",
        "_states",
        "_ttl",
        "_ttl_extra",
        "config",
    )

    def __new__(cls, config: RateLimitConfig) -> RateLimitPolicy:
        """Pick the implementation of ``config.algorithm``."""
        if cls is RateLimitPolicy:
            if not isinstance(config, RateLimitConfig):
                raise TypeError(f"expected a RateLimitConfig, got {type(config).__name__}")
            impl = _IMPLEMENTATIONS[config.algorithm, len(config.windows) == 1]
            return object.__new__(impl)
        return object.__new__(cls)

    def __init__(self, config: RateLimitConfig) -> None:
        """Start with no keys and a rate factor of 1."""
        self.config = config
        windows = config.windows
        self._limits = tuple(w.limit for w in windows)
        self._labels = tuple(w.label for w in windows)
        self._ttl = config.effective_key_ttl
        self._ttl_extra = self._ttl - windows[-1].seconds
        self._states: OrderedDict[Hashable, Any] = OrderedDict()
        self._memo: dict[Hashable, _Memo] = {}
        self._next_expiry = -math.inf
        self._factor = 1.0
        self._configure()

    # ---- to be provided by each algorithm

    def _configure(self) -> None:
        """(Re)compute the per-window parameters from the limits and the rate factor."""
        raise NotImplementedError

    def _refuses(self, state: Any, window: int, now: float, cost: int) -> bool:
        """Whether window ``window`` refuses the request at ``now``: the decision itself.

        A monotone function of ``now``, float rounding included (for ``now >= 0``): once a
        window admits a request, it admits it at every later time.
        """
        raise NotImplementedError

    def _estimate(self, state: Any, window: int, cost: int) -> float:
        """When window ``window`` starts admitting the request, from ``state`` alone and up
        to float rounding (asked only of a window that refuses it)."""
        raise NotImplementedError

    def _horizon(self, state: Any) -> float:
        """The time from which ``state`` no longer affects any decision."""
        raise NotImplementedError

    def _copy_state(self, state: Any) -> Any:
        return state

    # ---- the public API

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        """Admit and count a request of ``cost`` units for ``key`` at ``now``, or reject it.

        An admission counts in every window; a rejection counts in none. Raises ValueError
        when ``cost`` is below 1 or above a window's limit (it could never be admitted) and
        TypeError when it is not an int.
        """
        raise NotImplementedError  # each algorithm has its own single-pass version

    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        """What :meth:`acquire` would answer, without counting anything."""
        if cost != 1:
            self._check_cost(cost)
        state = self._states.get(key)
        if state is None:
            return _ALLOWED
        memo = self._memo.get(key)
        if memo is not None and memo[0] == cost and now < memo[1]:
            return _rejection(now, memo[1], memo[2])
        at, window = self._admit_time(state, now, cost)
        if window < 0:
            return _ALLOWED
        return _rejection(now, at, self._labels[window])

    @property
    def rate_factor(self) -> float:
        """The factor set by :meth:`set_rate_factor` (1.0: the configured limits)."""
        return self._factor

    def set_rate_factor(self, factor: float) -> float:
        """Scale every window's limit to ``max(1, floor(N * factor))``; return the factor used.

        ``0 < factor <= 1``; a factor below ``config.min_rate_fraction`` is raised to it.
        Admissions already counted stay counted.
        """
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise TypeError(f"rate factor must be a number, got {factor!r}")
        if not 0 < factor <= 1:
            raise ValueError(f"rate factor must be in (0, 1], got {factor!r}")
        self._factor = max(float(factor), self.config.min_rate_fraction)
        self._configure()
        self._memo.clear()
        return self._factor

    def effective_limits(self) -> tuple[int, ...]:
        """The limit of each window (shortest first) after the rate factor."""
        factor = self._factor
        if factor == 1.0:
            return self._limits
        return tuple(max(1, min(n, math.floor(n * factor + 1e-9))) for n in self._limits)

    def key_count(self) -> int:
        """How many keys have state (expired keys not yet dropped included)."""
        return len(self._states)

    def expire(self, now: float, max_keys: int | None = None) -> int:
        """Drop the state of keys idle long enough (at most ``max_keys``); return how many.

        :meth:`acquire` already does this a few keys at a time; call this from a periodic
        timer to free memory when traffic stops.
        """
        return self._expire(now, max_keys if max_keys is not None else len(self._states))

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget ``key`` (or every key with ``all_keys=True``)."""
        if all_keys:
            self._states.clear()
            self._memo.clear()
        else:
            self._states.pop(key, None)
            self._memo.pop(key, None)

    def status(self) -> dict[str, Any]:
        """A JSON-friendly summary: algorithm, windows, rate factor, key count, ttl."""
        return {
            "algorithm": self.config.algorithm,
            "windows": [
                {"label": w.label, "seconds": w.seconds, "limit": w.limit, "effective_limit": e}
                for w, e in zip(self.config.windows, self.effective_limits(), strict=True)
            ],
            "rate_factor": self._factor,
            "keys": len(self._states),
            "key_ttl": self._ttl,
        }

    def snapshot(self) -> dict[str, Any]:
        """A picklable copy of the state, for :meth:`restore` after an actor restart."""
        return {
            "algorithm": self.config.algorithm,
            "windows": [(w.seconds, w.limit) for w in self.config.windows],
            "rate_factor": self._factor,
            "keys": [(k, self._copy_state(s)) for k, s in self._states.items()],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot` of a policy with the same algorithm and windows."""
        windows = [(w.seconds, w.limit) for w in self.config.windows]
        if (
            snapshot.get("algorithm") != self.config.algorithm
            or [tuple(w) for w in snapshot.get("windows", ())] != windows
        ):
            raise ValueError("the snapshot is of a rate limiter with other windows or algorithm")
        self._factor = float(snapshot["rate_factor"])
        self._configure()
        self._states = OrderedDict((k, self._copy_state(s)) for k, s in snapshot["keys"])
        self._memo.clear()
        self._next_expiry = -math.inf

    # ---- shared machinery

    def _check_cost(self, cost: int) -> None:
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise TypeError(f"cost must be an int, got {cost!r}")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        for window in self.config.windows:
            if cost > window.limit:
                raise ValueError(
                    f"cost {cost} exceeds the limit of the {window.label} window "
                    f"({window.limit}); such a request can never be admitted"
                )

    def _admit_time(self, state: Any, now: float, cost: int) -> tuple[float, int]:
        """``(T, window)``: the least time at which ``state`` admits the request and the
        window that binds longest (the first of equals); ``(now, -1)`` if it admits it now.

        Each window's verdict is monotone in time, so the request is admitted from the
        latest of the refusing windows' own least admitting times on, and refused before.
        ``T`` is unique, so it does not depend on ``now`` (see :data:`_Memo`).
        """
        best, binding = now, -1
        for window in range(len(self._labels)):
            if self._refuses(state, window, now, cost):
                at = self._least(state, window, now, cost)
                if at > best:
                    best, binding = at, window
        return best, binding

    def _least(self, state: Any, window: int, lo: float, cost: int) -> float:
        """The least time after ``lo`` (which it refuses) at which ``window`` admits.

        Starts from ``_estimate`` and absorbs its float rounding: usually two checks (the
        estimate admits, the float just before it does not); otherwise steps up by
        doubling amounts until it admits, then bisects.
        """
        refuses = self._refuses
        at = self._estimate(state, window, cost)
        if not at > lo:
            at = math.nextafter(lo, math.inf)
        step = 0.0
        while refuses(state, window, at, cost):
            lo = at
            step = step * 2.0 if step else math.ulp(at)
            at += step
        hi = at
        probe = math.nextafter(hi, -math.inf)
        while lo < probe < hi:
            if refuses(state, window, probe, cost):
                lo = probe
            else:
                hi = probe
            probe = lo + (hi - lo) * 0.5
        return hi

    def _reject(self, state: Any, now: float, cost: int) -> Decision:
        """The rejection at ``now`` of a request that ``state`` refuses (not memoised)."""
        at, window = self._admit_time(state, now, cost)
        return _rejection(now, at, self._labels[window])

    def _reject_memo(self, key: Hashable, state: Any, now: float, cost: int) -> Decision:
        """:meth:`_reject`, memoising the rejection for ``key`` (see :data:`_Memo`)."""
        at, window = self._admit_time(state, now, cost)
        label = self._labels[window]
        if now >= 0.0:  # where every window's verdict is monotone in time
            self._memo[key] = (cost, at, label)
        return _rejection(now, at, label)

    def _expire(self, now: float, budget: int) -> int:
        states = self._states
        memo = self._memo
        horizon = self._horizon
        extra = self._ttl_extra
        dropped = 0
        while states:
            if dropped >= budget:
                self._next_expiry = now  # more may be due: continue on the next call
                return dropped
            key = next(iter(states))
            due = horizon(states[key]) + extra
            if due > now:
                # The front key was admitted least recently: nothing is due before it.
                self._next_expiry = due
                return dropped
            del states[key]
            if memo:
                memo.pop(key, None)
            dropped += 1
        self._next_expiry = now + self._ttl  # no key: the next one is due ttl after it starts
        return dropped


def _slack(limit: int, effective: int) -> float:
    """GCRA rounding tolerance in emission intervals, for a burst of non-integer steps.

    Unthrottled, a step is exactly 1.0 and sums are exact (but where they cross a power of
    two: ``_REL`` covers that). Throttled, each step may round; a few ulps of slack keep a
    burst whole near time 0, and far from it a long throttled burst may meet a rejection
    whose ``retry_after`` is a few ulps, never an extra admission.
    """
    return 0.0 if limit == effective else limit * (_REL - 1.0)


class _Gcra(RateLimitPolicy):
    """GCRA, one window: the state is the TAT in units of the configured emission interval.

    Counting in emission intervals (not seconds) keeps a burst exact: at the configured rate
    each unit adds exactly 1.0 to the TAT.
    """

    __slots__ = ("_burst", "_e0", "_inv", "_slack", "_step")

    def _configure(self) -> None:
        window = self.config.windows[0]
        n = window.limit
        self._inv = n / window.seconds  # emission intervals per second
        self._e0 = window.seconds / n
        effective = self.effective_limits()[0]
        self._step = n / effective  # intervals per unit at the current rate
        self._slack = _slack(n, effective)
        self._burst = n + self._slack

    def _params(self, cost: int) -> tuple[float, float]:
        step = self._step * cost
        return step, max(self._burst, step + self._slack)

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost == 1:
            step = self._step
            burst = self._burst
        else:
            self._check_cost(cost)
            step, burst = self._params(cost)
        states = self._states
        now_u = now * self._inv
        tat = states.get(key)
        if tat is None:
            states[key] = now_u + step
            return _ALLOWED
        new = (tat if tat > now_u else now_u) + step
        if new <= now_u * _REL + burst:
            states[key] = new
            states.move_to_end(key)
            return _ALLOWED
        retry_after = (new - burst) / _REL * self._e0 - now
        at_u = (now + retry_after) * self._inv
        if retry_after > 0 and (tat if tat > at_u else at_u) + step <= at_u * _REL + burst:
            return _new_tuple(Decision, (False, retry_after, self._labels[0]))
        return self._reject(tat, now, cost)

    def _refuses(self, state: float, window: int, now: float, cost: int) -> bool:
        step, burst = self._params(cost)
        now_u = now * self._inv
        return (state if state > now_u else now_u) + step > now_u * _REL + burst

    def _estimate(self, state: float, window: int, cost: int) -> float:
        step, burst = self._params(cost)
        return (state + step - burst) / _REL * self._e0

    def _horizon(self, state: float) -> float:
        return state * self._e0


class _GcraMulti(RateLimitPolicy):
    """GCRA over several windows: the TATs packed as doubles in one bytes object."""

    __slots__ = ("_bursts", "_e0s", "_invs", "_packer", "_plan", "_slacks", "_steps")

    def _configure(self) -> None:
        windows = self.config.windows
        self._packer = struct.Struct(f"{len(windows)}d")
        self._invs = tuple(w.limit / w.seconds for w in windows)
        self._e0s = tuple(w.seconds / w.limit for w in windows)
        pairs = list(zip(self._limits, self.effective_limits(), strict=True))
        self._steps = tuple(n / e for n, e in pairs)
        self._slacks = tuple(_slack(n, e) for n, e in pairs)
        self._bursts = tuple(n + _slack(n, e) for n, e in pairs)
        self._plan = self._plan_for(1)

    def _plan_for(self, cost: int) -> tuple[tuple[float, float, float], ...]:
        """Per window: intervals per second, the step of ``cost`` and the TAT's tolerance
        ahead of now (as in :meth:`_Gcra._params`)."""
        plan = []
        for i, inv in enumerate(self._invs):
            step = self._steps[i] * cost
            plan.append((inv, step, max(self._bursts[i], step + self._slacks[i])))
        return tuple(plan)

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost == 1:
            plan = self._plan
        else:
            self._check_cost(cost)
            plan = self._plan_for(cost)
        states = self._states
        state = states.get(key)
        if state is None:
            states[key] = self._packer.pack(*[now * inv + step for inv, step, _ in plan])
            return _ALLOWED
        memos = self._memo
        memo = memos.get(key) if memos else None
        if memo is not None and memo[0] == cost:  # a memoised rejection: see _Memo
            at = memo[1]
            retry_after = at - now
            if retry_after > 0:
                if now + retry_after >= at:
                    return _new_tuple(Decision, (False, retry_after, memo[2]))
                return _rejection(now, at, memo[2])
        tats = self._packer.unpack(state)
        out = []
        for i, (inv, step, tolerance) in enumerate(plan):
            now_u = now * inv
            tat = tats[i]
            new = (tat if tat > now_u else now_u) + step
            if new > now_u * _REL + tolerance:
                return self._reject_memo(key, state, now, cost)
            out.append(new)
        if memo is not None:
            del memos[key]
        states[key] = self._packer.pack(*out)
        states.move_to_end(key)
        return _ALLOWED

    def _refuses(self, state: bytes, window: int, now: float, cost: int) -> bool:
        inv, step, tolerance = (self._plan if cost == 1 else self._plan_for(cost))[window]
        tat = self._packer.unpack(state)[window]
        now_u = now * inv
        return (tat if tat > now_u else now_u) + step > now_u * _REL + tolerance

    def _estimate(self, state: bytes, window: int, cost: int) -> float:
        _, step, tolerance = (self._plan if cost == 1 else self._plan_for(cost))[window]
        tat: float = self._packer.unpack(state)[window]
        return (tat + step - tolerance) / _REL * self._e0s[window]

    def _horizon(self, state: bytes) -> float:
        tats: tuple[float, ...] = self._packer.unpack(state)
        return max(t * e for t, e in zip(tats, self._e0s, strict=True))


class _Log:
    """The admission times of one key in one window.

    ``times`` holds at most N entries: while ``pos == len(times)`` they are in admission
    order (appending); once N entries are held it is a ring whose oldest entry (the next to
    overwrite) is at ``pos``. When half of it has expired it is compacted back to order.
    """

    __slots__ = ("pos", "times")

    def __init__(self, times: list[float], pos: int) -> None:
        self.times = times
        self.pos = pos

    def __reduce__(self) -> tuple[type[_Log], tuple[list[float], int]]:
        return (_Log, (self.times, self.pos))


def _log_entry(log: _Log, k: int) -> float:
    """The (k+1)-th newest entry, or ``-inf`` when there are not that many."""
    times = log.times
    m = len(times)
    if k >= m:
        return -math.inf
    i = log.pos - 1 - k
    return times[i if i >= 0 else i + m]


def _log_add(log: _Log, t: float, cost: int, capacity: int, cut: float) -> None:
    """Append ``cost`` entries of time ``t``, keeping at most ``capacity``."""
    times = log.times
    m = len(times)
    if m >= _COMPACT_MIN:
        pos = log.pos
        half = pos + (m >> 1)
        if times[half - m if half >= m else half] <= cut:
            ordered = times if pos == m else times[pos:] + times[:pos]
            times = ordered[bisect_right(ordered, cut) :]
            log.times = times
            m = len(times)
            log.pos = m
    for _ in range(cost):
        pos = log.pos
        if pos == m:
            if m < capacity:
                times.append(t)
                m += 1
                log.pos = m
                continue
            pos = 0
        times[pos] = t
        log.pos = pos + 1


class _SlidingLogMulti(RateLimitPolicy):
    """The exact sliding log over several windows, all read from one log per key.

    Admissions are all-or-none, so every window sees the same admission times: one log of
    the last ``max(N)`` times, compacted against the longest window, answers them all.
    """

    __slots__ = ("_capacity", "_longest", "_plan")

    def _configure(self) -> None:
        windows = self.config.windows
        self._capacity = max(w.limit for w in windows)
        self._longest = windows[-1].seconds
        self._plan = tuple(
            (w.seconds, e - 1) for w, e in zip(windows, self.effective_limits(), strict=True)
        )

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost != 1:
            self._check_cost(cost)
        states = self._states
        log = states.get(key)
        if log is None:
            states[key] = _Log([now] * cost, cost)
            return _ALLOWED
        memos = self._memo
        memo = memos.get(key) if memos else None
        if memo is not None and memo[0] == cost:  # a memoised rejection: see _Memo
            at = memo[1]
            retry_after = at - now
            if retry_after > 0:
                if now + retry_after >= at:
                    return _new_tuple(Decision, (False, retry_after, memo[2]))
                return _rejection(now, at, memo[2])
        times = log.times
        m = len(times)
        pos = log.pos
        for seconds, room in self._plan:
            k = room if cost == 1 else max(room + 1 - cost, 0)
            if k < m:
                i = pos - 1 - k
                if times[i if i >= 0 else i + m] > now - seconds:
                    return self._reject_memo(key, log, now, cost)
        if memo is not None:
            del memos[key]
        if cost == 1 and m < _COMPACT_MIN and m < self._capacity:
            times.append(now)
            log.pos = m + 1
        else:
            _log_add(log, now, cost, self._capacity, now - self._longest)
        states.move_to_end(key)
        return _ALLOWED

    def _refuses(self, state: _Log, window: int, now: float, cost: int) -> bool:
        seconds, room = self._plan[window]
        return _log_entry(state, max(room + 1 - cost, 0)) > now - seconds

    def _estimate(self, state: _Log, window: int, cost: int) -> float:
        seconds, room = self._plan[window]
        return _log_entry(state, max(room + 1 - cost, 0)) + seconds

    def _horizon(self, state: _Log) -> float:
        return state.times[state.pos - 1] + self._longest

    def _copy_state(self, state: _Log) -> _Log:
        return _Log(list(state.times), state.pos)


class _SlidingLog(_SlidingLogMulti):
    """The exact sliding log with a single window: a fast path, same state."""

    __slots__ = ("_k", "_n", "_seconds")

    def _configure(self) -> None:
        super()._configure()
        self._n = self.config.windows[0].limit
        self._seconds = self.config.windows[0].seconds
        self._k = self.effective_limits()[0] - 1  # entries that may be in the window

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost != 1:
            self._check_cost(cost)
        states = self._states
        log = states.get(key)
        if log is None:
            states[key] = _Log([now] * cost, cost)
            return _ALLOWED
        cut = now - self._seconds
        k = self._k if cost == 1 else max(self._k + 1 - cost, 0)
        times = log.times
        m = len(times)
        if k < m:
            i = log.pos - 1 - k
            t = times[i if i >= 0 else i + m]
            if t > cut:
                retry_after = t + self._seconds - now
                if retry_after > 0 and not t > now + retry_after - self._seconds:
                    return _new_tuple(Decision, (False, retry_after, self._labels[0]))
                return self._reject(log, now, cost)
        if cost == 1 and m < _COMPACT_MIN and m < self._n:
            times.append(now)
            log.pos = m + 1
        else:
            _log_add(log, now, cost, self._n, cut)
        states.move_to_end(key)
        return _ALLOWED


class _SlidingWindow(RateLimitPolicy):
    """The two-counter sliding window over one or more windows, packed in one int per key.

    Layout (low bits first): per window ``cur`` and ``prev`` (``b`` bits each, enough for
    N); then the index of the fixed window of the last admission for each window but the
    first (biased, 64 bits each); then the first window's index (unbounded, may be
    negative). ``_plan`` holds, per window, what it takes to read and write that layout.
    """

    __slots__ = ("_plan",)

    def _configure(self) -> None:
        windows = self.config.windows
        offset = 0
        layout = []
        for w in windows:
            layout.append((w.limit.bit_length(), offset))
            offset += 2 * w.limit.bit_length()
        plan = []
        for i, (w, effective) in enumerate(zip(windows, self.effective_limits(), strict=True)):
            b, counts_at = layout[i]
            if i == 0:  # at the top: all remaining bits, signed
                idx_at, idx_mask, bias = offset + _IDX_BITS * (len(windows) - 1), -1, 0
            else:
                idx_at, idx_mask, bias = offset + _IDX_BITS * (i - 1), _IDX_MASK, _IDX_BIAS
            plan.append((w.seconds, effective, b, (1 << b) - 1, counts_at, idx_at, idx_mask, bias))
        self._plan = tuple(plan)

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost != 1:
            self._check_cost(cost)
        states = self._states
        state = states.get(key)
        memos = self._memo
        memo = memos.get(key) if memos else None  # (only a key with state has one)
        if memo is not None and memo[0] == cost:  # a memoised rejection: see _Memo
            at = memo[1]
            retry_after = at - now
            if retry_after > 0:
                if now + retry_after >= at:
                    return _new_tuple(Decision, (False, retry_after, memo[2]))
                return _rejection(now, at, memo[2])
        packed = 0
        floor = math.floor
        for seconds, limit, b, mask, counts_at, idx_at, idx_mask, bias in self._plan:
            q = now / seconds
            idx = floor(q)
            if state is None:
                prev = cur = 0
            else:
                stored = ((state >> idx_at) & idx_mask) - bias
                if stored == idx:
                    counts = state >> counts_at
                    prev = (counts >> b) & mask
                    cur = counts & mask
                elif stored == idx - 1:
                    prev = (state >> counts_at) & mask
                    cur = 0
                else:
                    prev = cur = 0
                if prev * (1.0 - (q - idx)) + cur + cost > (limit if limit > cost else cost):
                    return self._reject_memo(key, state, now, cost)
            packed |= (((prev << b) | (cur + cost)) << counts_at) | ((idx + bias) << idx_at)
        if memo is not None:
            del memos[key]
        states[key] = packed
        if state is not None:
            states.move_to_end(key)
        return _ALLOWED

    def _refuses(self, state: int, window: int, now: float, cost: int) -> bool:
        seconds, limit, b, mask, counts_at, idx_at, idx_mask, bias = self._plan[window]
        q = now / seconds
        idx = math.floor(q)
        stored = ((state >> idx_at) & idx_mask) - bias
        if stored == idx:
            counts = state >> counts_at
            prev = (counts >> b) & mask
            cur = counts & mask
        elif stored == idx - 1:
            prev = (state >> counts_at) & mask
            cur = 0
        else:
            return False
        return prev * (1.0 - (q - idx)) + cur + cost > (limit if limit > cost else cost)

    def _estimate(self, state: int, window: int, cost: int) -> float:
        seconds, limit, b, mask, counts_at, idx_at, idx_mask, bias = self._plan[window]
        stored = ((state >> idx_at) & idx_mask) - bias
        counts = state >> counts_at
        prev = (counts >> b) & mask
        cur = counts & mask
        room = (limit if limit > cost else cost) - cost
        # The estimate falls linearly to 0 over two windows: find where it is ``room``.
        if cur > room:  # in the next window, where cur has become prev
            return (stored + 2.0 - room / cur) * seconds
        # in the stored window: prev * (1 - f) <= room - cur (prev > 0, as it refuses)
        return (stored + 1.0 - (room - cur) / prev) * seconds

    def _horizon(self, state: int) -> float:
        # The counts of a fixed window matter until the end of the next one.
        return max(
            ((((state >> idx_at) & idx_mask) - bias) + 2) * seconds
            for seconds, _, _, _, _, idx_at, idx_mask, bias in self._plan
        )


class _SlidingWindowOne(_SlidingWindow):
    """The two-counter sliding window with a single window: a fast path, same layout."""

    __slots__ = ("_b", "_limit", "_mask", "_seconds")

    def _configure(self) -> None:
        super()._configure()
        seconds, limit, b, mask, *_ = self._plan[0]
        self._seconds = seconds
        self._limit = limit
        self._b = b
        self._mask = mask

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        if now >= self._next_expiry:
            self._expire(now, _EXPIRE_PER_CALL)
        if cost == 1:
            limit = self._limit
        else:
            self._check_cost(cost)
            limit = max(self._limit, cost)
        b = self._b
        q = now / self._seconds
        idx = math.floor(q)
        states = self._states
        state = states.get(key)
        if state is None:
            states[key] = (idx << (b + b)) | cost
            return _ALLOWED
        stored = state >> (b + b)
        if stored == idx:
            prev = (state >> b) & self._mask
            cur = state & self._mask
        elif stored == idx - 1:
            prev = state & self._mask
            cur = 0
        else:
            prev = cur = 0
        if prev * (1.0 - (q - idx)) + cur + cost <= limit:
            states[key] = (((idx << b) | prev) << b) | (cur + cost)
            states.move_to_end(key)
            return _ALLOWED
        # Where the estimate (falling linearly) reaches limit - cost, as in _estimate; then check
        # the decision there, so that rounding can never make now + retry_after reject.
        room = limit - cost
        seconds = self._seconds
        if cur <= room:
            retry_after = (idx + 1.0 - (room - cur) / prev) * seconds - now
        else:
            retry_after = (idx + 2.0 - room / cur) * seconds - now
        q = (now + retry_after) / seconds
        at = math.floor(q)
        if at == idx:
            fits = prev * (1.0 - (q - at)) + cur <= room
        else:
            fits = at != idx + 1 or cur * (1.0 - (q - at)) <= room
        if fits and retry_after > 0:
            return _new_tuple(Decision, (False, retry_after, self._labels[0]))
        return self._reject(state, now, cost)

    def _horizon(self, state: int) -> float:
        return ((state >> (self._b + self._b)) + 2) * self._seconds


_IMPLEMENTATIONS: Final[Mapping[tuple[str, bool], type[RateLimitPolicy]]] = {
    ("gcra", True): _Gcra,
    ("gcra", False): _GcraMulti,
    ("sliding_log", True): _SlidingLog,
    ("sliding_log", False): _SlidingLogMulti,
    ("sliding_window", True): _SlidingWindowOne,
    ("sliding_window", False): _SlidingWindow,
}
