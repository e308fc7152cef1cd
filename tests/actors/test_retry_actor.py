"""The retry actor: exact schedules on a ManualClock, give-ups, budget, deadline, stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
import threading
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope
from structlog.testing import capture_logs

from garrison import (
    ActorUnavailable,
    CircuitOpen,
    Execute,
    Future,
    GetStatus,
    Ref,
    RetriesExhausted,
    Runtime,
)
from garrison._ref import actor_of
from garrison.actors import WorkerActor
from garrison.actors.retry import RetryActor
from garrison.policies.backoff import (
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    delay_for,
)
from garrison.testing import ManualClock


class Flaky:
    """Fails ``failures`` times (with ``errors`` in turn), then returns ``result``.

    Records the clock's time of every attempt.
    """

    def __init__(
        self,
        clock: Any,
        failures: int,
        error: BaseException | list[BaseException] | None = None,
        result: Any = "ok",
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.errors = error if isinstance(error, list) else [error or ConnectionError("down")]
        self.result = result
        self.times: list[float] = []

    def __call__(self) -> Any:
        self.times.append(self.clock.monotonic())
        n = len(self.times)
        if n <= self.failures:
            raise self.errors[min(n - 1, len(self.errors) - 1)]
        return self.result


def settle(*refs: Ref) -> None:
    """Let each actor (in order) handle everything queued so far, and what that queued.

    Twice per actor: an outcome that an attempt reports while the actor handles the message
    before the first Ping is queued behind that Ping.
    """
    for ref in refs:
        assert ref.settle(5)
        assert ref.settle(5)


def step(clock: ManualClock, seconds: float, *refs: Ref) -> None:
    """Advance the clock (delivering due timers), then settle ``refs``."""
    clock.advance(seconds)
    settle(*refs)


def no_jitter(**kwargs: Any) -> RetryConfig:
    kwargs.setdefault("base_delay", 1.0)
    return RetryConfig(jitter=False, **kwargs)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- schedules ---------------------------------------------------------------------------------


def test_exponential_schedule_is_exact_and_nothing_is_retried_early():
    clock = ManualClock()
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=4), service="users")
        op = Flaky(clock, failures=3)
        future = retry.ask_future(Execute(op, name="fetch"))
        settle(retry)
        assert op.times == [0.0]
        for due in (1.0, 3.0, 7.0):
            clock.advance_to(due - 0.125)
            settle(retry)
            assert op.times[-1] < due  # not a moment early
            assert not future.done()
            clock.advance_to(due)
            settle(retry)
            assert op.times[-1] == due
        assert future.get(5) == "ok"
        assert op.times == [0.0, 1.0, 3.0, 7.0]
        status = retry.ask(GetStatus(), timeout=5)
    failed = events(logs, "garrison.retry.attempt_failed")
    assert [(e["attempt"], e["delay"]) for e in failed] == [(1, 1.0), (2, 2.0), (3, 4.0)]
    assert {e["operation"] for e in failed} == {"fetch"}
    assert failed[0]["error"] == "ConnectionError: down"
    assert failed[0]["service"] == "users"
    (succeeded,) = events(logs, "garrison.retry.succeeded")
    assert succeeded["attempts"] == 4
    assert succeeded["elapsed"] == 7.0
    (warning,) = events(logs, "garrison.retry.multiple_retries")
    assert warning["log_level"] == "warning"
    assert (warning["operation"], warning["attempts"], warning["outcome"]) == (
        "fetch",
        4,
        "success",
    )
    assert status["operations"] == 1
    assert status["attempts"] == 4
    assert status["retries_scheduled"] == 3
    assert status["succeeded"] == status["succeeded_after_retry"] == 1
    assert status["waiting"] == status["in_flight"] == 0


@pytest.mark.parametrize(
    ("strategy", "base", "times"),
    [
        ("linear", 1.0, [0.0, 1.0, 3.0, 6.0]),
        ("fixed", 2.0, [0.0, 2.0, 4.0, 6.0]),
        ("exponential", 0.5, [0.0, 0.5, 1.5, 3.5]),
    ],
)
def test_schedules_through_a_downstream_worker(strategy, base, times):
    clock = ManualClock()
    config = no_jitter(max_attempts=4, backoff_strategy=strategy, base_delay=base)
    with Runtime(clock=clock) as rt:
        worker = rt.spawn(WorkerActor)
        retry = rt.spawn(RetryActor, config, worker)
        op = Flaky(clock, failures=3)
        future = retry.ask_future(Execute(op))
        settle(retry, worker, retry)  # forwarded, run, outcome handled
        for previous, due in itertools.pairwise(times):
            step(clock, due - previous, worker, retry)
        assert future.get(5) == "ok"
        assert op.times == times


def test_max_delay_caps_the_backoff():
    clock = ManualClock()
    config = no_jitter(max_attempts=5, base_delay=1.0, max_delay=3.0)
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config)
        op = Flaky(clock, failures=4)
        future = retry.ask_future(Execute(op))
        settle(retry)
        for seconds in (1.0, 2.0, 3.0, 3.0):
            step(clock, seconds, retry)
        assert future.get(5) == "ok"
        assert op.times == [0.0, 1.0, 3.0, 6.0, 9.0]


def test_seeded_jitter_is_reproducible():
    config = RetryConfig(max_attempts=3, base_delay=1.0, jitter=True)
    rng = random.Random(7)
    first = delay_for(1, config, rng)
    second = delay_for(2, config, rng)
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config, seed=7)
        op = Flaky(clock, failures=2)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, first, retry)
        step(clock, second, retry)
        assert future.get(5) == "ok"
    assert op.times == [0.0, first, first + second]


# -- give-ups ----------------------------------------------------------------------------------


def test_retries_exhausted_carries_the_attempts_and_the_last_error():
    clock = ManualClock()
    errors: list[BaseException] = [ConnectionError(f"down {i}") for i in range(1, 4)]
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3))
        op = Flaky(clock, failures=10, error=errors)
        future = retry.ask_future(Execute(op, name="sync"))
        settle(retry)
        step(clock, 1.0, retry)
        step(clock, 2.0, retry)
        with pytest.raises(RetriesExhausted) as caught:
            future.get(5)
        status = retry.ask(GetStatus(), timeout=5)
        assert rt.scheduler.pending() == 0
    assert caught.value.attempts == 3
    assert caught.value.last_error is errors[2]
    assert caught.value.__cause__ is errors[2]
    assert op.times == [0.0, 1.0, 3.0]
    (gave_up,) = events(logs, "garrison.retry.gave_up")
    assert gave_up["reason"] == "attempts_exhausted"
    assert gave_up["attempts"] == 3
    assert gave_up["error"] == "ConnectionError: down 3"
    (warning,) = events(logs, "garrison.retry.multiple_retries")
    assert warning["outcome"] == "failure"
    assert status["failed"] == 1
    assert status["gave_up"] == {"attempts_exhausted": 1}


class Unlucky(Exception):
    pass


class FlakyNetwork(ConnectionError):
    pass


@pytest.mark.parametrize(
    ("retry_exceptions", "error", "retried"),
    [
        (None, ValueError("bad input"), False),
        (None, FileNotFoundError("gone"), False),
        (None, TimeoutError("slow"), True),
        (["ConnectionError", "TimeoutError", "HTTPError"], FlakyNetwork("x"), True),
        (["ConnectionError"], Unlucky("x"), False),
        ([f"{Unlucky.__module__}.Unlucky"], Unlucky("x"), True),
        ([Unlucky], Unlucky("x"), True),
        ([], ConnectionError("x"), False),
    ],
)
def test_what_is_retried(retry_exceptions, error, retried):
    clock = ManualClock()
    kwargs = {} if retry_exceptions is None else {"retry_exceptions": retry_exceptions}
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=2, **kwargs))
        op = Flaky(clock, failures=1, error=error)
        future = retry.ask_future(Execute(op))
        settle(retry)
        if retried:
            assert rt.scheduler.pending() == 1
            step(clock, 1.0, retry)
            assert future.get(5) == "ok"
            assert op.times == [0.0, 1.0]
        else:
            with pytest.raises(type(error)) as caught:
                future.get(5)
            assert caught.value is error  # as it is, not wrapped
            assert op.times == [0.0]
            assert rt.scheduler.pending() == 0


def test_a_single_attempt_returns_the_error_as_it_is():
    clock = ManualClock()
    error = ConnectionError("down")
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=1))
        with pytest.raises(ConnectionError) as caught:
            retry.ask(Execute(Flaky(clock, failures=1, error=error)), timeout=5)
    assert caught.value is error
    (gave_up,) = events(logs, "garrison.retry.gave_up")
    assert gave_up["reason"] == "attempts_exhausted"
    assert gave_up["attempts"] == 1


@pytest.mark.parametrize(
    "error",
    [asyncio.CancelledError(), concurrent.futures.CancelledError(), KeyboardInterrupt()],
)
def test_cancellation_is_never_retried(error):
    clock = ManualClock()
    config = no_jitter(max_attempts=5, retry_exceptions=[BaseException])
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config)
        op = Flaky(clock, failures=1, error=error)
        future = retry.ask_future(Execute(op))
        settle(retry)
        assert future.exception(5) is error
        assert op.times == [0.0]
        assert rt.scheduler.pending() == 0


def test_a_non_retryable_error_after_retries_is_returned_as_it_is():
    clock = ManualClock()
    final = ValueError("broken")
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=5))
        op = Flaky(clock, failures=2, error=[ConnectionError("down"), final])
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        assert future.exception(5) is final
    (gave_up,) = events(logs, "garrison.retry.gave_up")
    assert (gave_up["reason"], gave_up["attempts"]) == ("not_retryable", 2)


# -- budget ------------------------------------------------------------------------------------


def test_an_empty_budget_returns_the_original_error_and_logs_it():
    clock = ManualClock()
    # 4 tokens; retries allowed while more than 2 remain: the 1st failure leaves 3 (retry),
    # the 2nd leaves 2 (no retry).
    config = no_jitter(max_attempts=5, budget=RetryBudgetConfig(max_tokens=4, token_ratio=0.5))
    second = ConnectionError("still down")
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config, service="billing")
        op = Flaky(clock, failures=10, error=[ConnectionError("down"), second])
        future = retry.ask_future(Execute(op, name="charge"))
        settle(retry)
        step(clock, 1.0, retry)
        assert future.exception(5) is second  # not RetriesExhausted
        assert op.times == [0.0, 1.0]
        assert rt.scheduler.pending() == 0
        status = retry.ask(GetStatus(), timeout=5)
        assert status["budget"]["tokens"] == 2.0
        assert status["budget"]["retries_allowed"] is False
        # a success refunds token_ratio: 2.5 tokens, retries allowed again
        assert retry.ask(Execute(lambda: "fine"), timeout=5) == "fine"
        status = retry.ask(GetStatus(), timeout=5)
        assert status["budget"]["tokens"] == 2.5
        assert status["budget"]["retries_allowed"] is True
    (exhausted,) = events(logs, "garrison.retry.budget_exhausted")
    assert exhausted["log_level"] == "warning"
    assert exhausted["service"] == "billing"
    assert exhausted["operation"] == "charge"
    assert exhausted["attempts"] == 2
    assert exhausted["tokens"] == 2.0
    assert status["gave_up"] == {"budget_exhausted": 1}


def test_a_budget_passed_in_is_shared_between_actors():
    clock = ManualClock()
    budget = RetryBudget(RetryBudgetConfig(max_tokens=4))
    config = no_jitter(max_attempts=5)
    with Runtime(clock=clock) as rt:
        first = rt.spawn(RetryActor, config, budget=budget)
        second = rt.spawn(RetryActor, config, budget=budget)
        a = first.ask_future(Execute(Flaky(clock, failures=10)))
        settle(first)
        b = second.ask_future(Execute(Flaky(clock, failures=10)))
        settle(second)
        # a's failure left 3 tokens (retry), b's left 2: b is refused a retry at once
        assert isinstance(b.exception(5), ConnectionError)
        assert not a.done()
        assert second.ask(GetStatus(), timeout=5)["budget"]["tokens"] == 2.0
        step(clock, 1.0, first)
        assert isinstance(a.exception(5), ConnectionError)


# -- deadline and retry_after ------------------------------------------------------------------


def test_the_deadline_is_never_overslept():
    clock = ManualClock()
    config = no_jitter(max_attempts=10, deadline=5.0)
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config)
        op = Flaky(clock, failures=10)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        step(clock, 2.0, retry)
        # after the attempt at t=3 the next wait (4 s) would end at 7 > 5: give up now
        assert clock.monotonic() == 3.0
        with pytest.raises(RetriesExhausted) as caught:
            future.get(5)
        assert rt.scheduler.pending() == 0
    assert caught.value.attempts == 3
    assert op.times == [0.0, 1.0, 3.0]
    (gave_up,) = events(logs, "garrison.retry.gave_up")
    assert gave_up["reason"] == "deadline"
    assert gave_up["elapsed"] == 3.0


def test_a_retry_that_ends_exactly_at_the_deadline_is_made():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=10, deadline=3.0))
        op = Flaky(clock, failures=2)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        step(clock, 2.0, retry)
        assert future.get(5) == "ok"
        assert op.times == [0.0, 1.0, 3.0]


def test_circuit_open_is_retried_only_after_its_retry_after():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3, max_delay=10.0))
        op = Flaky(clock, failures=1, error=CircuitOpen("users", retry_after=5.0))
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 4.875, retry)
        assert op.times == [0.0]
        assert not future.done()
        step(clock, 0.125, retry)
        assert future.get(5) == "ok"
        assert op.times == [0.0, 5.0]


def test_circuit_open_past_the_deadline_is_returned_at_once():
    clock = ManualClock()
    error = CircuitOpen("users", retry_after=5.0)
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3, max_delay=10.0, deadline=3.0))
        op = Flaky(clock, failures=1, error=error)
        future = retry.ask_future(Execute(op))
        settle(retry)
        assert future.exception(5) is error
        assert rt.scheduler.pending() == 0


def test_a_retry_after_longer_than_max_delay_is_returned_as_it_is():
    clock = ManualClock()
    first, hint = ConnectionError("down"), CircuitOpen("users", retry_after=3600.0)
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=5, max_delay=10.0))
        op = Flaky(clock, failures=5, error=[first, hint])
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        assert future.exception(5) is hint  # its retry_after tells the caller when
    (gave_up,) = events(logs, "garrison.retry.gave_up")
    assert gave_up["reason"] == "retry_after_too_long"


class Throttled(ConnectionError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("429")
        self.retry_after = retry_after


class Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class HTTPStatusError(Exception):
    def __init__(self, retry_after: str) -> None:
        super().__init__("503 Service Unavailable")
        self.response = Response({"Retry-After": retry_after})


@pytest.mark.parametrize(
    ("error", "retry_exceptions", "second_at"),
    [
        (Throttled(2.5), None, 2.5),
        (Throttled(0.25), None, 1.0),  # the backoff is longer than the hint: backoff wins
        (HTTPStatusError("3"), ["HTTPStatusError"], 3.0),
        (HTTPStatusError("not a date"), ["HTTPStatusError"], 1.0),
    ],
)
def test_a_retry_after_hint_on_any_error_is_honoured(error, retry_exceptions, second_at):
    clock = ManualClock()
    kwargs = {} if retry_exceptions is None else {"retry_exceptions": retry_exceptions}
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3, max_delay=10.0, **kwargs))
        op = Flaky(clock, failures=1, error=error)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, second_at - 0.125, retry)
        assert op.times == [0.0]
        step(clock, 0.125, retry)
        assert future.get(5) == "ok"
        assert op.times == [0.0, second_at]


# -- retry_on_result ---------------------------------------------------------------------------


def test_retry_on_result_retries_unwanted_results():
    clock = ManualClock()
    config = no_jitter(max_attempts=4, retry_on_result=lambda r: r is None)
    results = iter([None, None, "ok"])
    times: list[float] = []

    def op() -> Any:
        times.append(clock.monotonic())
        return next(results)

    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        step(clock, 2.0, retry)
        assert future.get(5) == "ok"
    assert times == [0.0, 1.0, 3.0]
    failed = events(logs, "garrison.retry.attempt_failed")
    assert [e["rejected_result"] for e in failed] == ["NoneType", "NoneType"]


def test_retry_on_result_exhausted_raises_with_the_last_result():
    clock = ManualClock()
    pending = {"status": "pending"}
    config = no_jitter(max_attempts=2, retry_on_result=lambda r: r["status"] == "pending")
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, config)
        future = retry.ask_future(Execute(lambda: pending))
        settle(retry)
        step(clock, 1.0, retry)
        with pytest.raises(RetriesExhausted) as caught:
            future.get(5)
        # with a single attempt allowed the result is returned as it is
        single = rt.spawn(RetryActor, no_jitter(max_attempts=1, retry_on_result=lambda r: True))
        assert single.ask(Execute(lambda: pending), timeout=5) is pending
    assert caught.value.attempts == 2
    assert caught.value.last_error is None
    assert caught.value.last_result is pending  # type: ignore[attr-defined]


def test_an_error_in_retry_on_result_reaches_the_caller():
    def check(result: Any) -> bool:
        raise KeyError("no status")

    with capture_logs() as logs, Runtime(clock=ManualClock()) as rt:
        retry = rt.spawn(RetryActor, no_jitter(retry_on_result=check))
        with pytest.raises(KeyError, match="no status"):
            retry.ask(Execute(dict), timeout=5)
        assert retry.ask(GetStatus(), timeout=5)["gave_up"] == {"result_check_failed": 1}
    assert events(logs, "garrison.retry.result_check_failed")


# -- concurrency, stop and crash ---------------------------------------------------------------


def test_the_actor_serves_other_operations_while_one_waits():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=2, base_delay=10.0))
        slow = Flaky(clock, failures=1)
        waiting = retry.ask_future(Execute(slow, name="slow"))
        settle(retry)
        answers = [retry.ask(Execute(lambda i=i: i), timeout=5) for i in range(20)]
        assert answers == list(range(20))
        status = retry.ask(GetStatus(), timeout=5)
        assert (status["waiting"], status["in_flight"]) == (1, 0)
        assert not waiting.done()
        step(clock, 10.0, retry)
        assert waiting.get(5) == "ok"
        assert retry.ask(GetStatus(), timeout=5)["waiting"] == 0


def test_stop_gives_every_waiting_operation_an_outcome():
    clock = ManualClock()
    errors = [ConnectionError(f"down {i}") for i in range(3)]
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3))
        futures = [
            retry.ask_future(Execute(Flaky(clock, failures=5, error=errors[i]), name=f"op{i}"))
            for i in range(3)
        ]
        settle(retry)
        assert rt.scheduler.pending() == 3
        assert retry.stop(5)
        for future, error in zip(futures, errors, strict=True):
            problem = future.exception(5)
            assert isinstance(problem, ActorUnavailable)
            assert problem.__cause__ is error
            assert "waited for attempt 2" in str(problem)
        assert rt.scheduler.pending() == 0  # the timers were cancelled
        clock.advance(10.0)  # nothing fires into the stopped actor
    abandoned = events(logs, "garrison.retry.abandoned")
    assert sorted(e["operation"] for e in abandoned) == ["op0", "op1", "op2"]
    assert not events(logs, "garrison.dead_letter")


class CrashingRetry(RetryActor):
    def handle_other(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("bug in the stage")
        return super().handle_other(message)


def test_a_crash_gives_every_waiting_operation_an_outcome():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(CrashingRetry, no_jitter(max_attempts=3))
        future = retry.ask_future(Execute(Flaky(clock, failures=5)))
        settle(retry)
        retry.tell("crash")
        problem = future.exception(5)
        assert isinstance(problem, ActorUnavailable)
        assert "crashed" in str(problem)
        assert rt.scheduler.pending() == 0


def test_an_attempt_running_downstream_when_the_actor_stops_reaches_the_caller():
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(5)
        return "late"

    with Runtime(clock=ManualClock()) as rt:
        worker = rt.spawn(WorkerActor)
        retry = rt.spawn(RetryActor, no_jitter(), worker)
        future = retry.ask_future(Execute(slow))
        assert started.wait(5)
        assert retry.stop(5)
        release.set()
        assert future.get(5) == "late"


class Gate:
    """A message that blocks the actor handling it until ``open`` is set."""

    def __init__(self) -> None:
        self.open = threading.Event()


class GatedRetry(RetryActor):
    def handle_other(self, message: Any) -> Any:
        if isinstance(message, Gate):
            assert message.open.wait(5)
            return None
        return super().handle_other(message)


def test_an_outcome_reported_while_the_stop_is_queued_reaches_the_caller():
    """The outcome lands behind the stop: the closing mailbox hands it to the caller as is."""
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(5)
        return "late"

    with Runtime(clock=ManualClock()) as rt:
        worker = rt.spawn(WorkerActor)
        retry = rt.spawn(GatedRetry, no_jitter(), worker)
        future = retry.ask_future(Execute(slow))
        assert started.wait(5)
        gate = Gate()
        retry.tell(gate)  # the retry actor is busy ...
        stopped: Future[Any] = Future()
        retry._send(Envelope(pykka.messages._ActorStop(), reply_to=stopped))  # ... stop queued
        release.set()
        settle(worker)  # the outcome has been reported: it is queued behind the stop
        actor = actor_of(retry.actor_ref)
        assert actor is not None
        gate.open.set()
        stopped.get(5)
        actor._thread.join(5)  # its mailbox is closed: whatever was queued has been answered
        assert future.get(0) == "late"


# -- real clock, coroutines, standalone --------------------------------------------------------


def test_coroutine_operations_are_retried_on_real_timers():
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    config = no_jitter(max_attempts=3, base_delay=0.001, max_delay=0.01)
    with Runtime() as rt:
        retry = rt.spawn(RetryActor, config)
        assert retry.ask(Execute(flaky), timeout=5) == "ok"
    assert len(calls) == 3


def test_a_standalone_actor_owns_its_scheduler():
    clock = ManualClock()
    retry = Ref(RetryActor.start(no_jitter(max_attempts=2), clock=clock))
    try:
        op = Flaky(clock, failures=1)
        future = retry.ask_future(Execute(op))
        settle(retry)
        step(clock, 1.0, retry)
        assert future.get(5) == "ok"
    finally:
        assert retry.stop(5)
    real = Ref(RetryActor.start(no_jitter(max_attempts=2, base_delay=0.001)))
    try:
        assert real.ask(Execute(Flaky(ManualClock(), failures=1)), timeout=5) == "ok"
    finally:
        assert real.stop(5)  # its timer thread ends too (the leak check would fail)


def test_configuration_is_checked():
    with pytest.raises(TypeError, match="RetryConfig"):
        RetryActor("3 attempts")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RetryBudget"):
        RetryActor(RetryConfig(), budget={"max_tokens": 3})  # type: ignore[arg-type]
    actor = RetryActor({"max_attempts": 2, "jitter": False})  # type: ignore[arg-type]
    assert actor.config == RetryConfig(max_attempts=2, jitter=False)
    actor.scheduler.stop()


def test_status_describes_the_actor():
    config = no_jitter(max_attempts=3, budget={"max_tokens": 5})
    with Runtime(clock=ManualClock()) as rt:
        retry = rt.spawn(RetryActor, config, service="search")
        assert retry.ask(Execute(lambda: 1), timeout=5) == 1
        status = retry.ask(GetStatus(), timeout=5)
    assert status == {
        "stage": "retry",
        "service": "search",
        "operations": 1,
        "attempts": 1,
        "retries_scheduled": 0,
        "waiting": 0,
        "in_flight": 0,
        "succeeded": 1,
        "succeeded_after_retry": 0,
        "failed": 0,
        "failed_after_retry": 0,
        "gave_up": {},
        "abandoned": 0,
        "budget": {
            "tokens": 5.0,
            "max_tokens": 5.0,
            "token_ratio": 0.1,
            "threshold": 2.5,
            "retries_allowed": True,
        },
        "config": {
            "max_attempts": 3,
            "backoff_strategy": "exponential",
            "base_delay": 1.0,
            "max_delay": 60.0,
            "jitter": "none",
            "deadline": None,
        },
    }


def test_other_messages_are_refused_with_a_type_error():
    with Runtime(clock=ManualClock()) as rt:
        retry = rt.spawn(RetryActor, no_jitter())
        with pytest.raises(TypeError, match="does not handle str"):
            retry.ask("hello", timeout=5)
        assert retry.ask(Execute(lambda: 2), timeout=5) == 2


def test_a_retry_that_cannot_be_scheduled_any_more_gets_an_outcome():
    clock = ManualClock()
    error = ConnectionError("down")
    with Runtime(clock=clock) as rt:
        retry = rt.spawn(RetryActor, no_jitter(max_attempts=3))
        rt.scheduler.stop()  # as while the runtime shuts down
        with pytest.raises(ActorUnavailable, match="scheduler has stopped") as caught:
            retry.ask(Execute(Flaky(clock, failures=1, error=error)), timeout=5)
        assert caught.value.__cause__ is error
        assert retry.ask(GetStatus(), timeout=5)["abandoned"] == 1


def test_a_retry_timer_refused_by_a_closed_mailbox_answers_its_operation():
    from garrison.actors.retry import _Operation, _RetryDue  # noqa: PLC0415

    reply: Future[Any] = Future()
    operation = _Operation(1, Execute(print), reply, 0.0)
    operation.last_error = ConnectionError("down")
    _RetryDue(operation, "retry").refused("the actor has stopped")
    problem = reply.exception(0)
    assert isinstance(problem, ActorUnavailable)
    assert problem.__cause__ is operation.last_error
    _RetryDue(operation, "retry").refused("again")  # already answered: nothing changes
    assert reply.exception(0) is problem
