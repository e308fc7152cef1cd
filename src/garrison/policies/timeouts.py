"""Timeouts: the fixed and adaptive timeout policy, and the seed's ``AdaptiveTimeout``.

The adaptive timeout is the seed document's rule, kept exactly: once ``min_samples``
successful response times are known, the timeout is ``mean + k * stdev`` of the last
``history`` of them (sample standard deviation), never below ``base_timeout`` and never above
``max_timeout`` (default ``5 * base_timeout``). Timed-out calls are not recorded (they would
teach the estimator that slow is normal). Updates are O(1): running sums over a ring.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from garrison._validate import require_int, require_number
from garrison.errors import ConfigError

__all__ = ["AdaptiveTimeout", "AdaptiveTimeoutPolicy", "TimeoutConfig"]


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Settings of the timeout stage.

    ``base_timeout`` (seconds) is the fixed timeout, and the adaptive one's starting point.
    With ``adaptive=True`` the timeout follows ``mean + k * stdev`` of the last ``history``
    successful response times once ``min_samples`` are known, never below ``min_timeout``
    (default ``base_timeout``, as in the seed document: the timeout only ever grows; set it
    lower to let a fast service's timeout shrink) and capped at ``max_timeout`` (default
    ``5 * base_timeout``). ``max_abandoned`` caps the workers left stuck in
    synchronous calls that timed out (see the bulkhead).
    """

    base_timeout: float = 30.0
    adaptive: bool = True
    max_timeout: float | None = None
    min_timeout: float | None = None
    history: int = 100
    min_samples: int = 5
    k: float = 2.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        base = require_number("base_timeout", self.base_timeout, above=0)
        put(self, "base_timeout", base)
        if not isinstance(self.adaptive, bool):
            raise ConfigError("adaptive", f"must be true or false, got {self.adaptive!r}")
        if self.max_timeout is not None:
            cap = require_number("max_timeout", self.max_timeout, above=0)
            if cap < base:
                raise ConfigError(
                    "max_timeout", f"must be >= base_timeout ({base:g}), got {self.max_timeout!r}"
                )
            put(self, "max_timeout", cap)
        if self.min_timeout is not None:
            floor = require_number("min_timeout", self.min_timeout, above=0)
            if floor > base:
                raise ConfigError(
                    "min_timeout", f"must be <= base_timeout ({base:g}), got {self.min_timeout!r}"
                )
            put(self, "min_timeout", floor)
        history = require_int("history", self.history, minimum=2)
        min_samples = require_int("min_samples", self.min_samples, minimum=2)
        if min_samples > history:
            raise ConfigError("min_samples", f"must be <= history ({history}), got {min_samples}")
        k = require_number("k", self.k)
        if k < 0:
            raise ConfigError("k", f"must be >= 0, got {self.k!r}")
        put(self, "k", k)

    @property
    def effective_min_timeout(self) -> float:
        """``min_timeout``, or ``base_timeout`` when it is not set."""
        return self.min_timeout if self.min_timeout is not None else self.base_timeout

    @property
    def effective_max_timeout(self) -> float:
        """``max_timeout``, or five times ``base_timeout`` when it is not set."""
        return self.max_timeout if self.max_timeout is not None else 5.0 * self.base_timeout

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimeoutConfig:
        """Build a config from a mapping (a config-file section), rejecting unknown keys."""
        if not isinstance(data, Mapping):
            raise ConfigError("timeout", f"must be a mapping of settings, got {data!r}")
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise ConfigError(str(key), f"unknown setting; known: {', '.join(sorted(known))}")
        return cls(**dict(data))


class AdaptiveTimeoutPolicy:
    """The timeout to use next, learned from successful response times (O(1) per update)."""

    __slots__ = ("_samples", "_sum", "_sum_sq", "config")

    def __init__(self, config: TimeoutConfig) -> None:
        self.config = config
        self._samples: deque[float] = deque(maxlen=config.history)
        self._sum = 0.0
        self._sum_sq = 0.0

    def record(self, duration: float) -> None:
        """Learn one successful response time (seconds)."""
        if not (duration >= 0 and math.isfinite(duration)):
            return
        samples = self._samples
        if len(samples) == samples.maxlen:
            old = samples[0]
            self._sum -= old
            self._sum_sq -= old * old
        samples.append(duration)
        self._sum += duration
        self._sum_sq += duration * duration

    @property
    def samples(self) -> int:
        """How many response times are remembered."""
        return len(self._samples)

    def mean_and_stdev(self) -> tuple[float, float]:
        """Mean and sample standard deviation of the remembered response times."""
        n = len(self._samples)
        if n == 0:
            return 0.0, 0.0
        mean = self._sum / n
        if n < 2:
            return mean, 0.0
        variance = max(0.0, (self._sum_sq - n * mean * mean) / (n - 1))
        return mean, math.sqrt(variance)

    def current(self) -> float:
        """The timeout for the next call."""
        config = self.config
        if not config.adaptive or len(self._samples) < config.min_samples:
            return config.base_timeout
        mean, stdev = self.mean_and_stdev()
        floor, cap = config.effective_min_timeout, config.effective_max_timeout
        return min(max(mean + config.k * stdev, floor), cap)

    def status(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        mean, stdev = self.mean_and_stdev()
        return {
            "timeout": self.current(),
            "base_timeout": self.config.base_timeout,
            "min_timeout": self.config.effective_min_timeout,
            "max_timeout": self.config.effective_max_timeout,
            "adaptive": self.config.adaptive,
            "samples": len(self._samples),
            "mean": mean,
            "stdev": stdev,
        }


class AdaptiveTimeout:
    """The seed document's ``AdaptiveTimeout``, for direct use (thread-safe).

    ``record_response_time(t)`` learns a response time; ``get_adaptive_timeout()`` returns
    ``mean + 2 * stdev`` of the last 100 once 5 are known, never below the initial timeout and
    capped at five times it.
    """

    def __init__(self, initial_timeout: float = 30.0) -> None:
        self._policy = AdaptiveTimeoutPolicy(TimeoutConfig(base_timeout=initial_timeout))
        self._lock = threading.Lock()

    @property
    def base_timeout(self) -> float:
        """The initial timeout (the floor)."""
        return self._policy.config.base_timeout

    @property
    def response_times(self) -> list[float]:
        """The remembered response times, oldest first."""
        with self._lock:
            return list(self._policy._samples)

    def record_response_time(self, response_time: float) -> None:
        """Record a response time for the timeout calculation."""
        with self._lock:
            self._policy.record(response_time)

    def get_adaptive_timeout(self) -> float:
        """The timeout to use next."""
        with self._lock:
            return self._policy.current()
