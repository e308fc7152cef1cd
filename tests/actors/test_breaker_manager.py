"""CircuitBreakerManager and its handles: the seed document's API, working for real."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from garrison import ActorUnavailable, AskTimeout, CircuitOpen, Execute, Runtime
from garrison.actors.breaker import Report
from garrison.breakers import CircuitBreakerHandle, CircuitBreakerManager
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.testing import ManualClock


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("down")


@pytest.fixture
def manager() -> Iterator[CircuitBreakerManager]:
    breakers = CircuitBreakerManager(clock=ManualClock())
    try:
        yield breakers
    finally:
        breakers.stop()


# -- the seed document's example ------------------------------------------------------------


SEED_CONFIGS = {
    "external_api": CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=30, error_rate_threshold=0.5, min_calls=10
    ),
    "database": CircuitBreakerConfig(
        failure_threshold=3, recovery_timeout=60, error_rate_threshold=0.3, min_calls=5
    ),
    "cache": CircuitBreakerConfig(
        failure_threshold=10, recovery_timeout=10, error_rate_threshold=0.7, min_calls=20
    ),
}


def seed_breakers(cb_manager: CircuitBreakerManager) -> dict[str, CircuitBreakerHandle]:
    circuit_breakers = {}
    for service, config in SEED_CONFIGS.items():
        circuit_breakers[service] = cb_manager.get_or_create(service, config)
    return circuit_breakers


def outcome_of(
    circuit_breaker: CircuitBreakerHandle, run: Callable[[], Any]
) -> dict[str, Any]:  # the seed's result shaping, shared by the sync and async versions
    try:
        result = run()
        return {
            "status": "success",
            "result": result,
            "circuit_state": circuit_breaker.get_status()["state"],
        }
    except Exception as e:
        if "Circuit breaker is OPEN" in str(e):
            return {
                "status": "circuit_open",
                "error": "Service temporarily unavailable",
                "circuit_state": "OPEN",
                "retry_after": circuit_breaker.get_status().get("recovery_timeout", 30),
            }
        return {
            "status": "error",
            "error": str(e),
            "circuit_state": circuit_breaker.get_status()["state"],
        }


def test_the_seed_example_synchronously():
    with CircuitBreakerManager() as cb_manager:
        circuit_breakers = seed_breakers(cb_manager)

        def protected_operation(service_name: str, operation_func, *args, **kwargs):
            circuit_breaker = circuit_breakers.get(service_name)
            if not circuit_breaker:
                raise ValueError(f"No circuit breaker configured for service: {service_name}")
            return outcome_of(
                circuit_breaker, lambda: circuit_breaker.call(operation_func, *args, **kwargs)
            )

        assert protected_operation("cache", lambda key: f"v:{key}", "k") == {
            "status": "success",
            "result": "v:k",
            "circuit_state": "closed",
        }
        for _ in range(3):
            assert protected_operation("database", fail)["status"] == "error"
        assert protected_operation("database", lambda: "never") == {
            "status": "circuit_open",
            "error": "Service temporarily unavailable",
            "circuit_state": "OPEN",
            "retry_after": 60.0,
        }
        # the other services are unaffected
        assert protected_operation("external_api", lambda: 1)["circuit_state"] == "closed"
        with pytest.raises(ValueError, match="No circuit breaker configured"):
            protected_operation("mail", lambda: 1)
        assert cb_manager.names() == ["external_api", "database", "cache"]


def test_the_seed_example_with_asyncio():
    with CircuitBreakerManager() as cb_manager:
        circuit_breakers = seed_breakers(cb_manager)

        async def protected_operation(service_name: str, operation_func, *args, **kwargs):
            """The seed's code as written: ``await circuit_breaker.call(lambda: ...)``."""
            circuit_breaker = circuit_breakers[service_name]
            try:
                result = await circuit_breaker.call(lambda: operation_func(*args, **kwargs))
                return {"status": "success", "result": result}
            except Exception as e:
                if "Circuit breaker is OPEN" in str(e):
                    return {
                        "status": "circuit_open",
                        "retry_after": circuit_breaker.get_status().get("recovery_timeout", 30),
                    }
                return {"status": "error", "error": str(e)}

        async def afetch(key: str) -> str:
            await asyncio.sleep(0)
            return f"row:{key}"

        async def afail() -> None:
            await asyncio.sleep(0)
            raise Boom("db down")

        async def seed_flow() -> list[dict[str, Any]]:
            results = [await protected_operation("database", afetch, "1")]
            results += [await protected_operation("database", afail) for _ in range(3)]
            results.append(await protected_operation("database", afetch, "2"))
            with pytest.raises(CircuitOpen, match="Circuit breaker is OPEN"):
                await circuit_breakers["database"].acall(afetch, "3")
            results.append(await protected_operation("cache", afetch, "4"))
            results.append({"acall": await circuit_breakers["cache"].acall(afetch, "5")})
            return results

        assert asyncio.run(seed_flow()) == [
            {"status": "success", "result": "row:1"},
            {"status": "error", "error": "db down"},
            {"status": "error", "error": "db down"},
            {"status": "error", "error": "db down"},
            {"status": "circuit_open", "retry_after": 60.0},
            {"status": "success", "result": "row:4"},
            {"acall": "row:5"},
        ]


# -- handles ----------------------------------------------------------------------------------


def test_get_or_create_gives_one_handle_per_name_across_threads(manager):
    barrier = threading.Barrier(8, timeout=5)
    handles: list[CircuitBreakerHandle] = []

    def create() -> None:
        barrier.wait()
        handles.append(manager.get_or_create("api", CircuitBreakerConfig(failure_threshold=2)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(handles) == 8
    assert all(h is handles[0] for h in handles)
    assert manager.get("api") is handles[0]
    assert manager.get("other") is None
    assert manager.get_or_create("api") is handles[0]  # no config: whatever it has
    children = [c["name"] for c in manager.runtime.tree()["children"]]
    assert children == ["breaker:api"]


def test_a_different_config_for_an_existing_name_is_an_error(manager):
    manager.get_or_create("payments", CircuitBreakerConfig(failure_threshold=2))
    assert manager.get_or_create("payments", CircuitBreakerConfig(failure_threshold=2))
    with pytest.raises(ValueError, match="'payments'"):
        manager.get_or_create("payments", CircuitBreakerConfig(failure_threshold=3))
    with pytest.raises(ValueError, match="name"):
        manager.get_or_create("a/b")
    with pytest.raises(TypeError, match="CircuitBreakerConfig"):
        manager.get_or_create("x", {"failure_threshold": 1})  # type: ignore[arg-type]


def test_three_failures_then_the_fourth_call_is_rejected_without_running(manager):
    db = manager.get_or_create("db", CircuitBreakerConfig(failure_threshold=3))
    for _ in range(3):
        with pytest.raises(Boom):
            db.call(fail)
    ran = []
    with pytest.raises(CircuitOpen, match="Circuit breaker is OPEN") as info:
        db.call(ran.append, 1)
    assert ran == []
    assert (info.value.service, info.value.state, info.value.retry_after) == ("db", "open", 30.0)


def test_concurrent_callers_are_never_serialised(manager):
    barrier = threading.Barrier(4, timeout=5)
    api = manager.get_or_create("api")
    results: list[Any] = []

    def caller(i: int) -> None:
        # each call waits for the other three inside the protected function: a breaker that
        # held a lock across the call (as pybreaker does) would break the barrier
        results.append(api.call(lambda: (barrier.wait(), i)[1]))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1, 2, 3]
    assert api.get_status()["calls"] == 4


def test_recovery_through_a_handle_on_a_manual_clock():
    clock = ManualClock()
    with CircuitBreakerManager(clock=clock) as breakers:
        api = breakers.get_or_create(
            "api", CircuitBreakerConfig(failure_threshold=1, recovery_timeout=10)
        )
        with pytest.raises(Boom):
            api.call(fail)
        status = api.get_status()
        assert (status["state"], status["retry_after"], status["recovery_timeout"]) == (
            "open",
            10.0,
            10.0,
        )
        clock.advance(10)
        assert api.get_status()["state"] == "half_open"
        assert api.call(lambda: 5) == 5
        assert api.get_status()["state"] == "closed"


def test_durations_come_from_the_injected_clock():
    clock = ManualClock()
    config = CircuitBreakerConfig(
        failure_threshold=5, min_calls=1, window_size=1, slow_call_duration=2.0
    )

    def slow() -> str:
        clock.advance(3.0)
        return "slow"

    with CircuitBreakerManager(clock=clock) as breakers:
        api = breakers.get_or_create("api", config)
        assert api.call(slow) == "slow"
        status = api.get_status()
        assert (status["state"], status["slow_calls"]) == ("open", 1)


def test_manual_control_and_status(manager):
    api = manager.get_or_create("api")
    assert api.force_open() == "forced_open"
    with pytest.raises(CircuitOpen, match="forced_open"):
        api.call(lambda: 1)
    assert api.force_close() == "closed"
    assert api.call(lambda: 1) == 1
    assert api.disable() == "disabled"
    assert api.reset() == "closed"
    assert api.name == "api"
    assert api.ref.is_alive()
    assert api.config == CircuitBreakerConfig()
    manager.get_or_create("db")
    status = manager.status()
    assert list(status) == ["api", "db"]
    assert status["api"]["state"] == "closed"
    assert status["api"]["service"] == "api"
    assert {"state", "recovery_timeout", "retry_after", "error_rate"} <= set(status["db"])


def test_handles_and_execute_messages_share_one_breaker(manager):
    api = manager.get_or_create("api", CircuitBreakerConfig(failure_threshold=2))
    with pytest.raises(Boom):
        api.call(fail)
    with pytest.raises(Boom):
        api.ref.ask(Execute(fail), timeout=5)
    with pytest.raises(CircuitOpen):
        api.call(lambda: 1)


def test_an_error_report_for_a_rejection_from_a_nested_breaker_is_ignored(manager):
    outer = manager.get_or_create("outer", CircuitBreakerConfig(failure_threshold=1))
    inner = manager.get_or_create("inner")
    inner.force_open()
    for _ in range(3):
        with pytest.raises(CircuitOpen) as info:
            outer.call(inner.call, lambda: 1)
        assert info.value.service == "inner"
    assert outer.get_status()["state"] == "closed"


# -- asyncio ----------------------------------------------------------------------------------


def test_acall_runs_coroutines_and_plain_functions_and_records_outcomes(manager):
    api = manager.get_or_create("api", CircuitBreakerConfig(failure_threshold=2))

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def afail() -> None:
        raise Boom("async down")

    async def main() -> list[Any]:
        results: list[Any] = [await api.acall(double, 21), await api.acall(lambda x: x + 1, 1)]
        for _ in range(2):
            with pytest.raises(Boom):
                await api.acall(afail)
        with pytest.raises(CircuitOpen):
            await api.acall(double, 1)
        return results

    assert asyncio.run(main()) == [42, 2]


def test_acall_never_blocks_the_event_loop():
    release = threading.Event()
    with CircuitBreakerManager(clock=ManualClock(), timeout=5) as breakers:
        api = breakers.get_or_create("api")
        # keep the breaker actor busy: with no downstream it runs this in its own thread
        busy = api.ref.ask_future(Execute(lambda: release.wait(5)))

        async def main() -> list[str]:
            order: list[str] = []

            async def other_work() -> None:
                for _ in range(3):
                    await asyncio.sleep(0)
                order.append("loop ran while acall waited")
                release.set()

            call = asyncio.ensure_future(api.acall(lambda: "done"))
            await other_work()
            order.append(await call)
            return order

        assert asyncio.run(main()) == ["loop ran while acall waited", "done"]
        assert busy.get(5) is True


def test_a_cancelled_acall_frees_its_half_open_probe():
    clock = ManualClock()
    config = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=10)
    with CircuitBreakerManager(clock=clock) as breakers:
        api = breakers.get_or_create("api", config)
        with pytest.raises(Boom):
            api.call(fail)
        clock.advance(10)

        async def main() -> None:
            entered = asyncio.Event()

            async def hang() -> None:
                entered.set()
                await asyncio.sleep(60)

            task = asyncio.ensure_future(api.acall(hang))
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        # the cancellation was reported (ignored: it says nothing of the service)
        assert api.ref.settle(5)
        status = api.get_status()
        assert (status["state"], status["half_open_in_flight"]) == ("half_open", 0)
        assert api.call(lambda: "probe") == "probe"
        assert api.get_status()["state"] == "closed"


# -- lifecycle --------------------------------------------------------------------------------


def test_a_standalone_manager_owns_its_runtime_until_stop():
    breakers = CircuitBreakerManager(clock=ManualClock())
    assert breakers.runtime.state == "new"  # started on first use
    api = breakers.get_or_create("api")
    assert breakers.runtime.state == "running"
    breakers.stop()
    breakers.stop()  # idempotent
    assert breakers.runtime.state == "stopped"
    with pytest.raises(ActorUnavailable):
        api.call(lambda: 1)
    with pytest.raises(RuntimeError, match="stopped"):
        breakers.get_or_create("api")
    assert breakers.names() == []


def test_a_manager_on_a_runtime_spawns_supervised_breakers_and_stops_only_them():
    clock = ManualClock()
    seen: list[tuple[str, ...]] = []
    with Runtime(clock=clock) as rt:
        breakers = CircuitBreakerManager(rt, listeners=[lambda *a: seen.append(a)])
        try:
            api = breakers.get_or_create("api", CircuitBreakerConfig(failure_threshold=1))
            (child,) = rt.tree()["children"]
            assert (child["name"], child["restart"]) == ("breaker:api", "permanent")
            with pytest.raises(Boom):
                api.call(fail)
            assert seen == [("api", "closed", "open", "failure_threshold")]
        finally:
            breakers.stop()
        assert rt.tree()["children"] == []
        assert rt.state == "running"


def test_a_crashed_breaker_is_restarted_by_the_runtime_in_the_state_it_had():
    clock = ManualClock()
    with capture_logs() as logs, Runtime(clock=clock) as rt:
        breakers = CircuitBreakerManager(rt)
        try:
            api = breakers.get_or_create("api", CircuitBreakerConfig(failure_threshold=1))
            with pytest.raises(Boom):
                api.call(fail)
            # a malformed report is a bug in the actor's caller: the actor crashes on it
            with pytest.raises(AttributeError):
                api.ref.ask(Report("not a permit", True), timeout=5)  # type: ignore[arg-type]
            assert rt.supervisor.settle(5)
            assert rt.tree()["children"][0]["restarts"] == 1
            assert api.get_status()["state"] == "open"
            with pytest.raises(CircuitOpen):
                api.call(lambda: 1)
        finally:
            breakers.stop()
    assert "garrison.supervisor.restarted" in [e["event"] for e in logs]


def test_a_failed_report_never_masks_the_calls_own_outcome():
    breakers = CircuitBreakerManager(clock=ManualClock(), timeout=5)
    try:
        api = breakers.get_or_create("api")
        runtime = breakers.runtime

        def stop_everything() -> str:
            runtime.stop()  # the breaker goes away while the call runs
            return "result"

        with capture_logs() as logs:
            assert api.call(stop_everything) == "result"
        assert [e["event"] for e in logs if e["event"] == "garrison.breaker.report_failed"] == [
            "garrison.breaker.report_failed"
        ]
    finally:
        breakers.stop()


def test_argument_checks():
    rt = Runtime(clock=ManualClock())
    with pytest.raises(ValueError, match="clock"):
        CircuitBreakerManager(rt, clock=ManualClock())
    with pytest.raises(ValueError, match="timeout"):
        CircuitBreakerManager(timeout=0)
    assert CircuitBreakerManager(rt, clock=rt.clock).runtime is rt


def test_an_ask_timeout_is_reported_as_such_to_async_callers():
    release = threading.Event()
    with CircuitBreakerManager(clock=ManualClock(), timeout=0.05) as breakers:
        api = breakers.get_or_create("api")
        busy = api.ref.ask_future(Execute(lambda: release.wait(5)))
        try:
            with pytest.raises(AskTimeout):
                asyncio.run(api.acall(lambda: 1))
        finally:
            release.set()
        assert busy.get(5) is True
