"""The timeout supervisor and the adaptive timeout policy (and the seed's AdaptiveTimeout)."""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison import ConfigError, Execute, Future, GetStatus, OperationTimeout, Runtime
from garrison.actors.bulkhead import BulkheadActor, BulkheadConfig
from garrison.actors.timeout import TimeoutSupervisor
from garrison.policies.timeouts import AdaptiveTimeout, AdaptiveTimeoutPolicy, TimeoutConfig
from garrison.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


def timeout_stage(rt: Runtime, downstream: Any = None, **config: Any) -> Any:
    return rt.spawn(TimeoutSupervisor, TimeoutConfig(**config), downstream, name="timeout")


def blocked_op(started: threading.Event, release: threading.Event, value: Any = "late") -> Execute:
    def blocked() -> Any:
        started.set()
        assert release.wait(10)
        return value

    return Execute(blocked, name="blocked")


def test_the_caller_gets_operation_timeout_on_time_and_the_worker_is_replaced(rt, clock):
    pool = rt.spawn(BulkheadActor, BulkheadConfig(max_workers=1), name="pool")
    ref = timeout_stage(rt, pool, base_timeout=2.0, adaptive=False)
    started, release = threading.Event(), threading.Event()
    future = ref.ask_future(blocked_op(started, release))
    assert started.wait(5)
    ref.settle(5)
    clock.advance(1.9)
    assert not future.done()
    clock.advance(0.1)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == 2.0
    assert info.value.operation == "blocked"
    pool.settle(5)
    # the stuck worker was retired and replaced: the pool still runs work
    assert ref.ask(Execute(lambda: "next"), timeout=5) == "next"
    assert pool.ask(GetStatus(), timeout=5)["abandoned"] == 1
    release.set()
    assert future.exception(5).__class__ is OperationTimeout  # never a second outcome


def test_a_per_operation_timeout_overrides_the_configured_one(rt, clock):
    ref = timeout_stage(rt, base_timeout=30.0)
    started, release = threading.Event(), threading.Event()
    op = blocked_op(started, release)
    future = ref.ask_future(Execute(op.fn, timeout=0.5, name="quick"))
    assert started.wait(5)
    ref.settle(5)
    clock.advance(0.5)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == 0.5
    release.set()


def test_an_operation_that_finishes_in_time_is_answered_and_its_timer_cancelled(rt, clock):
    ref = timeout_stage(rt, base_timeout=1.0)
    assert ref.ask(Execute(lambda: 42), timeout=5) == 42
    with pytest.raises(ZeroDivisionError):
        ref.ask(Execute(lambda: 1 / 0), timeout=5)
    clock.advance(10)
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["completed"], status["timeouts"], status["pending"]) == (2, 0, 0)
    assert rt.scheduler.pending() == 0


def test_a_timed_out_coroutine_is_cancelled_for_real(rt, clock):
    ref = timeout_stage(rt, base_timeout=1.0)
    entered, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = ref.ask_future(Execute(forever))
    assert entered.wait(5)
    ref.settle(5)
    clock.advance(1.0)
    with pytest.raises(OperationTimeout):
        future.get(5)
    assert cancelled.wait(5)


def test_the_adaptive_timeout_learns_from_successful_response_times(rt, clock):
    ref = timeout_stage(rt, base_timeout=0.5, max_timeout=100.0, min_samples=5)
    durations = [0.1, 0.2, 0.3, 0.4, 0.45]  # all within the base timeout while it learns
    for duration in durations:
        started, release = threading.Event(), threading.Event()
        future = ref.ask_future(blocked_op(started, release, value=duration))
        assert started.wait(5)
        ref.settle(5)
        clock.advance(duration)
        release.set()
        assert future.get(5) == duration
        ref.settle(5)
    status = ref.ask(GetStatus(), timeout=5)
    expected = statistics.mean(durations) + 2 * statistics.stdev(durations)
    assert expected > 0.5
    assert status["timeout"] == pytest.approx(expected)
    assert status["samples"] == 5


def test_a_standalone_timeout_supervisor_runs_work_on_a_private_pool(rt):
    ref = timeout_stage(rt, base_timeout=5.0)
    futures = [ref.ask_future(Execute(lambda i=i: i)) for i in range(20)]
    assert [f.get(5) for f in futures] == list(range(20))


# -- the policy and the seed's class -----------------------------------------------------------


@given(st.lists(st.floats(min_value=0.0, max_value=1000.0), min_size=0, max_size=250))
def test_adaptive_policy_matches_the_seeds_formula(samples: list[float]):
    base = 30.0
    seed = AdaptiveTimeout(initial_timeout=base)
    for sample in samples:
        seed.record_response_time(sample)
    recent = samples[-100:]
    if len(recent) < 5:
        expected = base
    else:
        expected = statistics.mean(recent) + 2 * statistics.stdev(recent)
        expected = min(max(expected, base), 5 * base)
    assert seed.get_adaptive_timeout() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert seed.response_times == recent


def test_min_timeout_lets_a_fast_services_timeout_shrink():
    # the seed's numbers: a 30 s base and responses of about 0.2 s never move the timeout
    # (the base is the floor); a lower min_timeout lets it follow the service
    samples = [0.2, 0.25, 0.15, 0.2, 0.3, 0.2]
    seed_like = AdaptiveTimeoutPolicy(TimeoutConfig(base_timeout=30.0))
    shrinking = AdaptiveTimeoutPolicy(TimeoutConfig(base_timeout=30.0, min_timeout=0.5))
    for sample in samples:
        seed_like.record(sample)
        shrinking.record(sample)
    assert seed_like.current() == 30.0
    assert shrinking.current() == 0.5  # mean + 2 stdev is about 0.33: the floor holds
    for sample in (2.0, 2.5, 3.0, 2.0, 2.2, 2.8):
        shrinking.record(sample)
    mean, stdev = shrinking.mean_and_stdev()
    assert shrinking.current() == pytest.approx(mean + 2 * stdev)
    assert shrinking.status()["min_timeout"] == 0.5


def test_a_non_adaptive_policy_always_answers_the_base_timeout():
    policy = AdaptiveTimeoutPolicy(TimeoutConfig(base_timeout=3.0, adaptive=False))
    for duration in (10.0, 20.0, 30.0, 40.0, 50.0, 60.0):
        policy.record(duration)
    assert policy.current() == 3.0


def test_the_adaptive_timeout_is_thread_safe():
    seed = AdaptiveTimeout(initial_timeout=1.0)
    threads = [
        threading.Thread(target=lambda: [seed.record_response_time(2.0) for _ in range(500)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seed.response_times) == 100
    assert seed.get_adaptive_timeout() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"base_timeout": 0}, "base_timeout"),
        ({"base_timeout": float("nan")}, "base_timeout"),
        ({"base_timeout": 10, "max_timeout": 5}, "max_timeout"),
        ({"base_timeout": 10, "min_timeout": 20}, "min_timeout"),
        ({"min_timeout": 0}, "min_timeout"),
        ({"history": 1}, "history"),
        ({"min_samples": 200}, "min_samples"),
        ({"k": -1}, "k"),
        ({"adaptive": "yes"}, "adaptive"),
    ],
)
def test_bad_timeout_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        TimeoutConfig(**kwargs)
    assert info.value.key == key


def test_timeout_from_dict():
    assert TimeoutConfig.from_dict({"base_timeout": 30.0, "adaptive": True, "max_timeout": 120.0})
    with pytest.raises(ConfigError) as info:
        TimeoutConfig.from_dict({"base_timout": 1})
    assert info.value.key == "base_timout"


def test_a_late_outcome_never_overrides_the_timeout():
    reply: Future[Any] = Future()
    assert reply.try_set_exception(OperationTimeout(1.0))
    assert not reply.try_set_result("late")
