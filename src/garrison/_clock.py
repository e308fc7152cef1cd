"""Clocks: where every garrison decision reads the time.

Actors never call :func:`time.monotonic` themselves; they read the :class:`Clock` they were
given. Production code uses :class:`SystemClock`; tests use
:class:`garrison.testing.ManualClock`, which only moves when the test advances it.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time in seconds."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


class SystemClock:
    """The real monotonic clock of the process (:func:`time.monotonic`)."""

    __slots__ = ()

    # time.monotonic itself (read several times per operation): no Python frame per reading
    monotonic = staticmethod(time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"
