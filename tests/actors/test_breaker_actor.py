"""The circuit-breaker actor: admission, outcomes, timers, concurrency, restarts, events."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from garrison import (
    Actor,
    BulkheadFull,
    CircuitOpen,
    Execute,
    GetStatus,
    QueueFull,
    RateLimited,
    Ref,
    Runtime,
)
from garrison.actors import WorkerActor
from garrison.actors.breaker import (
    Acquire,
    CircuitBreakerActor,
    Disable,
    ForceClose,
    ForceOpen,
    Report,
    Reset,
)
from garrison.policies.breaker import CircuitBreakerConfig, Permit
from garrison.supervision import ChildSpec, Supervisor
from garrison.testing import ManualClock

# -- helpers ----------------------------------------------------------------------------------


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


class RoundRobin(Actor):
    """A test-only pool: forwards each Execute (with its reply) to the next worker."""

    def __init__(self, workers: list[Ref]) -> None:
        super().__init__()
        self.workers = workers
        self.turn = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Execute):
            worker = self.workers[self.turn % len(self.workers)]
            self.turn += 1
            worker.forward(message, self.defer())
            return None
        return super().on_receive(message)


class Rejecting(Actor):
    """A downstream that refuses every operation with garrison's own rejections, in turn."""

    errors = (RateLimited(1.0), QueueFull(10), BulkheadFull("pool", 4, 0))

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        error = self.errors[self.count % len(self.errors)]
        self.count += 1
        self.reject(error)


class Crash:
    """Makes CrashableBreaker crash (a bug in the actor's own code)."""


class CrashableBreaker(CircuitBreakerActor):
    def handle_other(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError("breaker bug")
        return super().handle_other(message)


def config(**overrides: Any) -> CircuitBreakerConfig:
    settings: dict[str, Any] = {"failure_threshold": 3, "recovery_timeout": 30.0}
    settings.update(overrides)
    return CircuitBreakerConfig(**settings)


def breaker_events(logs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (e["event"], e["from_state"], e["reason"])
        for e in logs
        if e["event"].startswith("garrison.breaker.") and "from_state" in e
    ]


def fail_n(ref: Ref, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            ref.ask(Execute(fail), timeout=5)


def pool(rt: Runtime, size: int) -> Ref:
    return rt.spawn(RoundRobin, [rt.spawn(WorkerActor) for _ in range(size)])


# -- admission and outcomes -------------------------------------------------------------------


def test_a_closed_breaker_passes_results_and_errors_through():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), service="api")
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        with pytest.raises(Boom, match="down"):
            breaker.ask(Execute(fail), timeout=5)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["calls"], status["failures"]) == ("closed", 2, 1)
        assert status["consecutive_failures"] == 1


def test_three_failures_then_the_fourth_call_is_rejected_read_your_writes():
    calls = []

    def counted() -> str:
        calls.append(1)
        return "ran"

    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), pool(rt, 2), service="db")
        fail_n(breaker, 3)  # one after another, no sleeps
        with pytest.raises(CircuitOpen, match="Circuit breaker is OPEN") as info:
            breaker.ask(Execute(counted), timeout=5)
        assert (info.value.service, info.value.state, info.value.retry_after) == (
            "db",
            "open",
            30.0,
        )
        assert calls == []  # never forwarded


def test_garrisons_own_rejections_from_downstream_never_count():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(
            CircuitBreakerActor, config(failure_threshold=1), rt.spawn(Rejecting), service="x"
        )
        for expected in (RateLimited, QueueFull, BulkheadFull, RateLimited):
            with pytest.raises(expected):
                breaker.ask(Execute(ok), timeout=5)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["calls"], status["failures"]) == ("closed", 0, 0)


def test_ignore_and_record_exceptions_are_applied():
    cfg = config(failure_threshold=1, ignore_exceptions=(KeyError,), record_exceptions=(Boom,))
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, cfg)
        with pytest.raises(KeyError):
            breaker.ask(Execute(lambda: {}["missing"]), timeout=5)
        with pytest.raises(ZeroDivisionError):  # not recorded: the service answered
            breaker.ask(Execute(lambda: 1 / 0), timeout=5)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["calls"], status["failures"]) == ("closed", 1, 0)
        with pytest.raises(Boom):
            breaker.ask(Execute(fail), timeout=5)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "open"


# -- concurrency ------------------------------------------------------------------------------


def test_operations_run_concurrently_through_one_breaker_with_a_pool_of_four_workers():
    barrier = threading.Barrier(4, timeout=5)

    def meet(i: int) -> int:
        barrier.wait()  # BrokenBarrierError after 5 s if the breaker serialised the calls
        return i

    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), pool(rt, 4), service="api")
        futures = [breaker.ask_future(Execute(meet, args=(i,))) for i in range(4)]
        assert [f.get(timeout=10) for f in futures] == [0, 1, 2, 3]
        assert breaker.ask(GetStatus(), timeout=5)["calls"] == 4


def test_coroutine_operations_run_concurrently_without_downstream():
    barrier = asyncio.Barrier(4)

    async def meet(i: int) -> int:
        async with asyncio.timeout(5):
            await barrier.wait()
        return i

    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), service="api")
        futures = [breaker.ask_future(Execute(meet, args=(i,))) for i in range(4)]
        assert [f.get(timeout=10) for f in futures] == [0, 1, 2, 3]


def test_half_open_admits_exactly_max_calls_of_50_concurrent_callers():
    clock = ManualClock()
    entered = threading.Barrier(4, timeout=5)  # three probes and this test
    release = threading.Event()

    def probe(i: int) -> int:
        entered.wait()
        assert release.wait(5)
        return i

    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(
            CircuitBreakerActor,
            config(failure_threshold=1, half_open_max_calls=3),
            pool(rt, 3),
            service="api",
        )
        fail_n(breaker, 1)
        clock.advance(30.0)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"

        start = threading.Barrier(50, timeout=5)
        futures: list[Any] = [None] * 50

        def caller(i: int) -> None:
            start.wait()
            futures[i] = breaker.ask_future(Execute(probe, args=(i,)))

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        entered.wait()  # the three admitted probes are running (and held)
        assert breaker.settle(5)
        rejected = [f for f in futures if f.done()]
        assert len(rejected) == 47  # rejected at once, while the probes are still held
        for future in rejected:
            with pytest.raises(CircuitOpen) as info:
                future.get(0)
            assert (info.value.state, info.value.retry_after) == ("half_open", 0.0)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["half_open_in_flight"]) == ("half_open", 3)

        release.set()
        admitted = [f for f in futures if f not in rejected]
        assert len(admitted) == 3
        assert all(isinstance(f.get(5), int) for f in admitted)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "closed"


# -- timers -----------------------------------------------------------------------------------


def test_open_becomes_half_open_by_timer_and_probes_close_it():
    clock = ManualClock()
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(failure_threshold=1), service="db")
        fail_n(breaker, 1)
        assert rt.scheduler.pending() == 1
        clock.advance(29.5)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["retry_after"]) == ("open", 0.5)
        clock.advance(0.5)  # the timer moves it; no call needed
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "closed"
        assert rt.scheduler.pending() == 0
    assert breaker_events(logs) == [
        ("garrison.breaker.opened", "closed", "failure_threshold"),
        ("garrison.breaker.half_open", "open", "recovery_timeout"),
        ("garrison.breaker.closed", "half_open", "probes_succeeded"),
    ]
    opened = next(e for e in logs if e["event"] == "garrison.breaker.opened")
    assert opened["log_level"] == "warning"
    assert opened["alert"] is True
    assert opened["service"] == "db"
    assert opened["to_state"] == "open"
    assert opened["recovery_timeout"] == 30.0
    assert "ALERT: Circuit breaker open" in opened["text"]


def test_a_probe_that_never_reports_is_timed_out_and_its_late_success_ignored():
    clock = ManualClock()
    release = threading.Event()

    def stuck() -> str:
        assert release.wait(5)
        return "late"

    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(
            CircuitBreakerActor,
            config(failure_threshold=1, probe_timeout=5.0),
            rt.spawn(WorkerActor),
            service="db",
        )
        fail_n(breaker, 1)
        clock.advance(30.0)
        probe = breaker.ask_future(Execute(stuck))
        assert breaker.ask(GetStatus(), timeout=5)["half_open_in_flight"] == 1
        clock.advance(5.0)  # the probe-timeout timer re-opens the breaker
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["retry_after"]) == ("open", 30.0)
        release.set()
        assert probe.get(5) == "late"  # the caller still gets its outcome
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "open"  # but it closes nothing
        with pytest.raises(CircuitOpen):
            breaker.ask(Execute(ok), timeout=5)


def test_recovery_backoff_rearms_a_longer_timer_after_a_failed_probe():
    clock = ManualClock()
    cfg = config(failure_threshold=1, recovery_backoff_multiplier=2.0, max_recovery_timeout=100)
    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(CircuitBreakerActor, cfg, service="db", seed=7)
        fail_n(breaker, 1)
        clock.advance(30.0)
        fail_n(breaker, 1)  # the probe fails: open again, for about 60 s
        status = breaker.ask(GetStatus(), timeout=5)
        wait = status["recovery_timeout"]
        assert status["state"] == "open"
        assert 54.0 <= wait <= 66.0
        assert status["next_transition_at"] == 30.0 + wait
        assert rt.scheduler.pending() == 1  # the old timer was replaced, not added to
        clock.advance_to(30.0 + wait - 0.001)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "open"
        clock.advance(0.001)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"


def test_stale_timers_are_cancelled_when_the_state_changes_by_hand():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(failure_threshold=1))
        fail_n(breaker, 1)
        assert rt.scheduler.pending() == 1
        assert breaker.ask(ForceClose(), timeout=5) == "closed"
        assert rt.scheduler.pending() == 0
        clock.advance(60.0)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "closed"


def test_an_actor_without_a_scheduler_makes_its_own():
    clock = ManualClock()
    breaker = Ref(CircuitBreakerActor.start(config(failure_threshold=1), clock=clock))
    try:
        fail_n(breaker, 1)
        clock.advance(30.0)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"
    finally:
        assert breaker.stop(5)


# -- permits and reports (the handles' protocol) ------------------------------------------------


def test_acquire_and_report():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(failure_threshold=2), service="svc")
        permit = breaker.ask(Acquire(), timeout=5)
        assert isinstance(permit, Permit)
        assert breaker.ask(Report(permit, True, 0.01), timeout=5) == "closed"
        for _ in range(2):
            permit = breaker.ask(Acquire(), timeout=5)
            state = breaker.ask(Report(permit, False, 0.01, Boom("x")), timeout=5)
        assert state == "open"
        with pytest.raises(CircuitOpen) as info:
            breaker.ask(Acquire(), timeout=5)
        assert (info.value.service, info.value.retry_after) == ("svc", 30.0)
        permit = Permit(0)  # a stale permit from before the trip counts for nothing
        assert breaker.ask(Report(permit, True, 0.0), timeout=5) == "open"


def test_a_permit_holder_that_never_reports_is_timed_out_by_a_timer():
    clock = ManualClock()
    cfg = config(failure_threshold=1, half_open_max_calls=2, probe_timeout=4.0)
    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(CircuitBreakerActor, cfg)
        permit = breaker.ask(Acquire(), timeout=5)
        breaker.ask(Report(permit, False, 0.0, Boom("x")), timeout=5)
        clock.advance(30.0)
        first = breaker.ask(Acquire(), timeout=5)
        clock.advance(1.0)
        second = breaker.ask(Acquire(), timeout=5)
        assert (first.probe, second.probe) == (1, 2)
        assert breaker.ask(GetStatus(), timeout=5)["next_transition_at"] == 34.0
        assert breaker.ask(Report(first, True, 0.5), timeout=5) == "half_open"
        # the timer follows the oldest probe still out: the second, admitted at 31
        assert breaker.ask(GetStatus(), timeout=5)["next_transition_at"] == 35.0
        clock.advance(3.999)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"
        clock.advance(0.001)
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["half_open_in_flight"]) == ("open", 0)
        assert rt.scheduler.pending() == 1  # only the new recovery timer


def test_a_failure_without_an_error_and_a_rejected_report():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(failure_threshold=2))
        permit = breaker.ask(Acquire(), timeout=5)
        breaker.ask(Report(permit, False, 0.0, RateLimited(1.0)), timeout=5)
        assert breaker.ask(GetStatus(), timeout=5)["calls"] == 0
        breaker.ask(Report(permit, False, 0.0), timeout=5)  # a bad result: a plain failure
        assert breaker.ask(GetStatus(), timeout=5)["failures"] == 1


def test_slow_calls_open_the_breaker_with_durations_from_the_injected_clock():
    clock = ManualClock()
    cfg = config(
        failure_threshold=5,
        min_calls=2,
        window_size=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=1.0,
    )
    with Runtime(clock=clock) as rt:
        breaker = rt.spawn(CircuitBreakerActor, cfg)
        for _ in range(2):
            permit = breaker.ask(Acquire(), timeout=5)
            breaker.ask(Report(permit, True, 2.0), timeout=5)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "open"


# -- manual control, status, listeners -----------------------------------------------------------


def test_manual_control():
    with capture_logs() as logs, Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(failure_threshold=1), service="svc")
        assert breaker.ask(ForceOpen(), timeout=5) == "forced_open"
        with pytest.raises(CircuitOpen) as info:
            breaker.ask(Execute(ok), timeout=5)
        assert info.value.state == "forced_open"
        assert math.isinf(info.value.retry_after)
        assert breaker.ask(ForceClose(), timeout=5) == "closed"
        assert breaker.ask(Disable(), timeout=5) == "disabled"
        fail_n(breaker, 3)  # counted for nothing
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        assert breaker.ask(Reset(), timeout=5) == "closed"
        assert breaker.ask(GetStatus(), timeout=5)["calls"] == 0
    assert breaker_events(logs) == [
        ("garrison.breaker.forced_open", "closed", "forced_open"),
        ("garrison.breaker.closed", "forced_open", "forced_close"),
        ("garrison.breaker.disabled", "closed", "disabled"),
        ("garrison.breaker.closed", "disabled", "reset"),
    ]


def test_status_has_the_documented_keys():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), service="svc")
        status = breaker.ask(GetStatus(), timeout=5)
    assert status["stage"] == "circuit_breaker"
    assert status["service"] == "svc"
    for key in (
        "state",
        "calls",
        "failures",
        "slow_calls",
        "error_rate",
        "slow_call_rate",
        "retry_after",
        "recovery_timeout",
    ):
        assert key in status
    assert status["recovery_timeout"] == 30.0


def test_listeners_see_every_transition_and_their_errors_are_logged():
    seen: list[tuple[str, str, str, str]] = []

    def broken(*_args: str) -> None:
        raise RuntimeError("listener bug")

    clock = ManualClock()
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        breaker = rt.spawn(
            CircuitBreakerActor,
            config(failure_threshold=1),
            service="db",
            listeners=[broken, lambda *args: seen.append(args)],
        )
        fail_n(breaker, 1)
        clock.advance(30.0)
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
    assert seen == [
        ("db", "closed", "open", "failure_threshold"),
        ("db", "open", "half_open", "recovery_timeout"),
        ("db", "half_open", "closed", "probes_succeeded"),
    ]
    failures = [e for e in logs if e["event"] == "garrison.breaker.listener_failed"]
    assert len(failures) == 3
    assert failures[0]["error"] == "RuntimeError: listener bug"


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="CircuitBreakerConfig"):
        CircuitBreakerActor({"failure_threshold": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service"):
        CircuitBreakerActor(config(), service="")
    with pytest.raises(TypeError, match="listeners"):
        CircuitBreakerActor(config(), listeners=["not callable"])  # type: ignore[list-item]


def test_unknown_messages_get_a_type_error_and_the_breaker_lives_on():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config())
        with pytest.raises(TypeError, match="does not handle str"):
            breaker.ask("hello", timeout=5)
        assert breaker.ask(Execute(ok), timeout=5) == "ok"


# -- restarts ---------------------------------------------------------------------------------


def test_an_open_breaker_stays_open_across_a_supervised_restart():
    clock = ManualClock()
    sup = Supervisor.start(
        "root",
        clock=clock,
        children=[
            ChildSpec(
                "breaker",
                CrashableBreaker,
                kwargs={"config": config(failure_threshold=2), "service": "db"},
            )
        ],
    )
    try:
        breaker = sup.child("breaker")
        fail_n(breaker, 2)
        clock.advance(10.0)
        with pytest.raises(RuntimeError, match="breaker bug"):
            breaker.ask(Crash(), timeout=5)
        assert sup.settle(5)  # the restart has been carried out
        assert sup.tree()["children"][0]["restarts"] == 1
        status = breaker.ask(GetStatus(), timeout=5)
        assert (status["state"], status["retry_after"]) == ("open", 20.0)
        with pytest.raises(CircuitOpen):
            breaker.ask(Execute(ok), timeout=5)
        clock.advance(20.0)  # the new incarnation armed its own recovery timer
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "half_open"
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "closed"
    finally:
        assert sup.stop(10)


def test_an_outcome_in_flight_during_a_restart_is_still_recorded():
    clock = ManualClock()
    started, release = threading.Event(), threading.Event()

    def slow_failure() -> None:
        started.set()
        assert release.wait(5)
        raise Boom("late")

    with Runtime(clock=clock) as rt:
        worker = rt.spawn(WorkerActor)
        breaker = rt.spawn(
            CrashableBreaker,
            config(failure_threshold=1),
            worker,
            name="breaker",
            restart="permanent",
        )
        pending = breaker.ask_future(Execute(slow_failure))
        assert started.wait(5)
        with pytest.raises(RuntimeError):
            breaker.ask(Crash(), timeout=5)
        assert rt.supervisor.settle(5)
        release.set()
        with pytest.raises(Boom):
            pending.get(5)
        assert breaker.ask(GetStatus(), timeout=5)["state"] == "open"


def test_status_totals_count_calls_by_kind():
    with Runtime(clock=ManualClock()) as rt:
        breaker = rt.spawn(CircuitBreakerActor, config(), pool(rt, 2), service="totals")
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        assert breaker.ask(Execute(ok), timeout=5) == "ok"
        fail_n(breaker, 3)
        for _ in range(2):
            with pytest.raises(CircuitOpen):
                breaker.ask(Execute(ok), timeout=5)
        totals = breaker.ask(GetStatus(), timeout=5)["totals"]
        assert totals == {"successful": 2, "failed": 3, "slow": 0, "rejected": 2, "ignored": 0}
