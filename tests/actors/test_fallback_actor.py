"""The fallback actor (value, callable, last success, routed failures) and with_fallback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from garrison import (
    ActorUnavailable,
    ConfigError,
    Execute,
    GetStatus,
    OperationFailed,
    Ref,
    RetriesExhausted,
    Runtime,
)
from garrison.actors import WorkerActor
from garrison.actors.fallback import NO_VALUE, FallbackActor
from garrison.actors.retry import RetryActor
from garrison.fallback import awith_fallback, with_fallback
from garrison.policies.backoff import RetryConfig
from garrison.supervision import ChildSpec, Supervisor
from garrison.testing import ManualClock


def fail(message: str = "down") -> Any:
    raise ConnectionError(message)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"fallback": True}, None, 0, []])
def test_a_static_value_replaces_any_error(value):
    with capture_logs() as logs, Runtime() as rt:
        fallback = rt.spawn(FallbackActor, value)
        assert fallback.ask(Execute(fail, name="fetch"), timeout=5) is value
        assert fallback.ask(Execute(lambda: "real"), timeout=5) == "real"
        # A success reaches the caller before the fallback's bookkeeping sees it (one
        # mailbox hop less, by design): wait (bounded) for the count to catch up.
        deadline = time.monotonic() + 5
        status = fallback.ask(GetStatus(), timeout=5)
        while status["successes"] < 1 and time.monotonic() < deadline:
            status = fallback.ask(GetStatus(), timeout=5)
    (used,) = events(logs, "garrison.fallback.used")
    assert used == {
        "event": "garrison.fallback.used",
        "log_level": "warning",
        "operation": "fetch",
        "error": "ConnectionError: down",
        "source": "value",
    }
    assert status["mode"] == "value"
    assert status["used"] == {"cache": 0, "value": 1, "callable": 0}
    assert status["successes"] == 1


def test_a_callable_gets_the_error_and_the_message():
    seen: list[tuple[BaseException, Execute]] = []

    def substitute(error: BaseException, message: Execute) -> str:
        seen.append((error, message))
        return f"fallback for {message.name}"

    error = ConnectionError("down")

    def broken() -> None:
        raise error

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, fallback=substitute)
        message = Execute(broken, name="fetch_user")
        assert fallback.ask(message, timeout=5) == "fallback for fetch_user"
        assert fallback.ask(GetStatus(), timeout=5)["used"]["callable"] == 1
    assert seen == [(error, message)]


def test_a_callable_that_raises_gives_its_error_chained_from_the_original():
    original = ConnectionError("down")

    def broken() -> None:
        raise original

    def substitute(error: BaseException, message: Execute) -> Any:
        raise LookupError("no default either")

    with capture_logs() as logs, Runtime() as rt:
        fallback = rt.spawn(FallbackActor, fallback=substitute)
        with pytest.raises(LookupError, match="no default either") as caught:
            fallback.ask(Execute(broken, name="fetch"), timeout=5)
        status = fallback.ask(GetStatus(), timeout=5)
    assert caught.value.__cause__ is original
    (failed,) = events(logs, "garrison.fallback.failed")
    assert failed["error"] == "ConnectionError: down"
    assert failed["fallback_error"] == "LookupError: no default either"
    assert status["callable_failed"] == 1


def test_a_callable_that_reraises_the_original_is_not_chained_to_itself():
    original = ConnectionError("down")

    def broken() -> None:
        raise original

    def substitute(error: BaseException, message: Execute) -> Any:
        raise error

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, fallback=substitute)
        with pytest.raises(ConnectionError) as caught:
            fallback.ask(Execute(broken), timeout=5)
    assert caught.value is original
    assert caught.value.__cause__ is None


def test_a_coroutine_callable_runs_on_the_event_loop():
    async def substitute(error: BaseException, message: Execute) -> str:
        await asyncio.sleep(0)
        return f"async {type(error).__name__}"

    async def refuse(error: BaseException, message: Execute) -> str:
        raise LookupError("async refusal")

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, fallback=substitute)
        assert fallback.ask(Execute(fail), timeout=5) == "async ConnectionError"
        refusing = rt.spawn(FallbackActor, fallback=refuse)
        with pytest.raises(LookupError) as caught:
            refusing.ask(Execute(fail), timeout=5)
        assert isinstance(caught.value.__cause__, ConnectionError)
        assert refusing.ask(GetStatus(), timeout=5)["callable_failed"] == 1


def test_a_callable_value_is_returned_not_called():
    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, len)
        assert fallback.ask(Execute(fail), timeout=5) is len


def test_the_last_success_is_served_per_operation_name():
    state = {"up": True}

    def fetch(user: int) -> dict[str, int]:
        if not state["up"]:
            raise ConnectionError("down")
        return {"user": user}

    with capture_logs() as logs, Runtime() as rt:
        fallback = rt.spawn(FallbackActor, cache_last_success=True)
        assert fallback.ask(Execute(fetch, args=(1,), name="user:1"), timeout=5) == {"user": 1}
        state["up"] = False
        assert fallback.ask(Execute(fetch, args=(1,), name="user:1"), timeout=5) == {"user": 1}
        with pytest.raises(ConnectionError):  # nothing cached under that name: re-raised
            fallback.ask(Execute(fetch, args=(2,), name="user:2"), timeout=5)
        status = fallback.ask(GetStatus(), timeout=5)
    assert [e["source"] for e in events(logs, "garrison.fallback.used")] == ["cache"]
    (reraised,) = events(logs, "garrison.fallback.reraised")
    assert reraised["operation"] == "user:2"
    assert status["mode"] == "cache"
    assert status["used"]["cache"] == 1
    assert status["reraised"] == 1
    assert (status["cache_size"], status["cache_capacity"]) == (1, 1024)


def test_the_cache_is_a_bounded_lru():
    ok = {"up": True}

    def op(value: str) -> str:
        if not ok["up"]:
            raise ConnectionError("down")
        return value

    def call(ref: Ref, name: str) -> Any:
        return ref.ask(Execute(op, args=(name.upper(),), name=name), timeout=5)

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, cache_last_success=True, cache_size=2)
        assert [call(fallback, n) for n in "abc"] == ["A", "B", "C"]  # "a" is evicted
        assert fallback.ask(GetStatus(), timeout=5)["cache_size"] == 2
        ok["up"] = False
        assert call(fallback, "b") == "B"  # a hit makes "b" the most recent
        ok["up"] = True
        assert call(fallback, "d") == "D"  # evicts "c", the least recently used
        ok["up"] = False
        assert call(fallback, "b") == "B"
        assert call(fallback, "d") == "D"
        for evicted in "ac":
            with pytest.raises(ConnectionError):
                call(fallback, evicted)


def test_the_cache_comes_first_then_the_value():
    up = {"up": True}

    def op() -> str:
        if not up["up"]:
            raise ConnectionError("down")
        return "fresh"

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, "default", cache_last_success=True)
        assert fallback.ask(Execute(fail, name="op"), timeout=5) == "default"
        assert fallback.ask(Execute(op, name="op"), timeout=5) == "fresh"
        up["up"] = False
        assert fallback.ask(Execute(op, name="op"), timeout=5) == "fresh"
        status = fallback.ask(GetStatus(), timeout=5)
        calls = rt.spawn(FallbackActor, fallback=lambda e, m: "computed", cache_last_success=True)
        assert calls.ask(Execute(fail), timeout=5) == "computed"
        assert calls.ask(GetStatus(), timeout=5)["mode"] == "cache+callable"
    assert status["mode"] == "cache+value"
    assert status["used"] == {"cache": 1, "value": 1, "callable": 0}


@pytest.mark.parametrize(
    "error",
    [asyncio.CancelledError(), concurrent.futures.CancelledError(), KeyboardInterrupt()],
)
def test_cancellation_is_never_replaced(error):
    def cancelled() -> None:
        raise error

    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, "default")
        future = fallback.ask_future(Execute(cancelled))
        assert future.exception(5) is error
        assert fallback.ask(GetStatus(), timeout=5)["passed_through"] == 1


def test_behind_a_retry_stage_the_fallback_answers_when_retries_run_out():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        worker = rt.spawn(WorkerActor)
        retry = rt.spawn(RetryActor, RetryConfig(max_attempts=2, jitter=False), worker)
        seen: list[BaseException] = []

        def substitute(error: BaseException, message: Execute) -> str:
            seen.append(error)
            return "stale"

        fallback = rt.spawn(FallbackActor, downstream=retry, fallback=substitute)
        future = fallback.ask_future(Execute(fail))
        # attempt 1 fails, the retry waits 1 s on the manual clock, attempt 2 fails, the
        # retry gives up and the fallback answers
        for _ in range(3):
            for ref in (fallback, retry, worker, retry, retry, fallback, fallback):
                assert ref.settle(5)
            if future.done():
                break
            clock.advance(1.0)
        assert future.get(0) == "stale"
        assert clock.monotonic() == 1.0
    (error,) = seen
    assert isinstance(error, RetriesExhausted)
    assert error.attempts == 2


# -- routed failures ---------------------------------------------------------------------------


class ExecuteCrasher(WorkerActor):
    """Crashes on every Execute: a told one is left without an outcome and gets routed."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Execute):
            raise RuntimeError("worker bug")
        return super().on_receive(message)


@pytest.mark.parametrize(
    ("kwargs", "source", "outcome"),
    [
        ({"fallback": "callable"}, "callable", "substituted"),
        ({"value": "queued for later"}, "value", "substituted"),
        ({"cache_last_success": True}, "none", "no_fallback"),
    ],
)
def test_failures_routed_from_a_supervisor_are_handled(kwargs, source, outcome):
    received: list[tuple[BaseException, Execute]] = []
    done = threading.Event()

    def record(error: BaseException, message: Execute) -> str:
        received.append((error, message))
        done.set()
        return "recorded"

    if kwargs.get("fallback") == "callable":
        kwargs = {"fallback": record}
    with (
        capture_logs() as logs,
        Supervisor.start(
            "root",
            children=[
                ChildSpec("worker", ExecuteCrasher),
                ChildSpec("fallback", FallbackActor, kwargs=kwargs),
            ],
            route_failures_to="fallback",
        ) as sup,
    ):
        operation = Execute(fail, name="nightly-report")
        sup.child("worker").tell(operation)
        assert sup.child("worker").settle(5)  # crashed, restarted, failure routed
        status = sup.child("fallback").ask(GetStatus(), timeout=5)
    assert status["routed"] == 1
    assert status["routed_by_source"] == {source: 1}
    (routed,) = events(logs, "garrison.fallback.routed")
    assert routed["operation"] == "nightly-report"
    assert routed["origin"] == "root/worker"
    assert routed["error"] == "RuntimeError: worker bug"
    assert (routed["source"], routed["outcome"]) == (source, outcome)
    if source == "callable":
        assert done.is_set()
        ((error, message),) = received
        assert isinstance(error, RuntimeError)
        assert message is operation
        assert routed["value_type"] == "str"


def test_a_routed_failure_without_an_error_gets_a_stand_in():
    seen: list[BaseException] = []

    def record(error: BaseException, message: Execute) -> None:
        seen.append(error)
        raise ValueError("cannot recover")

    with capture_logs() as logs, Runtime() as rt:
        fallback = rt.spawn(FallbackActor, fallback=record)
        failed = OperationFailed(Execute(fail, name="lost"), None, "its mailbox closed", "w1")
        fallback.tell(failed)
        assert fallback.ask(GetStatus(), timeout=5)["routed"] == 1
    (error,) = seen
    assert isinstance(error, ActorUnavailable)
    assert "its mailbox closed" in str(error)
    (routed,) = events(logs, "garrison.fallback.routed")
    assert routed["outcome"] == "failed"


# -- configuration and status ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "key"),
    [
        ((), {}, "value"),
        (("v",), {"fallback": lambda e, m: 1}, "fallback"),
        ((), {"fallback": "not callable"}, "fallback"),
        ((), {"cache_last_success": "yes"}, "cache_last_success"),
        ((), {"cache_last_success": True, "cache_size": 0}, "cache_size"),
        ((), {"cache_last_success": True, "cache_size": 1.5}, "cache_size"),
    ],
)
def test_bad_configuration_names_the_key(args, kwargs, key):
    with pytest.raises(ConfigError) as caught:
        FallbackActor(*args, **kwargs)
    assert caught.value.key == key


def test_status_describes_the_actor():
    with Runtime() as rt:
        fallback = rt.spawn(FallbackActor, NO_VALUE, fallback=lambda e, m: "x")
        assert fallback.ask(GetStatus(), timeout=5) == {
            "stage": "fallback",
            "mode": "callable",
            "successes": 0,
            "used": {"cache": 0, "value": 0, "callable": 0},
            "callable_failed": 0,
            "reraised": 0,
            "passed_through": 0,
            "routed": 0,
            "routed_by_source": {},
            "cache_size": 0,
            "cache_capacity": 0,
        }
        with pytest.raises(TypeError, match="does not handle str"):
            fallback.ask("hello", timeout=5)


# -- with_fallback (the seed's helper) ---------------------------------------------------------


def test_with_fallback_returns_a_successful_primary_as_it_is():
    result = {"status": "success", "data": 1}
    fallback_calls: list[Any] = []
    assert with_fallback(lambda: result, fallback_calls.append) is result
    assert with_fallback(lambda x, y=0: x + y, fallback_calls.append, 1, y=2) == 3
    assert with_fallback(lambda: {"id": 7}, fallback_calls.append) == {"id": 7}
    assert with_fallback(lambda: None, fallback_calls.append) is None
    assert fallback_calls == []


def test_with_fallback_runs_the_fallback_on_error_or_failed_status():
    cached = {"status": "success", "data": "cached"}
    calls: list[tuple[Any, ...]] = []

    def fallback(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append((args, kwargs))
        return cached

    def primary(user: int, *, region: str) -> dict[str, Any]:
        raise ConnectionError("api down")

    with capture_logs() as logs:
        result = with_fallback(primary, fallback, 42, region="eu")
        assert with_fallback(lambda: {"status": "error"}, lambda: {"status": "ok"}) == {
            "status": "ok",
            "used_fallback": True,
        }
    assert result == {"status": "success", "data": "cached", "used_fallback": True}
    assert "used_fallback" not in cached  # the fallback's own dict is not mutated
    assert calls == [((42,), {"region": "eu"})]
    failures = events(logs, "garrison.fallback.primary_failed")
    assert [f["error"] for f in failures] == ["ConnectionError: api down", "status 'error'"]
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["primary"].endswith("primary")


def test_with_fallback_wraps_a_non_dict_fallback_result():
    assert with_fallback(fail, lambda: 3) == {"result": 3, "used_fallback": True}


def test_with_fallback_reports_both_failures_as_the_seed_does():
    def fallback() -> Any:
        raise LookupError("no cache")

    with capture_logs() as logs:
        result = with_fallback(fail, fallback)
    assert result == {
        "status": "error",
        "error": "Both primary and fallback failed: no cache",
        "used_fallback": True,
        "primary_error": "ConnectionError: down",
    }
    assert events(logs, "garrison.fallback.both_failed")


class Interrupt(BaseException):
    pass


def test_with_fallback_lets_base_exceptions_through():
    def interrupted() -> Any:
        raise Interrupt

    with pytest.raises(Interrupt):
        with_fallback(interrupted, lambda: "never")


def test_awith_fallback_awaits_either_function():
    async def primary(x: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    async def fallback(x: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"status": "success", "x": x}

    async def ok(x: int) -> int:
        return x * 2

    async def broken(x: int) -> Any:
        raise LookupError("also down")

    async def main() -> list[Any]:
        return [
            await awith_fallback(primary, fallback, 5),
            await awith_fallback(ok, fallback, 5),
            await awith_fallback(primary, lambda x: x, 5),
            await awith_fallback(lambda x: {"status": "error"}, fallback, 1),
            await awith_fallback(primary, broken, 5),
        ]

    assert asyncio.run(main()) == [
        {"status": "success", "x": 5, "used_fallback": True},
        10,
        {"result": 5, "used_fallback": True},
        {"status": "success", "x": 1, "used_fallback": True},
        {
            "status": "error",
            "error": "Both primary and fallback failed: also down",
            "used_fallback": True,
            "primary_error": "ConnectionError: down",
        },
    ]


def test_awith_fallback_propagates_cancellation():
    async def main() -> None:
        gate = asyncio.Event()

        async def hang() -> Any:
            gate.set()
            await asyncio.Event().wait()

        fallback_calls: list[int] = []
        task = asyncio.create_task(awith_fallback(hang, lambda: fallback_calls.append(1)))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fallback_calls == []

    asyncio.run(main())
