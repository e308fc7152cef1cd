"""Retry policy: backoff schedules, retry decisions and the retry budget. Pure.

Nothing here sleeps, reads a clock or owns randomness: callers pass ``now`` (monotonic
seconds) and a :class:`random.Random`. The retry actor keeps, per operation, the attempt
number, the time the first attempt started and the previous backoff, and asks
:class:`RetryPolicy` what to do after each attempt.

Backoff schedules (``attempt`` is the 1-based number of the attempt that just failed; the
result is the wait before attempt ``attempt + 1``):

- ``"exponential"``: ``base_delay * multiplier ** (attempt - 1)`` (``multiplier`` 2 by default);
- ``"linear"``: ``base_delay * attempt``;
- ``"fixed"``: ``base_delay``;

each capped at ``max_delay``, then jittered:

- ``"full"`` (``jitter=True``): ``uniform(0, d)``;
- ``"equal"``: ``d / 2 + uniform(0, d / 2)``;
- ``"decorrelated"``: ``min(max_delay, uniform(base_delay, 3 * previous))`` where ``previous``
  is the previous backoff (``base_delay`` before the first retry). This is AWS's
  "decorrelated jitter"; it replaces the strategy's schedule rather than jittering it;
- ``"none"`` (``jitter=False``): ``d`` exactly.

What is retried (:meth:`RetryPolicy.on_error`), in this order:

1. Never: anything that is not an :class:`Exception` (``asyncio.CancelledError``,
   ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, any other ``BaseException``) and
   ``concurrent.futures.CancelledError``: somebody asked the work to stop.
2. garrison's own rejections (:class:`~garrison.errors.Rejected`), whatever
   ``retry_exceptions`` says: :class:`~garrison.errors.CircuitOpen` and
   :class:`~garrison.errors.RateLimited` are retried no earlier than their ``retry_after``;
   :class:`~garrison.errors.QueueFull` and :class:`~garrison.errors.BulkheadFull` (momentary
   overload) are retried with the normal backoff; every other rejection
   (:class:`~garrison.errors.QueueTimeout`: the operation already waited its allowed time) is
   not retried. Rejections never reached the service, so they neither spend nor refill the
   retry budget.
3. Other errors are retried when they match ``retry_exceptions`` (classes, or names matched
   against the error's class hierarchy: ``"ConnectionError"``, ``"HTTPError"``,
   ``"httpx.TransportError"``). The default is ``(ConnectionError, TimeoutError,
   "httpx.TransportError")``: transient network trouble and timeouts (garrison's
   :class:`~garrison.errors.OperationTimeout` is a ``TimeoutError``). ``OSError`` as a whole is
   deliberately not in the default: ``FileNotFoundError`` or ``PermissionError`` do not get
   better by trying again. An empty tuple retries no exception (only ``retry_on_result``).

A retryable error is still given up on when the attempts are used up, when the retry budget
refuses, when a ``retry_after`` hint is not finite or is longer than ``max_delay`` (a caller who
configured ``max_delay=10`` does not want to be parked for an hour by a ``Retry-After: 3600``),
or when the wait would end after the ``deadline``: unlike tenacity's ``stop_after_delay``, which
sleeps past its limit and only then stops, a retry is never scheduled whose wait overshoots the
deadline. A ``retry_after`` hint (the ``retry_after`` argument, else a numeric ``retry_after``
attribute of the error, as on :class:`~garrison.errors.CircuitOpen`,
:class:`~garrison.errors.RateLimited`, or an HTTP 429/503 error) makes the wait
``max(backoff, retry_after)``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

from garrison.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    QueueFull,
    RateLimited,
    Rejected,
)

__all__ = [
    "BackoffStrategy",
    "DecisionReason",
    "ExceptionSpec",
    "JitterKind",
    "RetryBudget",
    "RetryBudgetConfig",
    "RetryConfig",
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay",
    "delay_for",
    "exception_matches",
    "parse_retry_after",
]

ExceptionSpec: TypeAlias = type[BaseException] | str
"""An exception class, or a class name (``"ConnectionError"``) or dotted path
(``"httpx.TransportError"``) matched against the names in an error's class hierarchy."""

BackoffStrategy: TypeAlias = Literal["exponential", "linear", "fixed"]
"""The un-jittered delay schedule."""

JitterKind: TypeAlias = Literal["full", "equal", "decorrelated", "none"]
"""How a delay is randomised; ``jitter=True`` means ``"full"``, ``False`` means ``"none"``."""

DecisionReason: TypeAlias = Literal[
    "retry",
    "success",
    "fatal",
    "rejected",
    "not_retryable",
    "attempts_exhausted",
    "budget_exhausted",
    "retry_after_too_long",
    "deadline",
]
"""Why a :class:`RetryDecision` was made (``"retry"`` when it retries)."""

_STRATEGIES: frozenset[str] = frozenset(("exponential", "linear", "fixed"))
_JITTER_NAMES: frozenset[str] = frozenset(("full", "equal", "decorrelated", "none"))
_TYPE_CACHE_MAX = 256

_C = TypeVar("_C")


# ---------------------------------------------------------------------------------------------
# Validation helpers (shared with garrison.policies.breaker)
# ---------------------------------------------------------------------------------------------


def _check_number(
    key: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
) -> float:
    """Return ``value`` as a finite float or raise ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if minimum is not None:
        if exclusive_minimum and number <= minimum:
            raise ConfigError(key, f"must be > {minimum:g}, got {value!r}")
        if not exclusive_minimum and number < minimum:
            raise ConfigError(key, f"must be >= {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ConfigError(key, f"must be <= {maximum:g}, got {value!r}")
    return number


def _check_int(key: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value!r}")
    return value


def _check_exception_specs(key: str, value: object) -> tuple[ExceptionSpec, ...]:
    """Return ``value`` as a tuple of exception classes and names, or raise ConfigError."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(key, f"must be a list of exception classes or names, got {value!r}")
    specs: list[ExceptionSpec] = []
    for item in value:
        if isinstance(item, str):
            if not item or not all(part.isidentifier() for part in item.split(".")):
                raise ConfigError(key, f"{item!r} is not an exception class name or dotted path")
            specs.append(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            specs.append(item)
        else:
            raise ConfigError(key, f"{item!r} is neither an exception class nor a class name")
    return tuple(specs)


def _from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    """Build the dataclass ``cls`` from ``data``, rejecting keys it does not know."""
    if not isinstance(data, Mapping):
        raise ConfigError(cls.__name__, f"expected a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(str(key), f"unknown key (known keys: {', '.join(sorted(known))})")
    return cls(**data)


_NAMES_CACHE: dict[type[BaseException], frozenset[str]] = {}


def _class_names(error_type: type[BaseException]) -> frozenset[str]:
    """Every name a string spec may use for a class in ``error_type``'s MRO (cached)."""
    names = _NAMES_CACHE.get(error_type)
    if names is None:
        collected: set[str] = set()
        for klass in error_type.__mro__:
            collected.add(klass.__name__)
            collected.add(klass.__qualname__)
            collected.add(f"{klass.__module__}.{klass.__qualname__}")
        names = frozenset(collected)
        if len(_NAMES_CACHE) >= _TYPE_CACHE_MAX:
            _NAMES_CACHE.clear()
        _NAMES_CACHE[error_type] = names
    return names


def exception_matches(error_type: type[BaseException], specs: Iterable[ExceptionSpec]) -> bool:
    """Whether ``error_type`` is, or derives from, one of ``specs``.

    A class spec matches subclasses (``issubclass``); a string spec matches when it equals the
    name, qualified name or ``module.qualname`` dotted path of any class in ``error_type``'s
    MRO, so ``"ConnectionError"``, ``"builtins.ConnectionError"`` and
    ``"httpx.TransportError"`` all work without importing anything.
    """
    names: frozenset[str] | None = None
    for spec in specs:
        if isinstance(spec, str):
            if names is None:
                names = _class_names(error_type)
            if spec in names:
                return True
        elif issubclass(error_type, spec):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """A gRPC ``retryThrottling``-style token bucket shared by all calls to one service.

    The bucket starts full at ``max_tokens``. Every retryable failure takes one token
    (not below zero); every success gives back ``token_ratio`` (not above ``max_tokens``).
    Retries are allowed only while the bucket holds more than ``max_tokens / 2``. Tokens are
    counted in thousandths, as gRPC does, so ``token_ratio`` is rounded to 3 decimals.
    """

    max_tokens: float = 10.0
    token_ratio: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_tokens", _check_number("max_tokens", self.max_tokens, minimum=0.001)
        )
        ratio = _check_number("token_ratio", self.token_ratio, minimum=0.0, exclusive_minimum=True)
        if round(ratio * 1000) < 1:
            raise ConfigError("token_ratio", f"must be >= 0.001, got {self.token_ratio!r}")
        object.__setattr__(self, "token_ratio", ratio)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryBudgetConfig:
        """Build from a mapping; unknown keys raise ConfigError naming the key."""
        return _from_dict(cls, data)


class RetryBudget:
    """The mutable token bucket of :class:`RetryBudgetConfig`; one per service. Pure.

    Mirrors gRPC's retry throttling: :meth:`try_spend` records a retryable failure (one token
    out) and answers whether a retry is still allowed; :meth:`on_success` puts
    ``token_ratio`` back. No clock: the bucket refills with successes, not with time.
    """

    __slots__ = ("_max", "_ratio", "_tokens", "config")

    def __init__(self, config: RetryBudgetConfig | None = None) -> None:
        self.config = config if config is not None else RetryBudgetConfig()
        self._max = round(self.config.max_tokens * 1000)
        self._ratio = round(self.config.token_ratio * 1000)
        self._tokens = self._max

    @property
    def tokens(self) -> float:
        """Tokens left in the bucket."""
        return self._tokens / 1000

    @property
    def retries_allowed(self) -> bool:
        """Whether the bucket is above half full (a retry would be allowed now)."""
        return self._tokens * 2 > self._max

    def try_spend(self) -> bool:
        """Record a retryable failure (take a token) and tell whether a retry is allowed."""
        tokens = self._tokens - 1000
        self._tokens = tokens if tokens > 0 else 0
        return self._tokens * 2 > self._max

    def on_success(self) -> None:
        """Record a success: give back ``token_ratio`` tokens, up to ``max_tokens``."""
        tokens = self._tokens + self._ratio
        self._tokens = tokens if tokens < self._max else self._max

    def status(self) -> dict[str, Any]:
        """Plain-data view: tokens, max_tokens, token_ratio, threshold, retries_allowed."""
        return {
            "tokens": self._tokens / 1000,
            "max_tokens": self._max / 1000,
            "token_ratio": self._ratio / 1000,
            "threshold": self._max / 2000,
            "retries_allowed": self.retries_allowed,
        }

    def __repr__(self) -> str:
        return f"RetryBudget(tokens={self.tokens:g}, max_tokens={self._max / 1000:g})"


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _default_retry_exceptions() -> tuple[ExceptionSpec, ...]:
    return (ConnectionError, TimeoutError, "httpx.TransportError")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How an operation is retried; validated at construction (ConfigError names the key).

    ``max_attempts`` counts every attempt, the first included. ``jitter`` is ``True``
    (``"full"``), ``False`` (``"none"``) or one of ``"full"``, ``"equal"``,
    ``"decorrelated"``, ``"none"``; the normalised kind is :attr:`jitter_kind`. ``deadline``
    is an overall budget in seconds from the start of the first attempt. ``budget`` (a
    :class:`RetryBudgetConfig` or a mapping of its keys) throttles retries per service.
    ``retry_on_result(result) -> bool`` asks for a retry of a result that came back normally.
    See the module docstring for what is retried and the exact schedules.
    """

    max_attempts: int = 3
    backoff_strategy: BackoffStrategy = "exponential"
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool | str = True
    retry_exceptions: tuple[ExceptionSpec, ...] = field(default_factory=_default_retry_exceptions)
    retry_on_result: Callable[[Any], bool] | None = None
    deadline: float | None = None
    budget: RetryBudgetConfig | None = None
    multiplier: float = 2.0
    jitter_kind: JitterKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _check_int("max_attempts", self.max_attempts, 1)
        if not isinstance(self.backoff_strategy, str) or self.backoff_strategy not in _STRATEGIES:
            raise ConfigError(
                "backoff_strategy",
                f"must be one of {sorted(_STRATEGIES)}, got {self.backoff_strategy!r}",
            )
        base = _check_number("base_delay", self.base_delay, minimum=0.0)
        _set(self, "base_delay", base)
        cap = _check_number("max_delay", self.max_delay, minimum=0.0)
        if cap < base:
            raise ConfigError("max_delay", f"must be >= base_delay ({base:g}), got {cap:g}")
        _set(self, "max_delay", cap)
        _set(self, "multiplier", _check_number("multiplier", self.multiplier, minimum=1.0))
        kind: str
        if isinstance(self.jitter, bool):
            kind = "full" if self.jitter else "none"
        elif isinstance(self.jitter, str) and self.jitter in _JITTER_NAMES:
            kind = self.jitter
        else:
            raise ConfigError(
                "jitter",
                f"must be true, false or one of {sorted(_JITTER_NAMES)}, got {self.jitter!r}",
            )
        _set(self, "jitter_kind", kind)
        _set(
            self,
            "retry_exceptions",
            _check_exception_specs("retry_exceptions", self.retry_exceptions),
        )
        if self.retry_on_result is not None and not callable(self.retry_on_result):
            raise ConfigError(
                "retry_on_result", f"must be a callable or None, got {self.retry_on_result!r}"
            )
        if self.deadline is not None:
            _set(
                self,
                "deadline",
                _check_number("deadline", self.deadline, minimum=0.0, exclusive_minimum=True),
            )
        budget: object = self.budget
        if isinstance(budget, Mapping):
            try:
                budget = RetryBudgetConfig.from_dict(budget)
            except ConfigError as error:
                raise error.under("budget") from None
            _set(self, "budget", budget)
        elif budget is not None and not isinstance(budget, RetryBudgetConfig):
            raise ConfigError("budget", f"must be a RetryBudgetConfig or None, got {budget!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryConfig:
        """Build from a mapping (e.g. a config file section); unknown keys raise ConfigError."""
        return _from_dict(cls, data)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def backoff_delay(attempt: int, config: RetryConfig) -> float:
    """The un-jittered wait after failed attempt ``attempt`` (1-based), capped at max_delay."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    strategy = config.backoff_strategy
    base = config.base_delay
    if strategy == "exponential":
        try:
            delay = base * config.multiplier ** (attempt - 1)
        except OverflowError:
            return config.max_delay
    elif strategy == "linear":
        delay = base * attempt
    else:
        delay = base
    cap = config.max_delay
    return delay if delay < cap else cap


def delay_for(
    attempt: int,
    config: RetryConfig,
    rng: random.Random,
    previous_delay: float | None = None,
) -> float:
    """The jittered wait after failed attempt ``attempt`` (1-based), before the next one.

    ``previous_delay`` is the previous backoff (only ``"decorrelated"`` jitter uses it; it
    defaults to ``base_delay``). Draws from ``rng`` only when jitter is on.
    """
    kind = config.jitter_kind
    if kind == "decorrelated":
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        base = config.base_delay
        previous = base if previous_delay is None else previous_delay
        upper = previous * 3.0
        delay = rng.uniform(base, upper if upper > base else base)
        cap = config.max_delay
        return delay if delay < cap else cap
    delay = backoff_delay(attempt, config)
    if kind == "none":
        return delay
    if kind == "full":
        return rng.uniform(0.0, delay)
    half = delay / 2.0
    return half + rng.uniform(0.0, half)


def parse_retry_after(value: object, *, wall_now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value, or None when it says nothing usable.

    Accepts a number, delay-seconds text (``"120"``, leniently ``"1.5"``) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a date needs ``wall_now`` (epoch seconds, the
    caller's wall clock) and yields None without it. Negative waits become 0.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if wall_now is None:
                return None
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - wall_now
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return seconds if seconds > 0.0 else 0.0


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------


class RetryDecision(NamedTuple):
    """What to do after an attempt: retry after ``delay`` seconds, or stop for ``reason``.

    ``reason`` is ``"retry"`` when ``retry`` is true; otherwise one of ``"success"`` (the
    result is accepted), ``"fatal"`` (cancellation or interpreter exit), ``"rejected"`` (a
    garrison rejection that is not retried), ``"not_retryable"``, ``"attempts_exhausted"``,
    ``"budget_exhausted"``, ``"retry_after_too_long"`` (the hint exceeds ``max_delay`` or is
    not finite) or ``"deadline"`` (the wait would end past the deadline). ``backoff`` is the
    drawn backoff before any ``retry_after`` hint was applied: pass it back as
    ``previous_delay`` next time (decorrelated jitter uses it).
    """

    retry: bool
    delay: float
    reason: DecisionReason
    backoff: float = 0.0


_SUCCESS = RetryDecision(False, 0.0, "success")
_FATAL = RetryDecision(False, 0.0, "fatal")
_REJECTED = RetryDecision(False, 0.0, "rejected")
_NOT_RETRYABLE = RetryDecision(False, 0.0, "not_retryable")
_EXHAUSTED = RetryDecision(False, 0.0, "attempts_exhausted")
_BUDGET = RetryDecision(False, 0.0, "budget_exhausted")
_TOO_LONG = RetryDecision(False, 0.0, "retry_after_too_long")

_Kind: TypeAlias = Literal["fatal", "rejected", "wait_hint", "backoff", "no"]


class RetryPolicy:
    """Decides, attempt by attempt, whether and when to retry. Pure; owned by one actor.

    Holds the config, the injected ``rng`` and the service's :class:`RetryBudget` (built from
    ``config.budget`` unless one is passed; None when there is no budget). Per-operation state
    (attempt number, start time, previous backoff) stays with the caller.
    """

    __slots__ = ("_kinds", "budget", "config", "rng")

    def __init__(
        self,
        config: RetryConfig,
        rng: random.Random | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        if budget is None and config.budget is not None:
            budget = RetryBudget(config.budget)
        self.budget = budget
        self._kinds: dict[type[BaseException], _Kind] = {}

    def _kind(self, error_type: type[BaseException]) -> _Kind:
        kind = self._kinds.get(error_type)
        if kind is not None:
            return kind
        if not issubclass(error_type, Exception) or issubclass(
            error_type, concurrent.futures.CancelledError
        ):
            kind = "fatal"
        elif issubclass(error_type, Rejected):
            if issubclass(error_type, CircuitOpen | RateLimited):
                kind = "wait_hint"
            elif issubclass(error_type, QueueFull | BulkheadFull):
                kind = "backoff"
            else:
                kind = "rejected"
        elif exception_matches(error_type, self.config.retry_exceptions):
            kind = "backoff"
        else:
            kind = "no"
        if len(self._kinds) >= _TYPE_CACHE_MAX:
            self._kinds.clear()
        self._kinds[error_type] = kind
        return kind

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error``'s kind is ever retried (attempts, budget and deadline aside)."""
        return self._kind(type(error)) in ("wait_hint", "backoff")

    def delay(self, attempt: int, previous_delay: float | None = None) -> float:
        """The jittered backoff after failed attempt ``attempt``: :func:`delay_for`."""
        return delay_for(attempt, self.config, self.rng, previous_delay)

    def deadline_at(self, started_at: float) -> float | None:
        """The monotonic time past which no attempt may start, or None without a deadline."""
        deadline = self.config.deadline
        return None if deadline is None else started_at + deadline

    def on_error(
        self,
        attempt: int,
        error: BaseException,
        now: float,
        started_at: float,
        *,
        previous_delay: float | None = None,
        retry_after: float | None = None,
    ) -> RetryDecision:
        """Decide after attempt ``attempt`` (1-based) failed with ``error`` at ``now``.

        ``started_at`` is when the first attempt started (for the deadline);
        ``retry_after`` overrides the error's own ``retry_after`` attribute (e.g. a parsed
        ``Retry-After`` header). A retryable error that reached the service spends a budget
        token even when the attempts are used up (gRPC counts every failure).
        """
        kind = self._kind(type(error))
        if kind == "fatal":
            return _FATAL
        if kind == "rejected":
            return _REJECTED
        if kind == "no":
            return _NOT_RETRYABLE
        allowed = True
        if kind == "backoff" and not isinstance(error, Rejected) and self.budget is not None:
            allowed = self.budget.try_spend()
        if attempt >= self.config.max_attempts:
            return _EXHAUSTED
        if not allowed:
            return _BUDGET
        if retry_after is None:
            hint = getattr(error, "retry_after", None)
            if isinstance(hint, int | float) and not isinstance(hint, bool):
                retry_after = float(hint)
        return self._schedule(attempt, now, started_at, previous_delay, retry_after)

    def on_result(
        self,
        attempt: int,
        result: object,
        now: float,
        started_at: float,
        *,
        previous_delay: float | None = None,
    ) -> RetryDecision:
        """Decide after attempt ``attempt`` returned ``result`` normally.

        Without ``retry_on_result``, or when it returns false, the result is accepted: the
        budget gets its refund and the decision is ``success``. Otherwise the result is
        treated as a retryable failure (it spends a budget token). Errors raised by
        ``retry_on_result`` propagate.
        """
        predicate = self.config.retry_on_result
        if predicate is None or not predicate(result):
            if self.budget is not None:
                self.budget.on_success()
            return _SUCCESS
        allowed = self.budget.try_spend() if self.budget is not None else True
        if attempt >= self.config.max_attempts:
            return _EXHAUSTED
        if not allowed:
            return _BUDGET
        return self._schedule(attempt, now, started_at, previous_delay, None)

    def on_success(self) -> None:
        """Record a successful call that did not go through :meth:`on_result` (budget refund)."""
        if self.budget is not None:
            self.budget.on_success()

    def _schedule(
        self,
        attempt: int,
        now: float,
        started_at: float,
        previous_delay: float | None,
        retry_after: float | None,
    ) -> RetryDecision:
        backoff = delay_for(attempt, self.config, self.rng, previous_delay)
        delay = backoff
        if retry_after is not None:
            if not retry_after <= self.config.max_delay:  # also catches nan and inf
                return _TOO_LONG
            delay = max(delay, retry_after)
        deadline = self.config.deadline
        if deadline is not None and now + delay > started_at + deadline:
            return RetryDecision(False, 0.0, "deadline", backoff)
        return RetryDecision(True, delay, "retry", backoff)

    def status(self) -> dict[str, Any]:
        """Plain-data view: the main settings and the budget's status (None without one)."""
        config = self.config
        return {
            "max_attempts": config.max_attempts,
            "backoff_strategy": config.backoff_strategy,
            "base_delay": config.base_delay,
            "max_delay": config.max_delay,
            "jitter": config.jitter_kind,
            "deadline": config.deadline,
            "budget": self.budget.status() if self.budget is not None else None,
        }
