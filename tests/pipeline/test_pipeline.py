"""Pipelines: the call API, message level, status, the fixed stage order, @protect, isolation."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import threading
from typing import Any

import pytest

from garrison import (
    BulkheadConfig,
    BulkheadFull,
    CircuitBreakerConfig,
    CircuitOpen,
    ConfigError,
    Execute,
    FallbackConfig,
    Future,
    OperationTimeout,
    Pipeline,
    PipelineView,
    Priority,
    RateLimitConfig,
    RateLimited,
    RetriesExhausted,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.pipeline import STAGE_ORDER
from garrison.testing import ManualClock


class Gate:
    """Operations that block until released, telling the test when they started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._started = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []

    def blocked(self, value: Any = "late") -> Any:
        self.threads.append(threading.current_thread())
        self._started.release()
        assert self.release.wait(10)
        return value

    def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert self._started.acquire(timeout=5)

    def release_abandoned(self, pipeline: Pipeline) -> None:
        """Release operations that all timed out, and wait for their retired workers to end.

        The bulkhead retires a worker stuck in a timed-out call; it ends when the call returns
        (the runtime does not wait for it), so the test waits before the leak check does.
        """
        settle(pipeline)  # the bulkhead has handled the Abandon: the workers are retired
        self.release.set()
        for thread in self.threads:
            thread.join(5)
            assert not thread.is_alive(), thread.name


def settle(pipeline: Pipeline) -> None:
    """Let every stage, outermost first, handle what was sent into the pipeline so far."""
    for stage in STAGE_ORDER:
        if stage in pipeline.stages:
            assert pipeline.stages[stage].settle(5)


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(error: BaseException) -> None:
    raise error


def test_pipeline_stages_read_the_runtimes_clock():
    with Runtime(name="probe", clock=ManualClock()) as runtime:
        probe = runtime.pipeline("probe", rate_limit=RateLimitConfig(per_second=1))
        probe.call(int)
        with pytest.raises(RateLimited) as limited:
            probe.call(int)
        assert limited.value.retry_after == 1.0  # no time passed on the runtime's clock


# -- call, submit, acall, options ---------------------------------------------------------------


def test_call_submit_and_acall_pass_args_and_kwargs_and_return_the_outcome(rt):
    api = rt.pipeline("api", circuit_breaker=CircuitBreakerConfig(), bulkhead=BulkheadConfig())
    assert api.call(add, 40, b=2) == 42
    future = api.submit(add, 1, 2)
    assert isinstance(future, Future)
    assert future.get(5) == 3
    assert future.done()

    async def main() -> tuple[int, int]:
        awaited = await api.submit(add, 5, b=5)
        return awaited, await api.acall(add, 20, b=1)

    assert asyncio.run(main()) == (10, 21)
    with pytest.raises(ZeroDivisionError):
        api.call(lambda: 1 / 0)
    with pytest.raises(ValueError, match="bad"):
        api.submit(fail, ValueError("bad")).get(5)


def test_options_build_the_execute_message_and_chain(rt):
    api = rt.pipeline("api")
    vip = api.options(key="client-7", priority="high", timeout=2.0, name="fetch", cost=2)
    assert isinstance(vip, PipelineView)
    message = vip.execute(add, 1, b=2)
    assert (message.fn, message.args, dict(message.kwargs)) == (add, (1,), {"b": 2})
    assert message.key == "client-7"
    assert message.priority is Priority.HIGH
    assert message.timeout == 2.0
    assert message.name == "fetch"
    assert message.cost == 2
    # options chain (what is not given is kept) and never change the pipeline itself
    low = vip.options(priority=Priority.LOW)
    assert (low.execute(add).key, low.execute(add).priority) == ("client-7", Priority.LOW)
    assert low.execute(add).name == "fetch"
    # None resets an option to its default
    reset = vip.options(key=None, timeout=None, priority=None, name=None, cost=None)
    cleared = reset.execute(add)
    assert (cleared.key, cleared.timeout, cleared.priority, cleared.cost) == (
        None,
        None,
        Priority.NORMAL,
        1,
    )
    assert cleared.name == "add"
    assert vip.options(timeout=None).execute(add).key == "client-7"
    plain = api.execute(add, 1)
    assert (plain.key, plain.priority, plain.timeout, plain.cost) == (
        None,
        Priority.NORMAL,
        None,
        1,
    )
    assert plain.name == add.__qualname__
    assert vip.call(add, 1, b=2) == 3
    with pytest.raises(ValueError, match="priority"):
        api.options(priority="urgent")
    with pytest.raises(ValueError, match="timeout"):
        api.options(timeout=-1.0).call(add, 1)


def test_the_key_option_selects_the_rate_limit_bucket(rt, clock):
    api = rt.pipeline("api", rate_limit=RateLimitConfig(per_second=1))
    assert api.options(key="a").call(add, 1) == 1
    with pytest.raises(RateLimited) as info:
        api.options(key="a").call(add, 2)
    assert info.value.key == "a"
    assert info.value.retry_after == 1.0
    assert api.options(key="b").call(add, 3) == 3
    assert api.status()["rate_limiter"]["keys"] == 2


def test_the_cost_option_counts_against_the_limit(rt):
    api = rt.pipeline("api", rate_limit=RateLimitConfig(per_second=3))
    assert api.options(cost=2).call(add, 1) == 1
    with pytest.raises(RateLimited):
        api.options(cost=2).call(add, 2)
    assert api.call(add, 3) == 3  # cost 1 still fits
    with pytest.raises(RateLimited):
        api.call(add, 4)


def test_the_priority_option_orders_waiting_operations(rt):
    api = rt.pipeline("api", bulkhead=BulkheadConfig(max_workers=1, max_queue=3))
    gate = Gate()
    order: list[str] = []
    blocked = api.submit(gate.blocked)
    gate.wait_started()
    futures = [api.options(priority=p).submit(order.append, p) for p in ("low", "normal", "high")]
    settle(api)
    assert api.status()["bulkhead"]["queued"] == 3
    gate.release.set()
    assert blocked.get(5) == "late"
    for future in futures:
        future.get(5)
    assert order == ["high", "normal", "low"]


def test_the_timeout_and_name_options_override_per_call(rt, clock):
    api = rt.pipeline("api", timeout=TimeoutConfig(base_timeout=30.0))
    gate = Gate()
    future = api.options(timeout=0.5, name="fetch-user:42").submit(gate.blocked)
    gate.wait_started()
    settle(api)
    clock.advance(0.5)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == 0.5
    assert info.value.operation == "fetch-user:42"
    gate.release_abandoned(api)


def test_the_name_option_names_the_operation_for_the_fallback(rt):
    seen: list[tuple[str, tuple[Any, ...]]] = []

    def substitute(error: BaseException, message: Execute) -> str:
        seen.append((message.name, message.args))
        return f"fallback for {message.name}"

    api = rt.pipeline("api", fallback=substitute)
    assert api.options(name="user:7").call(fail, KeyError(7)) == "fallback for user:7"
    assert api.call(fail, KeyError(8)) == f"fallback for {fail.__qualname__}"
    assert seen[0][0] == "user:7"
    assert isinstance(seen[0][1][0], KeyError)


def test_message_level_access_through_the_outermost_stage(rt):
    api = rt.pipeline(
        "api",
        rate_limit=RateLimitConfig(per_second=1),
        circuit_breaker=CircuitBreakerConfig(),
        fallback="n/a",
    )
    assert api.ref == api.stages["fallback"]
    assert api.ref.ask(Execute(add, args=(42,), kwargs={"b": 1}, key="client-7"), timeout=5) == 43
    # the same key is now over its limit: the rejection reaches the fallback, which answers it
    assert api.ref.ask(Execute(add, args=(1,), key="client-7"), timeout=5) == "n/a"
    future = api.ref.ask_future(Execute(add, args=(2,), key="client-8"))
    assert future.get(5) == 2
    bare = rt.pipeline("bare", retry=RetryConfig())
    assert bare.ref == bare.stages["retry"]
    assert rt.pipeline("pool").ref == rt.pipeline("pool").stages["bulkhead"]


# -- status and which stages are present --------------------------------------------------------

_OPTIONAL: dict[str, tuple[str, Any]] = {
    "fallback": ("fallback", "substitute"),
    "retry": ("retry", RetryConfig(max_attempts=2, base_delay=0.0, jitter=False)),
    "circuit_breaker": ("circuit_breaker", CircuitBreakerConfig(failure_threshold=100)),
    "rate_limit": ("rate_limiter", RateLimitConfig(per_second=100)),
    "timeout": ("timeout", TimeoutConfig(base_timeout=30.0)),
    "bulkhead": ("bulkhead", BulkheadConfig(max_workers=2, max_concurrent=1, max_queue=4)),
}
_SUBSETS = [
    subset
    for size in range(len(_OPTIONAL) + 1)
    for subset in itertools.combinations(_OPTIONAL, size)
]


@pytest.mark.parametrize("subset", _SUBSETS, ids=lambda s: "+".join(s) or "nothing")
def test_any_stage_may_be_left_out_and_status_has_one_entry_per_stage(clock, subset):
    with Runtime(clock=clock) as rt:
        api = rt.pipeline("api", **{key: _OPTIONAL[key][1] for key in subset})
        # operations always run on a pool: the default one when no bulkhead is configured
        present = {_OPTIONAL[key][0] for key in subset} | {"bulkhead"}
        expected = [stage for stage in STAGE_ORDER if stage in present]
        assert list(api.stages) == expected
        assert api.ref == api.stages[expected[0]]
        status = api.status()
        assert list(status) == expected
        for stage, entry in status.items():
            assert entry["stage"] == stage
        pool = status["bulkhead"]
        if "bulkhead" in subset:
            assert (pool["max_workers"], pool["max_concurrent"], pool["max_queue"]) == (2, 1, 4)
        else:
            assert (pool["max_workers"], pool["max_queue"]) == (10, 1000)
        assert api.call(add, 1, b=2) == 3
        if "fallback" in subset:
            assert api.call(fail, ConnectionError("down")) == "substitute"
        else:
            with pytest.raises((ConnectionError, RetriesExhausted)):
                api.call(fail, ConnectionError("down"))
        assert (rt.breakers.get("api") is not None) == ("circuit_breaker" in subset)


def test_breaker_states_read_as_strings_in_status(rt, clock):
    api = rt.pipeline(
        "api", circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=10)
    )
    handle = rt.breakers.get("api")
    assert handle is not None

    def state() -> Any:
        value = api.status()["circuit_breaker"]["state"]
        assert type(value) is str
        return value

    assert state() == "closed"
    with pytest.raises(ValueError, match="boom"):
        api.call(fail, ValueError("boom"))
    assert state() == "open"
    clock.advance(10)
    assert state() == "half_open"
    assert api.call(add, 1) == 1
    assert state() == "closed"
    assert handle.force_open() == "forced_open"
    assert state() == "forced_open"
    assert handle.disable() == "disabled"
    assert state() == "disabled"
    assert handle.reset() == "closed"
    assert state() == "closed"


# -- the fixed order of stages ------------------------------------------------------------------


def test_the_fallback_answers_a_circuit_open(rt):
    errors: list[BaseException] = []
    calls: list[int] = []

    def substitute(error: BaseException, message: Execute) -> str:
        errors.append(error)
        return "cached"

    api = rt.pipeline("api", circuit_breaker=CircuitBreakerConfig(), fallback=substitute)
    handle = rt.breakers.get("api")
    assert handle is not None
    handle.force_open()
    assert api.call(calls.append, 1) == "cached"
    assert calls == []
    assert len(errors) == 1
    assert isinstance(errors[0], CircuitOpen)
    assert "Circuit breaker is OPEN" in str(errors[0])


def test_retry_happens_inside_the_fallback(rt):
    errors: list[BaseException] = []
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    def substitute(error: BaseException, message: Execute) -> str:
        errors.append(error)
        return "fallback"

    api = rt.pipeline(
        "api",
        retry=RetryConfig(max_attempts=3, base_delay=0.0, jitter=False),
        fallback=substitute,
    )
    assert api.call(flaky) == "fallback"
    assert len(attempts) == 3  # every attempt was made before the fallback was asked
    (error,) = errors
    assert isinstance(error, RetriesExhausted)
    assert error.attempts == 3
    assert isinstance(error.last_error, ConnectionError)


def test_the_breaker_counts_a_timeout_as_a_failure(rt, clock):
    api = rt.pipeline(
        "api",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60),
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
    )
    gate = Gate()
    future = api.submit(gate.blocked)
    gate.wait_started()
    settle(api)
    clock.advance(1.0)
    with pytest.raises(OperationTimeout):
        future.get(5)
    status = api.status()["circuit_breaker"]
    assert (status["state"], status["failures"]) == ("open", 1)
    with pytest.raises(CircuitOpen):
        api.call(add, 1)
    gate.release_abandoned(api)


def test_the_breaker_is_outside_the_rate_limiter(rt):
    api = rt.pipeline(
        "api",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1),
        rate_limit=RateLimitConfig(per_second=1),
    )
    assert api.call(add, 1) == 1
    with pytest.raises(RateLimited):
        api.call(add, 2)
    # a rate-limit rejection says nothing about the service: the breaker stays closed
    assert api.status()["circuit_breaker"]["state"] == "closed"
    handle = rt.breakers.get("api")
    assert handle is not None
    handle.force_open()
    with pytest.raises(CircuitOpen):
        api.call(add, 3)
    # refused by the breaker before the limiter saw it: no slot was spent or refused
    limiter = api.status()["rate_limiter"]
    assert (limiter["admitted"], limiter["rejected"]) == (1, 1)


def test_rate_limiting_happens_before_the_timeout_starts(rt, clock):
    api = rt.pipeline(
        "api",
        rate_limit=RateLimitConfig(per_second=1, on_limit="wait"),
        timeout=TimeoutConfig(base_timeout=2.0, adaptive=False),
    )
    assert api.call(add, 1) == 1  # takes the only slot of the second starting at t=0
    gate = Gate()
    future = api.submit(gate.blocked)
    settle(api)
    assert api.status()["rate_limiter"]["waiting"] == 1
    clock.advance(1.0)  # the slot frees: admitted at t=1, so its timeout runs until t=3
    gate.wait_started()
    settle(api)
    clock.advance(1.5)  # t=2.5: two seconds after the call was made, but not after admission
    assert not future.done()
    clock.advance(0.5)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == 2.0
    gate.release_abandoned(api)


def test_the_timeout_covers_the_wait_for_a_bulkhead_slot(rt, clock):
    api = rt.pipeline(
        "api",
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=1, max_queue=1),
    )
    gate = Gate()
    running = api.options(timeout=10.0).submit(gate.blocked)
    gate.wait_started()
    queued = api.submit(add, 1)
    settle(api)
    assert api.status()["bulkhead"]["queued"] == 1
    clock.advance(1.0)
    with pytest.raises(OperationTimeout):
        queued.get(5)
    settle(api)
    assert api.status()["bulkhead"]["queued"] == 0  # the timed-out operation left the queue
    gate.release.set()
    assert running.get(5) == "late"


def test_each_retry_attempt_gets_its_own_timeout(rt, clock):
    api = rt.pipeline(
        "api",
        retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
    )
    gate = Gate()
    attempts: list[float] = []

    def first_attempt_hangs() -> Any:
        attempts.append(clock.monotonic())
        if len(attempts) == 1:
            return gate.blocked()
        return "second"

    future = api.submit(first_attempt_hangs)
    gate.wait_started()
    settle(api)
    clock.advance(1.0)  # the first attempt times out (a TimeoutError): retried at once
    assert future.get(5) == "second"
    assert attempts == [0.0, 1.0]
    assert api.status()["timeout"]["timeouts"] == 1
    gate.release_abandoned(api)


# -- the runtime's pipelines and breakers -------------------------------------------------------


def test_rt_pipeline_returns_the_existing_one_and_refuses_to_rebuild_it(rt):
    api = rt.pipeline("api", retry=RetryConfig())
    assert rt.pipeline("api") is api
    assert rt.pipelines() == {"api": api}
    with pytest.raises(ValueError, match="already exists"):
        rt.pipeline("api", retry=RetryConfig())
    with pytest.raises(ValueError, match="already exists"):
        rt.pipeline("api", fallback="x")
    assert rt.pipeline("api") is api
    assert list(api.stages) == ["retry", "bulkhead"]
    with pytest.raises(ValueError, match="pipeline name"):
        rt.pipeline("a/b")
    assert api.name == "api"


def test_rt_breakers_get_is_the_pipelines_breaker(rt):
    api = rt.pipeline("api", circuit_breaker=CircuitBreakerConfig(failure_threshold=2))
    handle = rt.breakers.get("api")
    assert handle is not None
    assert handle.ref == api.stages["circuit_breaker"]
    assert handle.config == CircuitBreakerConfig(failure_threshold=2)
    assert rt.breakers.get_or_create("api") is handle
    handle.force_open()
    with pytest.raises(CircuitOpen):
        api.call(add, 1)
    handle.force_close()
    for _ in range(2):
        with pytest.raises(ValueError, match="x"):
            api.call(fail, ValueError("x"))
    assert handle.get_status()["state"] == "open"
    assert handle.get_status()["failures"] == api.status()["circuit_breaker"]["failures"] == 2
    assert rt.pipeline("other").stages.keys() == {"bulkhead"}
    assert rt.breakers.get("other") is None


def test_concurrent_callers_of_rt_pipeline_get_the_same_pipeline(rt):
    callers = 8
    barrier = threading.Barrier(callers)
    results: list[Any] = []

    def get() -> None:
        barrier.wait(5)
        try:
            results.append(rt.pipeline("shared"))
        except Exception as error:
            results.append(error)

    threads = [threading.Thread(target=get) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [r for r in results if not isinstance(r, Pipeline)] == []
    assert all(r is results[0] for r in results)


def test_a_pipeline_that_cannot_be_built_raises_its_config_error_and_harms_nothing(rt):
    other = rt.pipeline("other")
    with pytest.raises(ConfigError):
        rt.pipeline("api", circuit_breaker=CircuitBreakerConfig(), fallback=FallbackConfig())
    assert rt.state == "running"
    assert other.call(add, 1) == 1
    assert rt.pipelines() == {"other": other}
    assert rt.breakers.get("api") is None
    assert rt.pipeline("api", circuit_breaker=CircuitBreakerConfig()).call(add, 1) == 1


def test_read_your_writes_through_a_whole_pipeline(rt):
    calls: list[int] = []
    errors: list[type[BaseException]] = []

    def failing(i: int) -> None:
        calls.append(i)
        raise ConnectionError(f"down {i}")

    def substitute(error: BaseException, message: Execute) -> str:
        errors.append(type(error))
        return "fallback"

    plain = rt.pipeline(
        "plain",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, recovery_timeout=30),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=BulkheadConfig(max_workers=4),
    )
    protected = rt.pipeline(
        "protected",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, recovery_timeout=30),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=BulkheadConfig(max_workers=4),
        fallback=substitute,
    )
    for round_ in range(10):  # no settling anywhere: each caller sees the state it produced
        for i in range(3):
            with pytest.raises(ConnectionError):
                plain.call(failing, i)
        with pytest.raises(CircuitOpen):
            plain.call(failing, 3)
        assert [protected.call(failing, i) for i in range(4)] == ["fallback"] * 4
        assert calls == [0, 1, 2, 0, 1, 2]
        assert errors == [ConnectionError] * 3 + [CircuitOpen]
        calls.clear()
        errors.clear()
        for name in ("plain", "protected"):
            handle = rt.breakers.get(name)
            assert handle is not None
            assert handle.reset() == "closed", round_


# -- asyncio ------------------------------------------------------------------------------------


def test_acall_keeps_the_event_loop_ticking(rt):
    api = rt.pipeline("api")
    started = threading.Event()
    release = threading.Event()
    ticks = 0

    def slow() -> bool:
        started.set()
        return release.wait(10)

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            if ticks >= 20 and started.is_set():
                release.set()  # only a ticking loop can ever let the operation finish
            await asyncio.sleep(0)

    async def main() -> bool:
        task = asyncio.create_task(ticker())
        result = await api.acall(slow)
        await task
        return result

    assert asyncio.run(main()) is True
    assert ticks >= 20


def test_coroutine_operations_run_through_pipelines(rt):
    api = rt.pipeline(
        "api",
        retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
        circuit_breaker=CircuitBreakerConfig(),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=BulkheadConfig(max_workers=2),
    )
    attempts: list[int] = []

    async def add_async(a: int, b: int = 0) -> int:
        await asyncio.sleep(0)
        return a + b

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("first")
        return "second"

    async def broken() -> None:
        raise KeyError("nope")

    assert api.call(add_async, 1, b=2) == 3
    assert api.submit(add_async, 2, 2).get(5) == 4
    assert asyncio.run(api.acall(add_async, 3, b=3)) == 6
    assert api.call(flaky) == "second"
    assert len(attempts) == 2
    with pytest.raises(KeyError):
        api.call(broken)


def test_a_timed_out_coroutine_is_cancelled(rt, clock):
    api = rt.pipeline("api", timeout=TimeoutConfig(base_timeout=1.0, adaptive=False))
    entered, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = api.submit(forever)
    assert entered.wait(5)
    settle(api)
    clock.advance(1.0)
    with pytest.raises(OperationTimeout):
        future.get(5)
    assert cancelled.wait(5)


def test_coroutines_count_against_the_bulkhead(rt):
    api = rt.pipeline("api", bulkhead=BulkheadConfig(max_workers=1, max_concurrent=2))
    waiting_events: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    entered = threading.Semaphore(0)

    async def waiting(i: int) -> int:
        event = asyncio.Event()
        waiting_events.append((asyncio.get_running_loop(), event))
        entered.release()
        await event.wait()
        return i

    futures = [api.submit(waiting, i) for i in range(2)]
    for _ in range(2):
        assert entered.acquire(timeout=5)
    # two coroutines run at once on a bulkhead of one worker; a third operation is refused
    assert api.status()["bulkhead"]["in_use"] == 2
    assert api.status()["bulkhead"]["idle_workers"] == 1
    with pytest.raises(BulkheadFull):
        api.call(add, 1)
    for loop, event in waiting_events:
        loop.call_soon_threadsafe(event.set)
    assert [f.get(5) for f in futures] == [0, 1]


# -- @protect -----------------------------------------------------------------------------------


def test_protect_a_sync_function(rt):
    api = rt.pipeline("api", fallback=FallbackConfig(cache_last_success=True))

    def fetch_user(user_id: int, *, verbose: bool = False) -> dict[str, Any]:
        """Fetch one user."""
        if user_id < 0:
            raise LookupError(user_id)
        return {"id": user_id, "verbose": verbose}

    protected = api.protect(fetch_user)
    assert protected(7, verbose=True) == {"id": 7, "verbose": True}
    # the operation is named after the function: the cache answers the failure
    assert protected(-1) == {"id": 7, "verbose": True}
    assert protected.__name__ == "fetch_user"
    assert protected.__qualname__ == fetch_user.__qualname__
    assert protected.__doc__ == "Fetch one user."
    assert protected.__wrapped__ is fetch_user  # type: ignore[attr-defined]
    assert inspect.signature(protected) == inspect.signature(fetch_user)
    assert not inspect.iscoroutinefunction(protected)
    unprotected_errors = rt.pipeline("plain").protect(fetch_user)
    with pytest.raises(LookupError):
        unprotected_errors(-1)
    assert unprotected_errors(1) == {"id": 1, "verbose": False}


def test_protect_an_async_function(rt):
    api = rt.pipeline("api")

    async def fetch(user_id: int, suffix: str = "") -> str:
        """Fetch asynchronously."""
        if user_id < 0:
            raise LookupError(user_id)
        await asyncio.sleep(0)
        return f"user-{user_id}{suffix}"

    protected = api.protect(fetch)
    assert inspect.iscoroutinefunction(protected)
    assert protected.__name__ == "fetch"
    assert protected.__doc__ == "Fetch asynchronously."
    assert inspect.signature(protected) == inspect.signature(fetch)

    async def main() -> str:
        with pytest.raises(LookupError):
            await protected(-1)
        return await protected(3, suffix="!")

    assert asyncio.run(main()) == "user-3!"


def test_protect_as_a_decorator_names_operations_after_the_function(rt, clock):
    api = rt.pipeline("api", timeout=TimeoutConfig(base_timeout=1.0, adaptive=False))
    gate = Gate()

    @api.protect
    def slow() -> Any:
        return gate.blocked()

    named = api.options(name="custom").protect(gate.blocked)
    errors: list[OperationTimeout] = []
    for fn in (slow, named):
        done = threading.Event()

        def run(fn: Any = fn, done: threading.Event = done) -> None:
            try:
                fn()
            except OperationTimeout as error:
                errors.append(error)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        gate.wait_started()
        settle(api)
        clock.advance(1.0)
        assert done.wait(5)
        thread.join(5)
    assert [e.operation for e in errors] == [slow.__qualname__, "custom"]
    gate.release_abandoned(api)


def test_protect_accepts_a_partial(rt):
    api = rt.pipeline("api")
    partial = functools.partial(add, 10)
    protected = api.protect(partial)
    assert protected(5) == 15


# -- isolation and shutdown ---------------------------------------------------------------------


def test_a_saturated_bulkhead_does_not_slow_another_pipeline(rt):
    slow = rt.pipeline("slow", bulkhead=BulkheadConfig(max_workers=2, max_queue=2))
    fast = rt.pipeline("fast", bulkhead=BulkheadConfig(max_workers=2))
    gate = Gate()
    stuck = [slow.submit(gate.blocked, i) for i in range(2)]
    gate.wait_started(2)
    queued = [slow.submit(add, i) for i in range(2)]
    with pytest.raises(BulkheadFull) as info:
        slow.call(add, 99)
    assert info.value.name == "slow"
    assert [fast.call(add, i, b=i) for i in range(50)] == [2 * i for i in range(50)]
    assert not any(f.done() for f in queued)
    status = slow.status()["bulkhead"]
    assert (status["in_use"], status["queued"], status["rejected"]) == (2, 2, 1)
    assert fast.status()["bulkhead"]["completed"] == 50
    gate.release.set()
    assert [f.get(5) for f in stuck] == [0, 1]
    assert [f.get(5) for f in queued] == [0, 1]


@pytest.mark.parametrize("fused", [True, False])
def test_no_thread_is_left_after_stop(fused: bool):
    before = set(threading.enumerate())
    rt = Runtime(name="stopping").start()
    api = rt.pipeline(
        "api",
        fused=fused,
        retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=600),
        rate_limit=RateLimitConfig(per_second=100),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=BulkheadConfig(max_workers=3),
        fallback="n/a",
    )

    async def coro() -> int:
        return 1

    assert api.call(coro) == 1  # starts the event-loop thread
    assert api.call(fail, ValueError("x")) == "n/a"  # opens the breaker: a timer is armed
    assert api.status()["circuit_breaker"]["state"] == "open"
    # runtime + pipeline supervisors, scheduler, loop, 3 workers, the host or six stages
    assert len(set(threading.enumerate()) - before) == (8 if fused else 13)
    rt.stop()
    assert rt.state == "stopped"
    left = set(threading.enumerate()) - before
    for thread in left:
        thread.join(5)
    assert [t.name for t in left if t.is_alive()] == []


@pytest.mark.parametrize("fused", [True, False])
def test_a_pipeline_takes_over_a_breaker_made_before_it(rt, fused):
    config = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60)
    handle = rt.breakers.get_or_create("api", config)
    with pytest.raises(ValueError, match="x"):
        handle.call(fail, ValueError("x"))  # opens the standalone breaker
    assert handle.get_status()["state"] == "open"
    with pytest.raises(ValueError, match="different config"):
        rt.pipeline("api", fused=fused, circuit_breaker=CircuitBreakerConfig())
    api = rt.pipeline("api", fused=fused, circuit_breaker=config)
    # the same handle now reaches the pipeline's breaker stage, which started open
    assert rt.breakers.get("api") is handle
    assert handle.ref == api.stages["circuit_breaker"]
    with pytest.raises(CircuitOpen):
        api.call(add, 1)
    assert api.status()["circuit_breaker"]["state"] == "open"
    handle.force_close()
    assert api.call(add, 1) == 1
    # the standalone breaker actor is gone from the tree
    names = [child["name"] for child in rt.tree()["children"]]
    assert "breaker:api" not in names
    with pytest.raises(ValueError, match="already exists"):
        rt.pipeline("api", circuit_breaker=config)
