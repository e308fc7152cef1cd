"""Helpers for testing code that uses garrison: a clock that tests move by hand.

Pass a :class:`ManualClock` to a :class:`garrison.Runtime` (or to any actor) and time stands
still until the test calls :meth:`ManualClock.advance`. Advancing delivers every timer message
that falls due (recovery timeouts, retry delays, queue timeouts, restart backoff) in time
order, waiting for each garrison actor that receives one to handle it, before ``advance``
returns; the next message a test sends to that actor is therefore handled after them. Tests
never sleep.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from garrison._scheduler import ManualScheduler

__all__ = ["ManualClock"]


class ManualClock:
    """A monotonic clock that moves only when told to.

    ``settle_timeout`` bounds how long ``advance`` waits for an actor to handle a timer
    message it delivered (an actor stuck in a long operation does not hang the test).
    """

    def __init__(self, start: float = 0.0, *, settle_timeout: float = 5.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"start must be a finite number, got {start!r}")
        self._now = float(start)
        self._settle_timeout = settle_timeout
        self._schedulers: weakref.WeakSet[ManualScheduler] = weakref.WeakSet()
        self._advancing = threading.RLock()

    def monotonic(self) -> float:
        """The current time of this clock, in seconds."""
        return self._now

    def attach(self, scheduler: ManualScheduler) -> None:
        """Let ``advance()`` deliver ``scheduler``'s timers (schedulers attach themselves)."""
        self._schedulers.add(scheduler)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, delivering every timer that falls due on the way.

        Timers fire in due order, each with the clock reading its due time; a timer that a
        delivery arms and that falls due within the same advance fires too. Raises
        ``ValueError`` for a negative or non-finite step: this clock never goes backwards.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a ManualClock only moves forward; got advance({seconds!r})")
        with self._advancing:
            target = self._now + seconds
            while True:
                scheduler, due = self._earliest(target)
                if scheduler is None:
                    break
                self._now = max(self._now, due)
                handle = scheduler._deliver_due(self._now)
                if handle is not None:
                    settle = getattr(handle.target, "settle", None)
                    if callable(settle):
                        settle(self._settle_timeout)
            self._now = max(self._now, target)

    def advance_to(self, when: float) -> None:
        """Advance to the absolute time ``when`` (no earlier than now)."""
        self.advance(when - self._now)

    def _earliest(self, limit: float) -> tuple[ManualScheduler | None, float]:
        best: ManualScheduler | None = None
        best_due = math.inf
        for scheduler in list(self._schedulers):
            due = scheduler.next_due()
            if due is not None and due <= limit and due < best_due:
                best, best_due = scheduler, due
        return best, best_due

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
