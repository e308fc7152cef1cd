"""Timers as messages: ``schedule(delay, target, message)`` tells ``message`` to ``target``
after ``delay`` seconds of the runtime's clock.

Actors never sleep. A recovery timeout, a retry delay, a queue deadline or a restart backoff
is a timer whose message arrives in the actor's mailbox like any other. One scheduler serves
a whole runtime:

- :class:`ThreadScheduler` (real clocks) keeps one heap and **one** timer thread, started on
  the first timer, not a ``threading.Timer`` per timer;
- :class:`ManualScheduler` (for :class:`garrison.testing.ManualClock`) has no thread at
  all: the clock's ``advance()`` delivers every timer that falls due, in time order.

Cancelled timers are dropped lazily and compacted away when they outnumber live ones, so a
busy actor that arms and cancels many timers never grows the heap without bound.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from typing import Any, Protocol

from garrison._clock import Clock, SystemClock
from garrison.observability.events import emit

__all__ = [
    "ManualScheduler",
    "Scheduler",
    "Target",
    "ThreadScheduler",
    "TimerHandle",
    "make_scheduler",
]


class Target(Protocol):
    """Anything a timer can deliver to: a :class:`garrison.Ref`, a pykka ActorRef, ..."""

    def tell(self, message: Any) -> None:
        """Deliver ``message`` without waiting."""
        ...


class TimerHandle:
    """A scheduled delivery; ``cancel()`` it to prevent the delivery if not yet made."""

    __slots__ = ("_owner", "cancelled", "due", "fired", "message", "seq", "target")

    def __init__(
        self, due: float, seq: int, target: Target, message: Any, owner: _HeapScheduler | None
    ) -> None:
        self.due = due
        self.seq = seq
        self.target = target
        self.message = message
        self.cancelled = False
        self.fired = False
        self._owner = owner

    def cancel(self) -> bool:
        """Cancel the delivery; return False if it was already delivered or cancelled."""
        owner = self._owner
        if owner is None:
            return False
        return owner._cancel(self)

    @property
    def active(self) -> bool:
        """True while the delivery is still to come."""
        return not (self.cancelled or self.fired)

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "fired" if self.fired else "pending"
        return f"<TimerHandle due={self.due:.6f} {self.message!r} {state}>"


class Scheduler(Protocol):
    """Delivers messages after a delay of its clock."""

    @property
    def clock(self) -> Clock:
        """The clock that delays are measured on."""
        ...

    def schedule(self, delay: float, target: Target, message: Any) -> TimerHandle:
        """Tell ``message`` to ``target`` after ``delay`` seconds (at once if ``delay <= 0``)."""
        ...

    def pending(self) -> int:
        """How many timers are still to fire."""
        ...

    def stop(self) -> None:
        """Cancel every pending timer and release the scheduler's thread, if any."""
        ...


class _HeapScheduler:
    """The heap shared by both schedulers. Subclasses decide who pops due timers."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # (due, seq, handle): ordered by tuple comparison, in C
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def clock(self) -> Clock:
        """The clock that delays are measured on."""
        return self._clock

    def schedule(self, delay: float, target: Target, message: Any) -> TimerHandle:
        """Tell ``message`` to ``target`` after ``delay`` seconds (at once if ``delay <= 0``)."""
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            raise ValueError(f"delay must be a finite number of seconds, got {delay!r}")
        if not callable(getattr(target, "tell", None)):
            raise TypeError(f"timer target must have a tell() method, got {target!r}")
        if self._stopped:
            raise RuntimeError("the scheduler has stopped")
        if delay <= 0:
            handle = TimerHandle(self._clock.monotonic(), next(self._seq), target, message, None)
            self._fire(handle)
            return handle
        with self._lock:
            if self._stopped:
                raise RuntimeError("the scheduler has stopped")
            due = self._clock.monotonic() + delay
            seq = next(self._seq)
            handle = TimerHandle(due, seq, target, message, self)
            heapq.heappush(self._heap, (due, seq, handle))
            earliest = self._heap[0][2] is handle
        if earliest:
            self._wake()
        return handle

    def pending(self) -> int:
        """How many timers are still to fire."""
        with self._lock:
            return len(self._heap) - self._cancelled

    def next_due(self) -> float | None:
        """When the earliest pending timer falls due, or None."""
        with self._lock:
            self._drop_cancelled_head()
            return self._heap[0][0] if self._heap else None

    def stop(self) -> None:
        """Cancel every pending timer."""
        with self._lock:
            self._stopped = True
            for _, _, handle in self._heap:
                handle.cancelled = True
            self._heap.clear()
            self._cancelled = 0

    def _pop_due(self, now: float) -> TimerHandle | None:
        with self._lock:
            self._drop_cancelled_head()
            if self._heap and self._heap[0][0] <= now:
                handle = heapq.heappop(self._heap)[2]
                handle.fired = True
                return handle
            return None

    def _drop_cancelled_head(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1

    def _cancel(self, handle: TimerHandle) -> bool:
        with self._lock:
            if handle.cancelled or handle.fired:
                return False
            handle.cancelled = True
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0
            return True

    def _fire(self, handle: TimerHandle) -> None:
        handle.fired = True
        try:
            handle.target.tell(handle.message)
        except Exception as exc:
            emit(
                "garrison.scheduler.delivery_failed",
                level="error",
                target=repr(handle.target),
                message=repr(handle.message),
                error=exc,
            )

    def _wake(self) -> None:
        """A new earliest timer was added."""


class ThreadScheduler(_HeapScheduler):
    """A scheduler for real clocks: one daemon timer thread, started on first use."""

    def __init__(self, clock: Clock | None = None, name: str = "garrison-timers") -> None:
        super().__init__(clock if clock is not None else SystemClock())
        self._name = name
        self._condition = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, target: Target, message: Any) -> TimerHandle:
        """Tell ``message`` to ``target`` after ``delay`` seconds (at once if ``delay <= 0``)."""
        started = self._thread is not None
        if not started and isinstance(delay, int | float) and math.isfinite(delay) and delay > 0:
            self._ensure_thread()
        return super().schedule(delay, target, message)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def _run(self) -> None:
        clock = self._clock
        while True:
            with self._condition:
                if self._stopped:
                    return
                self._drop_cancelled_head()
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0][0] - clock.monotonic()
                if wait > 0:
                    self._condition.wait(min(wait, threading.TIMEOUT_MAX))
                    continue
                handle = heapq.heappop(self._heap)[2]
                handle.fired = True
            self._fire(handle)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every pending timer and end the timer thread."""
        super().stop()
        with self._condition:
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class ManualScheduler(_HeapScheduler):
    """A scheduler with no thread, driven by a :class:`garrison.testing.ManualClock`."""

    def _deliver_due(self, now: float) -> TimerHandle | None:
        """Fire the earliest timer due at ``now`` or before; return it (None if none)."""
        handle = self._pop_due(now)
        if handle is not None:
            self._fire(handle)
        return handle


def make_scheduler(clock: Clock) -> ThreadScheduler | ManualScheduler:
    """The scheduler that suits ``clock``: manual for a ManualClock, threaded otherwise."""
    from garrison.testing import ManualClock  # noqa: PLC0415

    if isinstance(clock, ManualClock):
        scheduler = ManualScheduler(clock)
        clock.attach(scheduler)
        return scheduler
    return ThreadScheduler(clock)
