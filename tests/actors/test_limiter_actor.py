"""The rate-limiter actor: reject and wait modes, priorities, throttling, feedback, restarts."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from garrison import (
    ActorUnavailable,
    Execute,
    GetStatus,
    Priority,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Runtime,
)
from garrison.actors.limiter import RateLimiterActor, RateLimitFeedback
from garrison.policies.rate import RateLimitConfig
from garrison.supervision import ChildSpec, Supervisor
from garrison.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


def op(value: Any = None) -> Execute:
    return Execute(lambda: value, name="op")


def keyed(key: str, value: Any = None, priority: str = "normal") -> Execute:
    return Execute(lambda: value, key=key, priority=priority, name=f"op-{key}")


def limiter(rt: Runtime, **config: Any) -> Any:
    return rt.spawn(RateLimiterActor, RateLimitConfig(**config), name="limiter")


# -- reject mode -------------------------------------------------------------------------------


def test_reject_mode_admits_up_to_the_limit_then_says_when_to_retry(rt, clock):
    ref = limiter(rt, per_second=3)
    assert [ref.ask(op(i), timeout=5) for i in range(3)] == [0, 1, 2]
    clock.advance(0.25)
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(0.75)
    clock.advance(0.75)
    assert ref.ask(op("again"), timeout=5) == "again"


def test_every_window_is_checked_and_the_tightest_decides(rt, clock):
    ref = limiter(rt, limits={"1s": 2, "10s": 3})
    ref.ask(op(), timeout=5)
    ref.ask(op(), timeout=5)
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    ref.ask(op(), timeout=5)
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(9.0)
    assert info.value.limit == "10s"


def test_keys_are_limited_separately(rt):
    ref = limiter(rt, per_minute=1)
    assert ref.ask(keyed("a", 1), timeout=5) == 1
    with pytest.raises(RateLimited) as info:
        ref.ask(keyed("a", 2), timeout=5)
    assert info.value.key == "a"
    assert ref.ask(keyed("b", 3), timeout=5) == 3


def test_a_cost_no_window_can_admit_is_a_value_error(rt):
    ref = limiter(rt, per_second=2)
    with pytest.raises(ValueError, match="cost"):
        ref.ask(Execute(lambda: 1, cost=3), timeout=5)


def test_exponential_throttle_stretches_repeated_rejections(rt, clock):
    ref = limiter(
        rt, per_second=1, throttle_strategy="exponential", backoff_multiplier=2, max_wait_time=3
    )
    ref.ask(op(), timeout=5)
    waits = []
    for _ in range(4):
        with pytest.raises(RateLimited) as info:
            ref.ask(op(), timeout=5)
        waits.append(info.value.retry_after)
    assert waits == pytest.approx([1.0, 2.0, 3.0, 3.0])
    clock.advance(1.0)
    ref.ask(op(), timeout=5)  # an admission resets the streak
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(1.0)


# -- wait mode ---------------------------------------------------------------------------------


def test_waiting_requests_are_admitted_by_priority_when_a_slot_frees(rt, clock):
    ref = limiter(rt, per_second=1, on_limit="wait")
    order: list[str] = []

    def record(label: str) -> Execute:
        return Execute(order.append, args=(label,), priority=label.rstrip("0123456789"))

    ref.ask(Execute(order.append, args=("first",)), timeout=5)
    futures = [ref.ask_future(record(p)) for p in ("low", "normal1", "high", "normal2")]
    ref.settle(5)
    assert order == ["first"]
    clock.advance(0.999)
    assert order == ["first"]
    clock.advance(0.001)  # the slot frees exactly now: admitted now, not later
    assert order == ["first", "high"]
    clock.advance(3.0)
    assert order == ["first", "high", "normal1", "normal2", "low"]
    assert all(f.get(5) is None for f in futures)


def test_priority_queue_false_is_plain_fifo(rt, clock):
    ref = limiter(rt, per_second=1, on_limit="wait", priority_queue=False)
    order: list[str] = []
    ref.ask(Execute(order.append, args=("first",)), timeout=5)
    for label, priority in (("a", "low"), ("b", "high"), ("c", "normal")):
        ref.tell(Execute(order.append, args=(label,), priority=priority))
    ref.settle(5)
    clock.advance(3.0)
    assert order == ["first", "a", "b", "c"]


def test_a_full_queue_rejects_with_queue_full(rt):
    ref = limiter(rt, per_minute=1, on_limit="wait", queue_size=2, max_wait_time=None)
    ref.ask(op(), timeout=5)
    waiting = [ref.ask_future(op()) for _ in range(2)]
    with pytest.raises(QueueFull) as info:
        ref.ask(op(), timeout=5)
    assert info.value.capacity == 2
    assert not any(f.done() for f in waiting)
    assert ref.ask(GetStatus(), timeout=5)["queue_full"] == 1


def test_a_request_waiting_too_long_gets_queue_timeout(rt, clock):
    ref = limiter(rt, per_minute=1, on_limit="wait", queue_timeout=5, max_wait_time=None)
    ref.ask(op(), timeout=5)
    waiting = ref.ask_future(op())
    ref.settle(5)  # queued at t=0, so its queue_timeout runs out at t=5
    clock.advance(4.9)
    assert not waiting.done()
    clock.advance(0.1)
    with pytest.raises(QueueTimeout) as info:
        waiting.get(5)
    assert info.value.waited == pytest.approx(5.0)


def test_a_wait_longer_than_max_wait_time_is_refused_at_once(rt):
    ref = limiter(rt, per_minute=1, on_limit="wait", max_wait_time=10)
    ref.ask(op(), timeout=5)
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(60.0)


def test_the_wait_estimate_counts_the_requests_already_queued(rt, clock):
    ref = limiter(rt, per_second=2, on_limit="wait", max_wait_time=1.2)
    ref.ask(op(), timeout=5)
    ref.ask(op(), timeout=5)
    queued = [ref.ask_future(op(i)) for i in range(2)]  # both fit when the window frees at 1.0
    with pytest.raises(RateLimited) as info:
        ref.ask(op(), timeout=5)  # would wait ~2.0: more than max_wait_time
    assert info.value.retry_after == pytest.approx(2.0)
    clock.advance(1.0)
    assert [f.get(5) for f in queued] == [0, 1]


def test_waiting_requests_fail_when_the_limiter_stops(rt):
    ref = limiter(rt, per_minute=1, on_limit="wait", max_wait_time=None)
    ref.ask(op(), timeout=5)
    waiting = [ref.ask_future(op()) for _ in range(3)]
    ref.stop(5)
    for future in waiting:
        with pytest.raises(ActorUnavailable, match="stopped"):
            future.get(5)


# -- feedback and adaptive throttling ----------------------------------------------------------


def test_adaptive_feedback_cuts_the_rate_and_it_recovers_additively(rt, clock):
    ref = limiter(rt, per_second=10, throttle_strategy="adaptive", backoff_multiplier=2)
    ref.tell(RateLimitFeedback())
    status = ref.ask(GetStatus(), timeout=5)
    assert status["effective_limits"] == {"1s": 5}
    assert status["rate_factor"] == pytest.approx(0.5)
    admitted = 0
    for _ in range(10):
        try:
            ref.ask(op(), timeout=5)
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 5
    clock.advance(1.0)
    assert ref.ask(GetStatus(), timeout=5)["rate_factor"] == pytest.approx(0.6)
    clock.advance(4.0)
    assert ref.ask(GetStatus(), timeout=5)["effective_limits"] == {"1s": 10}
    clock.advance(10.0)
    assert ref.ask(GetStatus(), timeout=5)["rate_factor"] == 1.0


def test_adaptive_rate_never_drops_below_min_rate_fraction(rt):
    ref = limiter(rt, per_second=100, throttle_strategy="adaptive", min_rate_fraction=0.2)
    for _ in range(10):
        ref.tell(RateLimitFeedback())
    assert ref.ask(GetStatus(), timeout=5)["effective_limits"] == {"1s": 20}


def test_feedback_with_retry_after_pauses_admissions(rt, clock):
    ref = limiter(rt, per_second=100, on_limit="wait")
    ref.tell(RateLimitFeedback(retry_after=2.0))
    paused = ref.ask_future(op("after the pause"))
    ref.settle(5)
    clock.advance(1.9)
    assert not paused.done()
    clock.advance(0.1)
    assert paused.get(5) == "after the pause"
    reject = limiter_named(rt, "rejecting", per_second=100)
    reject.tell(RateLimitFeedback(retry_after=3.0))
    with pytest.raises(RateLimited) as info:
        reject.ask(op(), timeout=5)
    assert info.value.retry_after == pytest.approx(3.0)


def limiter_named(rt: Runtime, name: str, **config: Any) -> Any:
    return rt.spawn(RateLimiterActor, RateLimitConfig(**config), name=name)


# -- status, restarts ----------------------------------------------------------------------------


def test_status_reports_limits_queue_and_counters(rt):
    ref = limiter(rt, limits={"1s": 1, "1m": 5}, on_limit="wait")
    ref.ask(op(), timeout=5)
    ref.tell(Execute(lambda: None, priority=Priority.HIGH))
    ref.tell(Execute(lambda: None, priority="low"))
    status = ref.ask(GetStatus(), timeout=5)
    assert status["limits"] == {"1s": 1, "1m": 5}
    assert status["queue_depth"] == {"high": 1, "normal": 0, "low": 1}
    assert status["waiting"] == 2
    assert status["admitted"] == 1
    assert status["keys"] == 1
    assert status["algorithm"] == "sliding_log"


def test_a_restarted_limiter_remembers_its_windows(clock):
    class Crashable(RateLimiterActor):
        def handle_other(self, message: Any) -> Any:
            if message == "crash":
                raise RuntimeError("limiter bug")
            return super().handle_other(message)

    sup = Supervisor.start(
        "sup",
        clock=clock,
        children=[
            ChildSpec("limiter", Crashable, kwargs={"config": RateLimitConfig(per_minute=2)})
        ],
    )
    try:
        ref = sup.child("limiter")
        ref.ask(op(), timeout=5)
        ref.ask(op(), timeout=5)
        with pytest.raises(RuntimeError):
            ref.ask("crash", timeout=5)
        with pytest.raises(RateLimited):
            ref.ask(op(), timeout=5)
        clock.advance(60)
        assert ref.ask(op("fresh minute"), timeout=5) == "fresh minute"
    finally:
        sup.stop()


def test_bad_config_is_a_type_error():
    with pytest.raises(TypeError, match="RateLimitConfig"):
        RateLimiterActor({"per_second": 1})  # type: ignore[arg-type]


# -- accuracy with real threads ------------------------------------------------------------------


class RecordingLimiter(RateLimiterActor):
    """Records the clock reading of every admission decision."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admissions: list[float] = []

    def _admit(self, key: Any, message: Execute, reply: Any, now: float) -> None:
        self.admissions.append(now)
        super()._admit(key, message, reply, now)

    def handle_other(self, message: Any) -> Any:
        if message == "admissions":
            return list(self.admissions)
        return super().handle_other(message)


@pytest.mark.timeout(60)
def test_no_overshoot_under_four_hammering_threads_on_the_system_clock():
    limit, seconds = 100, 3.0
    with Runtime(name="accuracy") as rt:
        ref = rt.spawn(RecordingLimiter, RateLimitConfig(per_second=limit))
        stop_at = time.monotonic() + seconds

        def hammer() -> None:
            while time.monotonic() < stop_at:
                future = ref.ask_future(Execute(int))
                with contextlib.suppress(RateLimited):
                    future.get(5)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 10)
        admissions = ref.ask("admissions", timeout=5)
    assert len(admissions) >= limit  # it admitted traffic at all
    # at most `limit` admissions in any window (t - 1s, t]
    for i, t in enumerate(admissions):
        j = i
        while j >= 0 and admissions[j] > t - 1.0:
            j -= 1
        assert i - j <= limit, f"{i - j} admissions in the 1 s window ending at {t}"
