"""Timers as messages: ManualScheduler (driven by ManualClock) and ThreadScheduler."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from garrison import Actor, Ref, Runtime, SystemClock
from garrison._scheduler import ManualScheduler, ThreadScheduler, TimerHandle, make_scheduler
from garrison.testing import ManualClock


class Recorder:
    """A timer target that records each message with the clock reading at delivery."""

    def __init__(self, clock: Any, expected: int = 0) -> None:
        self.clock = clock
        self.got: list[tuple[Any, float, str]] = []
        self.lock = threading.Lock()
        self.expected = expected
        self.done = threading.Event()

    def tell(self, message: Any) -> None:
        with self.lock:
            self.got.append((message, self.clock.monotonic(), threading.current_thread().name))
            if len(self.got) >= self.expected:
                self.done.set()

    @property
    def messages(self) -> list[Any]:
        with self.lock:
            return [message for message, _, _ in self.got]

    @property
    def times(self) -> list[float]:
        with self.lock:
            return [when for _, when, _ in self.got]


@pytest.fixture
def manual() -> Iterator[tuple[ManualClock, ManualScheduler]]:
    clock = ManualClock()
    scheduler = make_scheduler(clock)
    assert isinstance(scheduler, ManualScheduler)
    yield clock, scheduler
    scheduler.stop()


def _unique_name() -> str:
    return f"test-timers-{uuid.uuid4().hex[:10]}"


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


@pytest.fixture
def threaded() -> Iterator[ThreadScheduler]:
    scheduler = ThreadScheduler(name=_unique_name())
    yield scheduler
    scheduler.stop()


# -- make_scheduler -------------------------------------------------------------------------


def test_make_scheduler_picks_a_manual_scheduler_for_a_manual_clock():
    clock = ManualClock(3.0)
    scheduler = make_scheduler(clock)
    assert isinstance(scheduler, ManualScheduler)
    assert scheduler.clock is clock
    scheduler.stop()


def test_make_scheduler_picks_a_thread_scheduler_for_other_clocks():
    clock = SystemClock()
    scheduler = make_scheduler(clock)
    try:
        assert isinstance(scheduler, ThreadScheduler)
        assert scheduler.clock is clock
    finally:
        scheduler.stop()


# -- ManualScheduler: ordering and timing ---------------------------------------------------


def test_delivers_in_due_order_then_insertion_order(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    for delay, message in [(3, "c1"), (1, "a1"), (2, "b"), (1, "a2"), (3, "c2"), (1, "a3")]:
        scheduler.schedule(delay, target, message)
    assert scheduler.pending() == 6
    clock.advance(10)
    assert target.messages == ["a1", "a2", "a3", "b", "c1", "c2"]
    assert target.times == [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    assert clock.monotonic() == 10.0
    assert scheduler.pending() == 0


def test_deliveries_happen_in_the_advancing_thread(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    scheduler.schedule(1, target, "x")
    clock.advance(1)
    assert [name for _, _, name in target.got] == [threading.current_thread().name]


def test_the_clock_reads_each_timers_due_time_when_it_fires(manual):
    clock, scheduler = manual
    clock.advance(100)
    target = Recorder(clock)
    handles = [scheduler.schedule(d, target, d) for d in (0.5, 2.25, 7.0)]
    assert [h.due for h in handles] == [100.5, 102.25, 107.0]
    clock.advance(50)
    assert target.got == [
        (0.5, 100.5, threading.current_thread().name),
        (2.25, 102.25, threading.current_thread().name),
        (7.0, 107.0, threading.current_thread().name),
    ]
    assert clock.monotonic() == 150.0


def test_nothing_fires_before_its_due_time(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    handle = scheduler.schedule(5, target, "due at 5")
    clock.advance(4.75)
    assert target.messages == []
    assert handle.active
    assert scheduler.pending() == 1
    assert scheduler.next_due() == 5.0
    clock.advance(0.25)
    assert target.got[0][:2] == ("due at 5", 5.0)
    assert handle.fired
    assert not handle.active


def test_advance_to_fires_timers_due_by_then(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    scheduler.schedule(2, target, "two")
    scheduler.schedule(4, target, "four")
    clock.advance_to(3)
    assert target.messages == ["two"]
    clock.advance_to(4)
    assert target.messages == ["two", "four"]
    assert target.times == [2.0, 4.0]


def test_advance_zero_fires_only_timers_due_now(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    scheduler.schedule(1, target, "later")
    clock.advance(0)
    assert target.messages == []


@pytest.mark.parametrize("delay", [0, 0.0, -1, -0.5])
def test_delay_zero_or_negative_delivers_at_once(manual, delay: float):
    clock, scheduler = manual
    clock.advance(5)
    target = Recorder(clock)
    handle = scheduler.schedule(delay, target, "now")
    assert target.got == [("now", 5.0, threading.current_thread().name)]
    assert handle.fired
    assert not handle.active
    assert handle.due == 5.0
    assert handle.cancel() is False
    assert scheduler.pending() == 0
    clock.advance(10)
    assert target.messages == ["now"]  # never delivered twice


@given(
    delays=st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=20).map(float),
            st.floats(min_value=0.001, max_value=20),
        ),
        min_size=1,
        max_size=25,
    ),
    steps=st.lists(st.floats(min_value=0, max_value=6), max_size=8),
    cancel_mask=st.lists(st.booleans(), max_size=25),
)
def test_random_timers_fire_in_due_then_insertion_order(
    delays: list[float], steps: list[float], cancel_mask: list[bool]
):
    clock = ManualClock()
    scheduler = make_scheduler(clock)
    try:
        target = Recorder(clock)
        handles = [scheduler.schedule(d, target, i) for i, d in enumerate(delays)]
        cancelled = {i for i, flag in enumerate(cancel_mask[: len(delays)]) if flag}
        for i in cancelled:
            assert handles[i].cancel() is True
            assert handles[i].cancel() is False
        live = [i for i in range(len(delays)) if i not in cancelled]
        order = sorted(live, key=lambda i: (delays[i], i))
        assert scheduler.pending() == len(live)
        for step in [*steps, 25.0]:
            clock.advance(step)
            now = clock.monotonic()
            expected = [i for i in order if delays[i] <= now]
            assert target.messages == expected
            assert target.times == [delays[i] for i in expected]
            assert scheduler.pending() == len(live) - len(expected)
        assert all(handles[i].fired for i in live)
        assert not any(handles[i].fired for i in cancelled)
    finally:
        scheduler.stop()


def test_a_timer_armed_by_a_delivery_fires_within_the_same_advance(manual):
    clock, scheduler = manual

    class Rearming:
        def __init__(self) -> None:
            self.seen: list[tuple[int, float]] = []

        def tell(self, n: int) -> None:
            self.seen.append((n, clock.monotonic()))
            scheduler.schedule(1.0, self, n + 1)

    target = Rearming()
    scheduler.schedule(1.0, target, 0)
    clock.advance(3.5)
    assert target.seen == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert scheduler.pending() == 1
    assert scheduler.next_due() == 4.0
    assert clock.monotonic() == 3.5
    clock.advance(0.5)
    assert target.seen[-1] == (3, 4.0)


def test_a_delivery_arming_an_earlier_timer_than_the_next_one_keeps_time_order(manual):
    clock, scheduler = manual
    log: list[tuple[str, float]] = []

    class Target:
        def tell(self, message: str) -> None:
            log.append((message, clock.monotonic()))
            if message == "first":
                scheduler.schedule(0.5, self, "armed")  # due 1.5, before "second" at 2

    target = Target()
    scheduler.schedule(1, target, "first")
    scheduler.schedule(2, target, "second")
    clock.advance(5)
    assert log == [("first", 1.0), ("armed", 1.5), ("second", 2.0)]


def test_two_schedulers_on_one_clock_interleave_in_time_order():
    clock = ManualClock()
    first = make_scheduler(clock)
    second = make_scheduler(clock)
    try:
        target = Recorder(clock)
        first.schedule(1, target, "first@1")
        second.schedule(2, target, "second@2")
        first.schedule(3, target, "first@3")
        second.schedule(0.5, target, "second@0.5")
        clock.advance(10)
        assert target.messages == ["second@0.5", "first@1", "second@2", "first@3"]
        assert target.times == [0.5, 1.0, 2.0, 3.0]
    finally:
        first.stop()
        second.stop()


def test_a_failing_delivery_is_logged_and_later_timers_still_fire(manual):
    clock, scheduler = manual
    target = Recorder(clock)

    class Broken:
        def tell(self, message: Any) -> None:
            raise RuntimeError("mailbox on fire")

        def __repr__(self) -> str:
            return "Broken()"

    scheduler.schedule(1, Broken(), "lost")
    scheduler.schedule(2, target, "kept")
    with capture_logs() as logs:
        clock.advance(3)
    assert target.messages == ["kept"]
    failures = [e for e in logs if e["event"] == "garrison.scheduler.delivery_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["error"] == "RuntimeError: mailbox on fire"
    assert failures[0]["target"] == "Broken()"
    assert failures[0]["message"] == "'lost'"


# -- ManualScheduler: cancel, pending, compaction, stop -------------------------------------


def test_cancel_before_due_prevents_delivery(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    handle = scheduler.schedule(2, target, "cancelled")
    keep = scheduler.schedule(3, target, "kept")
    assert isinstance(handle, TimerHandle)
    assert handle.cancel() is True
    assert handle.cancelled
    assert not handle.active
    assert handle.cancel() is False
    assert scheduler.pending() == 1
    clock.advance(10)
    assert target.messages == ["kept"]
    assert not handle.fired
    assert keep.fired


def test_cancel_after_firing_returns_false(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    handle = scheduler.schedule(1, target, "x")
    clock.advance(1)
    assert handle.fired
    assert handle.cancel() is False
    assert not handle.cancelled
    assert scheduler.pending() == 0


def test_pending_counts_timers_still_to_fire(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    assert scheduler.pending() == 0
    assert scheduler.next_due() is None
    handles = [scheduler.schedule(d, target, d) for d in (1, 2, 3, 4)]
    assert scheduler.pending() == 4
    handles[2].cancel()
    assert scheduler.pending() == 3
    clock.advance(1)
    assert scheduler.pending() == 2
    clock.advance(2)  # fires 2; 3 was cancelled
    assert scheduler.pending() == 1
    assert scheduler.next_due() == 4.0
    clock.advance(1)
    assert scheduler.pending() == 0
    assert scheduler.next_due() is None
    assert target.messages == [1, 2, 4]


def test_next_due_skips_cancelled_timers(manual):
    _, scheduler = manual
    target = Recorder(ManualClock())
    early = scheduler.schedule(1, target, "early")
    scheduler.schedule(5, target, "late")
    assert scheduler.next_due() == 1.0
    early.cancel()
    assert scheduler.next_due() == 5.0
    assert scheduler.pending() == 1


def test_compaction_keeps_the_heap_small_when_timers_are_armed_and_cancelled(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    largest = 0
    for i in range(10_000):
        scheduler.schedule(30.0 + i % 7, target, i).cancel()
        largest = max(largest, len(scheduler._heap))
    assert largest <= 100
    assert len(scheduler._heap) <= 100
    assert scheduler.pending() == 0
    clock.advance(100)
    assert target.messages == []


def test_compaction_keeps_live_timers(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    live = [scheduler.schedule(1.0 + i, target, f"live{i}") for i in range(100)]
    largest = 0
    for i in range(10_000):
        scheduler.schedule(0.5 + (i % 200), target, f"dead{i}").cancel()
        largest = max(largest, len(scheduler._heap))
    assert largest <= 2 * len(live) + 100
    assert scheduler.pending() == 100
    clock.advance(200)
    assert target.messages == [f"live{i}" for i in range(100)]
    assert target.times == [1.0 + i for i in range(100)]
    assert all(h.fired for h in live)


def test_compaction_after_arming_many_then_cancelling_all(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    handles = [scheduler.schedule(1.0 + i % 50, target, i) for i in range(10_000)]
    assert scheduler.pending() == 10_000
    for handle in handles:
        assert handle.cancel() is True
    assert len(scheduler._heap) <= 130
    assert scheduler.pending() == 0
    assert scheduler.next_due() is None
    clock.advance(100)
    assert target.messages == []


def test_stop_cancels_every_pending_timer(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    handles = [scheduler.schedule(d, target, d) for d in (1, 2, 3)]
    scheduler.stop()
    assert scheduler.pending() == 0
    assert all(h.cancelled and not h.active for h in handles)
    assert all(h.cancel() is False for h in handles)
    clock.advance(10)
    assert target.messages == []
    scheduler.stop()  # idempotent


def test_schedule_after_stop_is_a_runtime_error(manual):
    clock, scheduler = manual
    scheduler.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.schedule(1, Recorder(clock), "late")


def test_schedule_now_after_stop_is_a_runtime_error(manual):
    clock, scheduler = manual
    scheduler.stop()
    target = Recorder(clock)
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.schedule(0, target, "late")
    assert target.messages == []


def test_cancel_racing_with_delivery_is_either_a_cancel_or_a_delivery(manual):
    clock, scheduler = manual
    target = Recorder(clock)
    scheduler.schedule(1, target, "x")
    cancel_results: list[bool] = []
    fire = scheduler._fire

    def fire_after_a_racing_cancel(handle: TimerHandle) -> None:
        # Simulates another thread cancelling the timer just as it is being delivered.
        cancel_results.append(handle.cancel())
        fire(handle)

    scheduler._fire = fire_after_a_racing_cancel  # type: ignore[method-assign]
    clock.advance(1)
    cancelled = cancel_results == [True]
    delivered = target.messages == ["x"]
    assert cancelled != delivered
    assert scheduler.pending() == 0


# -- validation (both schedulers) -----------------------------------------------------------


def _manual_scheduler() -> ManualScheduler | ThreadScheduler:
    return make_scheduler(ManualClock())


def _thread_scheduler() -> ManualScheduler | ThreadScheduler:
    return ThreadScheduler(name=_unique_name())


SCHEDULERS = [
    pytest.param(_manual_scheduler, id="manual"),
    pytest.param(_thread_scheduler, id="thread"),
]


@pytest.mark.parametrize("make", SCHEDULERS)
def test_nan_delay_is_a_value_error(make: Any):
    scheduler = make()
    try:
        with pytest.raises(ValueError, match="delay must be a finite number of seconds"):
            scheduler.schedule(math.nan, Recorder(scheduler.clock), "x")
        assert scheduler.pending() == 0
    finally:
        scheduler.stop()


@pytest.mark.parametrize("delay", ["1", None, [1], b"1"])
def test_non_numeric_delay_is_a_value_error(delay: Any):
    scheduler = _manual_scheduler()
    try:
        with pytest.raises(ValueError, match="delay must be a finite number of seconds"):
            scheduler.schedule(delay, Recorder(scheduler.clock), "x")
        assert scheduler.pending() == 0
    finally:
        scheduler.stop()


def test_thread_scheduler_non_numeric_delay_is_a_value_error(threaded):
    with pytest.raises(ValueError, match="delay must be a finite number of seconds"):
        threaded.schedule("1", Recorder(threaded.clock), "x")


@pytest.mark.parametrize("make", SCHEDULERS)
@pytest.mark.parametrize("delay", [0, 1])
@pytest.mark.parametrize("target", [object(), None, "ref"])
def test_target_without_tell_is_a_type_error(make: Any, delay: float, target: Any):
    scheduler = make()
    try:
        with pytest.raises(TypeError, match="timer target must have a tell"):
            scheduler.schedule(delay, target, "x")
        assert scheduler.pending() == 0
    finally:
        scheduler.stop()


@pytest.mark.parametrize("make", SCHEDULERS)
def test_target_with_a_non_callable_tell_is_a_type_error(make: Any):
    class NotCallable:
        tell = 5

    scheduler = make()
    try:
        with pytest.raises(TypeError, match="timer target must have a tell"):
            scheduler.schedule(1, NotCallable(), "x")
    finally:
        scheduler.stop()


# -- ManualScheduler with a Runtime and a garrison actor -------------------------------------


class TimerActor(Actor):
    """Logs every message it handles with the clock reading; ("chain", n) re-arms itself."""

    def __init__(self, clock: Any, scheduler: Any, log: list[tuple[Any, float]]) -> None:
        super().__init__()
        self.clock = clock
        self.scheduler = scheduler
        self.log = log
        self.me: Ref | None = None

    def on_start(self) -> None:
        self.me = Ref(self.actor_ref, "timer-actor")

    def on_receive(self, message: Any) -> Any:
        if message == "state":
            return list(self.log)
        self.log.append((message, self.clock.monotonic()))
        if isinstance(message, tuple) and message[0] == "chain" and message[1] < 3:
            self.scheduler.schedule(1.0, self.me, ("chain", message[1] + 1))
        return None


def test_advance_returns_after_the_actor_handled_its_timer_messages():
    clock = ManualClock()
    log: list[tuple[Any, float]] = []
    with Runtime(clock=clock) as rt:
        assert isinstance(rt.scheduler, ManualScheduler)
        ref = rt.spawn(TimerActor, log=log)
        rt.scheduler.schedule(1, ref, ("tick", "a"))
        rt.scheduler.schedule(3, ref, ("tick", "b"))
        clock.advance(10)
        # read without going through the mailbox: advance waited for the actor
        assert log == [(("tick", "a"), 1.0), (("tick", "b"), 3.0)]
        assert ref.ask("state", timeout=5) == [(("tick", "a"), 1.0), (("tick", "b"), 3.0)]


def test_a_message_sent_after_advance_is_handled_after_the_timer_messages():
    clock = ManualClock()
    log: list[tuple[Any, float]] = []
    with Runtime(clock=clock) as rt:
        ref = rt.spawn(TimerActor, log=log)
        rt.scheduler.schedule(2, ref, "timer")
        clock.advance(5)
        ref.tell("after")
        assert ref.ask("state", timeout=5) == [("timer", 2.0), ("after", 5.0)]


def test_timers_an_actor_arms_while_handling_a_timer_fire_in_the_same_advance():
    clock = ManualClock()
    log: list[tuple[Any, float]] = []
    with Runtime(clock=clock) as rt:
        ref = rt.spawn(TimerActor, log=log)
        rt.scheduler.schedule(1, ref, ("chain", 0))
        clock.advance(10)
        assert log == [
            (("chain", 0), 1.0),
            (("chain", 1), 2.0),
            (("chain", 2), 3.0),
            (("chain", 3), 4.0),
        ]
        assert rt.scheduler.pending() == 0
        assert clock.monotonic() == 10.0


def test_runtime_stop_stops_its_manual_scheduler():
    clock = ManualClock()
    log: list[tuple[Any, float]] = []
    with Runtime(clock=clock) as rt:
        ref = rt.spawn(TimerActor, log=log)
        handle = rt.scheduler.schedule(5, ref, "never")
    assert not handle.active
    assert rt.scheduler.pending() == 0
    clock.advance(10)
    assert log == []


# -- ThreadScheduler ------------------------------------------------------------------------


def test_thread_scheduler_starts_its_thread_lazily(threaded):
    name = threaded._name
    target = Recorder(threaded.clock)
    assert _threads_named(name) == []
    threaded.schedule(0, target, "immediate")  # delivered at once, in this thread
    assert target.got[0][0] == "immediate"
    assert target.got[0][2] == threading.current_thread().name
    assert _threads_named(name) == []


def test_thread_scheduler_delivers_after_a_small_delay(threaded):
    target = Recorder(threaded.clock, expected=1)
    handle = threaded.schedule(0.01, target, "hello")
    assert target.done.wait(5)
    message, when, thread_name = target.got[0]
    assert message == "hello"
    assert when >= handle.due  # never before it is due
    assert thread_name == threaded._name
    assert handle.fired
    assert threaded.pending() == 0


def test_thread_scheduler_uses_one_thread_for_many_timers(threaded):
    name = threaded._name
    count = 100
    target = Recorder(threaded.clock, expected=count)
    for i in range(count):
        threaded.schedule(0.001 * (1 + i % 10), target, i)
    assert len(_threads_named(name)) == 1
    assert target.done.wait(5)
    assert sorted(target.messages) == list(range(count))
    assert {thread_name for _, _, thread_name in target.got} == {name}
    assert len(_threads_named(name)) == 1


def test_thread_scheduler_cancel_prevents_delivery(threaded):
    cancelled_target = Recorder(threaded.clock)
    sentinel = Recorder(threaded.clock, expected=1)
    handle = threaded.schedule(0.01, cancelled_target, "cancelled")
    threaded.schedule(0.02, sentinel, "sentinel")
    assert handle.cancel() is True
    assert sentinel.done.wait(5)
    # the cancelled timer was due first: had it fired, it would have fired already
    assert cancelled_target.messages == []
    assert threaded.pending() == 0


def test_thread_scheduler_stop_ends_the_thread_and_cancels_timers():
    name = _unique_name()
    scheduler = ThreadScheduler(name=name)
    target = Recorder(scheduler.clock, expected=1)
    try:
        scheduler.schedule(0.001, target, "first")
        assert target.done.wait(5)
        pending = scheduler.schedule(60, target, "never")
        assert len(_threads_named(name)) == 1
    finally:
        scheduler.stop()
    assert _threads_named(name) == []
    assert not pending.active
    assert pending.cancel() is False
    assert scheduler.pending() == 0
    assert target.messages == ["first"]
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.schedule(1, target, "late")
    assert _threads_named(name) == []


def test_thread_scheduler_stop_without_timers_is_fine():
    scheduler = ThreadScheduler(name=_unique_name())
    scheduler.stop()
    scheduler.stop()
    assert scheduler.pending() == 0


class SteppableClock:
    """A clock that only moves when the test sets it (for ordering on a real thread)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_thread_scheduler_delivers_in_due_then_insertion_order():
    clock = SteppableClock()
    scheduler = ThreadScheduler(clock, name=_unique_name())
    try:
        target = Recorder(clock, expected=5)
        for delay, message in [(0.003, "c"), (0.001, "a1"), (0.002, "b"), (0.001, "a2")]:
            scheduler.schedule(delay, target, message)
        scheduler.schedule(0.004, target, "d")
        assert target.messages == []  # frozen clock: nothing is due yet
        clock.now = 1.0
        assert target.done.wait(5)
        assert target.messages == ["a1", "a2", "b", "c", "d"]
    finally:
        scheduler.stop()


class WatchedClock:
    """The system clock, noting when the scheduler's own thread reads it."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self.read_by_timer_thread = threading.Event()

    def monotonic(self) -> float:
        if threading.current_thread().name == self.thread_name:
            self.read_by_timer_thread.set()
        return SystemClock().monotonic()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_thread_scheduler_survives_a_huge_delay():
    name = _unique_name()
    clock = WatchedClock(name)
    scheduler = ThreadScheduler(clock, name=name)
    try:
        target = Recorder(clock, expected=1)
        scheduler.schedule(1e12, target, "far future")
        # The timer thread has read the clock with only the huge timer queued: it now
        # waits on it (or dies trying) before it can see the next timer.
        assert clock.read_by_timer_thread.wait(5)
        scheduler.schedule(0.01, target, "soon")
        assert target.done.wait(1)
        assert target.messages == ["soon"]
    finally:
        scheduler.stop()
