"""Restart intensity (OTP) and restart backoff (Akka's BackoffSupervisor), as pure logic.

- :class:`RestartIntensity`: a supervisor may restart its children at most ``max_restarts``
  times within any ``within_seconds``; the restart beyond that means it gives up. Memory is
  bounded by ``max_restarts``.
- :func:`restart_delay`: the wait before the ``n``-th consecutive restart of a child,
  ``min(max, min * 2**n)`` stretched by a random factor in ``[1, 1 + jitter]``.
"""

from __future__ import annotations

import math
import random
from collections import deque

__all__ = ["RestartIntensity", "restart_delay"]


class RestartIntensity:
    """Counts restarts in a sliding window of ``within_seconds``."""

    __slots__ = ("_times", "max_restarts", "within_seconds")

    def __init__(self, max_restarts: int, within_seconds: float) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if not (isinstance(within_seconds, int | float) and within_seconds > 0):
            raise ValueError(f"within_seconds must be > 0, got {within_seconds!r}")
        self.max_restarts = max_restarts
        self.within_seconds = float(within_seconds)
        self._times: deque[float] = deque(maxlen=max_restarts + 1)

    def record(self, now: float) -> bool:
        """Count a restart at ``now``; False if it is one too many (the supervisor gives up)."""
        times = self._times
        times.append(now)
        cutoff = now - self.within_seconds
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times) <= self.max_restarts

    def recent(self, now: float) -> int:
        """How many restarts fall within the window ending at ``now``."""
        cutoff = now - self.within_seconds
        return sum(1 for t in self._times if t > cutoff)

    def reset(self) -> None:
        """Forget every counted restart."""
        self._times.clear()


def restart_delay(
    n: int, minimum: float, maximum: float, rng: random.Random, jitter: float = 0.2
) -> float:
    """The delay before consecutive restart number ``n`` (0 for the first).

    ``min(maximum, minimum * 2**n)`` times a random factor in ``[1, 1 + jitter]``, never
    above ``maximum`` (so a crash loop settles at the cap instead of growing forever).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base = maximum if n >= 64 else min(maximum, minimum * math.pow(2.0, n))
    return min(maximum, base * (1.0 + rng.uniform(0.0, jitter)))
