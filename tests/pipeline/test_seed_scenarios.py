"""The seed document's scenarios, end to end through pipelines, on a ManualClock where time matters.

Each test follows one section of ``seed/reliability-patterns.md``: rate-limited calls with
priorities, retry with exponential backoff, retry with a circuit breaker, per-service breaker
configs, bulkhead isolation, adaptive timeouts with variable latency, fallbacks.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from garrison import (
    AdaptiveTimeout,
    BulkheadConfig,
    BulkheadFull,
    CircuitBreakerConfig,
    CircuitOpen,
    Execute,
    FallbackConfig,
    OperationTimeout,
    Pipeline,
    RateLimitConfig,
    RetriesExhausted,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.pipeline import STAGE_ORDER
from garrison.testing import ManualClock


class Events:
    """A structlog processor that lets a test wait until an event has been logged n times."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.counts: Counter[str] = Counter()

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        with self._changed:
            self.counts[event["event"]] += 1
            self._changed.notify_all()
        return event

    def wait(self, name: str, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.counts[name] >= count, 5), (name, count)


@pytest.fixture
def events() -> Iterator[tuple[Events, list[MutableMapping[str, Any]]]]:
    waiter = Events()
    with capture_logs(processors=[waiter]) as logs:
        yield waiter, logs


@pytest.fixture
def rt(clock: ManualClock, events: Any) -> Iterator[Runtime]:
    """The runtime, started once the events are captured: capture_logs swaps structlog's
    processors in place, which races with actor threads that log meanwhile (seen with a
    tiny switch interval: the root supervisor crashed logging through no processor)."""
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


def settle(pipeline: Pipeline) -> None:
    """Let every stage, outermost first, handle what was sent into the pipeline so far."""
    for stage in STAGE_ORDER:
        if stage in pipeline.stages:
            assert pipeline.stages[stage].settle(5)


class Flaky:
    """Fails ``failures`` times with ConnectionError, then returns ``result``; records times."""

    def __init__(self, clock: ManualClock, failures: int, result: Any = "ok") -> None:
        self.clock = clock
        self.failures = failures
        self.result = result
        self.times: list[float] = []

    def __call__(self) -> Any:
        self.times.append(self.clock.monotonic())
        if len(self.times) <= self.failures:
            raise ConnectionError("Simulated connection error")
        return self.result


# -- Rate Limiting & Throttling: rate limited API calls with priorities -------------------------

SEED_REQUESTS = [
    {"endpoint": "/data/1", "priority": "high"},
    {"endpoint": "/data/2", "priority": "normal"},
    {"endpoint": "/data/3", "priority": "low"},
]


def test_rate_limited_calls_run_by_priority_once_the_limit_is_hit(rt, clock):
    api = rt.pipeline(
        "api_client",
        rate_limit=RateLimitConfig(
            per_second=10,
            per_minute=100,
            per_hour=1000,
            throttle_strategy="adaptive",
            backoff_multiplier=1.5,
            max_wait_time=60.0,
            queue_size=1000,
            queue_timeout=300,
            priority_queue=True,
            on_limit="wait",
        ),
        bulkhead=BulkheadConfig(max_workers=1, max_queue=10),
    )
    client = api.options(key="api_client")
    ran: list[tuple[str, float]] = []

    def request(endpoint: str) -> dict[str, Any]:
        ran.append((endpoint, clock.monotonic()))
        return {"endpoint": endpoint, "status": 200}

    for i in range(10):  # the 1s window is full at t=0
        client.call(request, f"/warmup/{i}")
    # the seed's requests, sent lowest priority first: all wait for the next slot
    futures = {
        r["endpoint"]: client.options(priority=r["priority"]).submit(request, r["endpoint"])
        for r in reversed(SEED_REQUESTS)
    }
    settle(api)
    limiter = api.status()["rate_limiter"]
    assert limiter["queue_depth"] == {"high": 1, "normal": 1, "low": 1}
    assert limiter["admitted"] == 10
    clock.advance(0.999)
    assert not any(f.done() for f in futures.values())
    clock.advance(0.001)
    assert {e: f.get(5) for e, f in futures.items()} == {
        e: {"endpoint": e, "status": 200} for e in futures
    }
    assert ran[10:] == [("/data/1", 1.0), ("/data/2", 1.0), ("/data/3", 1.0)]


def test_one_slot_a_second_goes_to_the_highest_priority_waiting(rt, clock):
    api = rt.pipeline(
        "api_client",
        rate_limit=RateLimitConfig(per_second=1, per_minute=100, on_limit="wait"),
    )
    ran: list[tuple[str, float]] = []

    def request(endpoint: str) -> str:
        ran.append((endpoint, clock.monotonic()))
        return endpoint

    assert api.call(request, "/first") == "/first"
    futures = [
        api.options(priority=r["priority"]).submit(request, r["endpoint"])
        for r in reversed(SEED_REQUESTS)
    ]
    settle(api)
    assert api.status()["rate_limiter"]["waiting"] == 3
    # one admission a second, highest priority first (each runs before the clock moves on)
    for second, future in zip((1.0, 2.0, 3.0), reversed(futures), strict=True):
        clock.advance_to(second - 0.001)
        assert not future.done()
        clock.advance_to(second)
        future.get(5)
    assert [f.get(5) for f in futures] == ["/data/3", "/data/2", "/data/1"]
    assert ran == [("/first", 0.0), ("/data/1", 1.0), ("/data/2", 2.0), ("/data/3", 3.0)]


# -- Retry Patterns & Backoff: exponential backoff with retry -----------------------------------


def test_retry_with_exponential_backoff_then_success(rt, clock, events):
    waiter, logs = events
    api = rt.pipeline(
        "external",
        retry=RetryConfig(
            max_attempts=4,
            backoff_strategy="exponential",
            base_delay=1.0,
            max_delay=60.0,
            jitter=False,
            retry_exceptions=["ConnectionError", "TimeoutError"],
        ),
    )
    op = Flaky(clock, failures=2, result={"status": "processed"})
    future = api.submit(op)
    for attempt, due in enumerate((1.0, 3.0), start=1):
        waiter.wait("garrison.retry.attempt_failed", attempt)
        settle(api)
        clock.advance_to(due - 0.001)
        assert len(op.times) == attempt  # never a moment early
        clock.advance_to(due)
    assert future.get(5) == {"status": "processed"}
    assert op.times == [0.0, 1.0, 3.0]
    failed = [e for e in logs if e["event"] == "garrison.retry.attempt_failed"]
    assert [(e["attempt"], e["delay"]) for e in failed] == [(1, 1.0), (2, 2.0)]
    assert api.status()["retry"]["succeeded_after_retry"] == 1


def test_retry_gives_up_after_max_attempts_and_never_retries_other_errors(rt, clock, events):
    waiter, _ = events
    api = rt.pipeline("external", retry=RetryConfig(max_attempts=3, base_delay=1.0, jitter=False))
    op = Flaky(clock, failures=10)
    future = api.submit(op)
    for attempt, due in enumerate((1.0, 3.0), start=1):
        waiter.wait("garrison.retry.attempt_failed", attempt)
        settle(api)
        clock.advance_to(due)
    with pytest.raises(RetriesExhausted) as info:
        future.get(5)
    assert info.value.attempts == 3
    assert isinstance(info.value.last_error, ConnectionError)
    assert op.times == [0.0, 1.0, 3.0]
    calls: list[int] = []

    def not_retryable() -> None:
        calls.append(1)
        raise ValueError("bad input")  # the seed returns these at once

    with pytest.raises(ValueError, match="bad input"):
        api.call(not_retryable)
    assert calls == [1]


# -- Retry Node with Circuit Breaker ------------------------------------------------------------


def test_retry_with_a_circuit_breaker(rt, clock, events):
    waiter, logs = events
    api = rt.pipeline(
        "external_api",
        retry=RetryConfig(max_attempts=5, base_delay=1.0, max_delay=10.0, jitter=False),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=3, recovery_timeout=10, error_rate_threshold=0.5, min_calls=10
        ),
    )
    op = Flaky(clock, failures=3)
    future = api.submit(op)
    # attempts 1-3 fail (t=0, 1, 3) and open the breaker at t=3 until t=13; attempt 4 (t=7)
    # is refused by the breaker; attempt 5 waits max(backoff 8, retry_after 6): t=15, when
    # the half-open breaker admits it as a probe and closes on its success
    states = []
    for attempt, due in enumerate((1.0, 3.0, 7.0, 15.0), start=1):
        waiter.wait("garrison.retry.attempt_failed", attempt)
        settle(api)
        states.append(api.status()["circuit_breaker"]["state"])
        clock.advance_to(due)
    assert future.get(5) == "ok"
    assert op.times == [0.0, 1.0, 3.0, 15.0]
    assert states == ["closed", "closed", "open", "open"]
    failed = [e for e in logs if e["event"] == "garrison.retry.attempt_failed"]
    assert [e["delay"] for e in failed] == [1.0, 2.0, 4.0, 8.0]
    assert failed[3]["error"].startswith("CircuitOpen: Circuit breaker is OPEN")
    transitions = [e["event"] for e in logs if e["event"].startswith("garrison.breaker.")]
    assert transitions == [
        "garrison.breaker.opened",
        "garrison.breaker.half_open",
        "garrison.breaker.closed",
    ]
    assert api.status()["circuit_breaker"]["state"] == "closed"


# -- Circuit Breaker Patterns: per-service configs ----------------------------------------------

SEED_BREAKERS = {
    "external_api": CircuitBreakerConfig(
        failure_threshold=5,  # Open after 5 failures
        recovery_timeout=30,  # Wait 30s before trying half-open
        error_rate_threshold=0.5,  # Open at 50% error rate
        min_calls=10,  # Minimum calls before calculating error rate
    ),
    "database": CircuitBreakerConfig(
        failure_threshold=3,  # More sensitive for DB
        recovery_timeout=60,  # Longer recovery for DB
        error_rate_threshold=0.3,  # Lower threshold for DB
        min_calls=5,
    ),
    "cache": CircuitBreakerConfig(
        failure_threshold=10,  # Less sensitive for cache
        recovery_timeout=10,  # Quick recovery for cache
        error_rate_threshold=0.7,  # Higher threshold for cache
        min_calls=20,
    ),
}


def broken() -> None:
    raise ConnectionError("service down")


def test_per_service_breakers_via_the_runtimes_manager(rt, clock):
    breakers = {name: rt.breakers.get_or_create(name, cfg) for name, cfg in SEED_BREAKERS.items()}
    assert rt.breakers.get_or_create("database", SEED_BREAKERS["database"]) is breakers["database"]
    for name, threshold in (("external_api", 5), ("database", 3), ("cache", 10)):
        breaker = breakers[name]
        for _ in range(threshold - 1):
            with pytest.raises(ConnectionError):
                breaker.call(broken)
        assert breaker.get_status()["state"] == "closed", name
        with pytest.raises(ConnectionError):
            breaker.call(broken)
        assert breaker.get_status()["state"] == "open", name
        calls: list[int] = []
        with pytest.raises(CircuitOpen) as info:
            breaker.call(calls.append, 1)
        assert calls == []
        assert "Circuit breaker is OPEN" in str(info.value)
        assert info.value.retry_after == SEED_BREAKERS[name].recovery_timeout
        assert breaker.get_status()["recovery_timeout"] == SEED_BREAKERS[name].recovery_timeout
    assert {n: s["state"] for n, s in rt.breakers.status().items()} == dict.fromkeys(
        SEED_BREAKERS, "open"
    )
    # each recovers on its own schedule: cache after 10 s, external_api 30 s, database 60 s
    clock.advance(10)
    assert [breakers[n].get_status()["state"] for n in SEED_BREAKERS] == [
        "open",
        "open",
        "half_open",
    ]
    clock.advance(20)
    assert [breakers[n].get_status()["state"] for n in SEED_BREAKERS] == [
        "half_open",
        "open",
        "half_open",
    ]
    clock.advance(30)
    assert breakers["database"].get_status()["state"] == "half_open"
    assert breakers["database"].call(lambda: {"processed": 3}) == {"processed": 3}
    assert breakers["database"].get_status()["state"] == "closed"


@pytest.mark.parametrize(("service", "threshold"), [("database", 3), ("cache", 10)])
def test_per_service_breakers_via_pipelines(rt, clock, service, threshold):
    pipelines = {
        name: rt.pipeline(name, circuit_breaker=config) for name, config in SEED_BREAKERS.items()
    }
    api = pipelines[service]
    for _ in range(threshold - 1):
        with pytest.raises(ConnectionError):
            api.call(broken)
    assert api.status()["circuit_breaker"]["state"] == "closed"
    with pytest.raises(ConnectionError):
        api.call(broken)
    status = api.status()["circuit_breaker"]
    assert (status["state"], status["failure_threshold"]) == ("open", threshold)
    handle = rt.breakers.get(service)
    assert handle is not None
    assert handle.get_status()["state"] == "open"
    with pytest.raises(CircuitOpen):
        api.call(lambda: "never")
    # the other services are untouched
    for name, other in pipelines.items():
        if name != service:
            assert other.status()["circuit_breaker"]["state"] == "closed"
            assert other.call(lambda: "fine") == "fine"
    clock.advance(SEED_BREAKERS[service].recovery_timeout)
    assert api.status()["circuit_breaker"]["state"] == "half_open"
    assert api.call(lambda: "recovered") == "recovered"
    assert api.status()["circuit_breaker"]["state"] == "closed"


def test_the_seeds_protected_operation_falls_back_while_the_database_circuit_is_open(rt):
    database = rt.pipeline(
        "database",
        circuit_breaker=SEED_BREAKERS["database"],
        fallback=lambda error, message: (
            {"fallback": True, "message": "Using cached data"}
            if isinstance(error, CircuitOpen)
            else {"status": "error", "error": str(error)}
        ),
    )
    data = [{"id": 1}, {"id": 2}]
    assert database.call(lambda: {"processed": len(data)}) == {"processed": 2}
    for _ in range(3):
        assert database.call(broken) == {"status": "error", "error": "service down"}
    assert database.call(lambda: {"processed": len(data)}) == {
        "fallback": True,
        "message": "Using cached data",
    }


# -- Bulkhead Pattern: resource isolation -------------------------------------------------------

SEED_BULKHEADS = {
    "database": BulkheadConfig(max_workers=5, max_concurrent=3),
    "api_calls": BulkheadConfig(max_workers=10, max_concurrent=5),
    "file_ops": BulkheadConfig(max_workers=3, max_concurrent=2),
}


def test_bulkhead_isolation_runs_the_seeds_three_operation_types(rt):
    pipelines = {name: rt.pipeline(name, bulkhead=cfg) for name, cfg in SEED_BULKHEADS.items()}
    data = [{"id": i} for i in range(4)]

    async def process_with_bulkheads() -> dict[str, Any]:
        db_task = pipelines["database"].acall(lambda: len(data))
        api_task = pipelines["api_calls"].acall(lambda: {"status": "processed"})
        file_task = pipelines["file_ops"].acall(lambda: {"written": True})
        db_result, api_result, file_result = await asyncio.gather(db_task, api_task, file_task)
        return {
            "database_result": db_result,
            "api_result": api_result,
            "file_result": file_result,
            "total_processed": len(data),
        }

    assert asyncio.run(process_with_bulkheads()) == {
        "database_result": 4,
        "api_result": {"status": "processed"},
        "file_result": {"written": True},
        "total_processed": 4,
    }
    for name, config in SEED_BULKHEADS.items():
        status = pipelines[name].status()["bulkhead"]
        assert (status["max_workers"], status["max_concurrent"]) == (
            config.max_workers,
            config.max_concurrent,
        )


@pytest.mark.parametrize("saturated", list(SEED_BULKHEADS))
def test_a_saturated_bulkhead_leaves_the_others_unaffected(rt, saturated):
    pipelines = {name: rt.pipeline(name, bulkhead=cfg) for name, cfg in SEED_BULKHEADS.items()}
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck() -> str:
        started.release()
        assert release.wait(10)
        return "done"

    limit = SEED_BULKHEADS[saturated].concurrency
    running = [pipelines[saturated].submit(stuck) for _ in range(limit)]
    for _ in range(limit):
        assert started.acquire(timeout=5)
    with pytest.raises(BulkheadFull) as info:
        pipelines[saturated].call(lambda: "refused")
    assert (info.value.name, info.value.max_concurrent) == (saturated, limit)
    for name, pipeline in pipelines.items():
        if name != saturated:
            assert [pipeline.call(lambda i=i: i) for i in range(20)] == list(range(20))
            assert pipeline.status()["bulkhead"]["in_use"] == 0
    status = pipelines[saturated].status()["bulkhead"]
    assert (status["in_use"], status["rejected"]) == (limit, 1)
    release.set()
    assert [f.get(5) for f in running] == ["done"] * limit


# -- Timeout Patterns: adaptive timeout with variable latency -----------------------------------


class Latency:
    """Runs operations whose latency is driven by the ManualClock."""

    def __init__(self, pipeline: Pipeline, clock: ManualClock) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, latency: float) -> Any:
        """Start an operation that takes ``latency`` seconds of the clock (see ``run``)."""
        started, release = threading.Event(), threading.Event()
        self.release = release

        def operation() -> dict[str, Any]:
            self.thread = threading.current_thread()
            started.set()
            assert release.wait(10)
            return {"processed": latency}

        future = self.pipeline.submit(operation)
        assert started.wait(5)
        settle(self.pipeline)  # the timeout stage has armed its timer
        return future

    def run(self, latency: float) -> Any:
        future = self.start(latency)
        self.clock.advance(latency)
        self.release.set()
        return future.get(5)

    def release_timed_out(self) -> None:
        """Let the timed-out operation return and wait for its retired worker to end."""
        settle(self.pipeline)  # the bulkhead has retired the worker stuck in it
        self.release.set()
        assert self.thread is not None
        self.thread.join(5)
        assert not self.thread.is_alive()

    def timeout(self) -> float:
        value = self.pipeline.status()["timeout"]["timeout"]
        assert isinstance(value, float)
        return value


def test_adaptive_timeout_follows_mean_plus_two_stdev_and_cuts_off_outliers(rt, clock):
    api = rt.pipeline("slow_service", timeout=TimeoutConfig(base_timeout=2.0, adaptive=True))
    latency = Latency(api, clock)
    seed = AdaptiveTimeout(initial_timeout=2.0)
    samples = [0.5, 1.9, 1.0, 1.8, 0.6]  # under the 2 s base timeout while it learns
    for i, sample in enumerate(samples):
        assert latency.timeout() == 2.0  # fewer than 5 samples: the base timeout
        assert latency.run(sample) == {"processed": sample}
        seed.record_response_time(sample)
        assert api.status()["timeout"]["samples"] == i + 1
    grown = statistics.mean(samples) + 2 * statistics.stdev(samples)
    assert grown > 2.0
    assert latency.timeout() == pytest.approx(grown)
    assert latency.timeout() == pytest.approx(seed.get_adaptive_timeout())
    # 2.3 s would have timed out under the base timeout; the learned one admits it
    assert latency.run(2.3) == {"processed": 2.3}
    samples.append(2.3)
    grown = statistics.mean(samples) + 2 * statistics.stdev(samples)
    assert latency.timeout() == pytest.approx(grown)
    # an outlier beyond mean + 2 stdev is cut off at exactly that timeout
    future = latency.start(60.0)
    clock.advance(grown - 0.01)
    assert not future.done()
    clock.advance(0.01)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == pytest.approx(grown)
    latency.release_timed_out()
    status = api.status()["timeout"]
    assert (status["samples"], status["timeouts"]) == (6, 1)  # a timeout is not a sample
    assert status["timeout"] == pytest.approx(grown)


def test_adaptive_timeout_is_capped_at_max_timeout(rt, clock):
    api = rt.pipeline(
        "slow_service", timeout=TimeoutConfig(base_timeout=1.0, adaptive=True, max_timeout=1.2)
    )
    latency = Latency(api, clock)
    samples = [0.1, 0.9, 0.1, 0.9, 0.1]
    for sample in samples:
        latency.run(sample)
    assert statistics.mean(samples) + 2 * statistics.stdev(samples) > 1.2
    assert latency.timeout() == 1.2
    future = latency.start(1.25)
    clock.advance(1.2)
    with pytest.raises(OperationTimeout) as info:
        future.get(5)
    assert info.value.timeout == 1.2
    latency.release_timed_out()


# -- Fallback when the primary fails ------------------------------------------------------------


def test_fallback_value_when_the_primary_fails(rt):
    api = rt.pipeline("primary", fallback=FallbackConfig(value={"status": "degraded"}))
    assert api.call(lambda: {"status": "success"}) == {"status": "success"}
    assert api.call(broken) == {"status": "degraded"}
    status = api.status()["fallback"]
    assert (status["successes"], status["used"]["value"]) == (1, 1)


def test_fallback_none_is_a_value(rt):
    api = rt.pipeline("primary", fallback=FallbackConfig(value=None))
    assert api.call(broken) is None


def test_fallback_callable_gets_the_error_and_the_message(rt):
    seen: list[tuple[BaseException, Execute]] = []

    def fallback(error: BaseException, message: Execute) -> dict[str, Any]:
        seen.append((error, message))
        return {"status": "fallback", "for": message.args, "used_fallback": True}

    api = rt.pipeline("primary", fallback=fallback)
    assert api.options(name="fetch:7").call(lambda user_id: broken(), 7) == {
        "status": "fallback",
        "for": (7,),
        "used_fallback": True,
    }
    ((error, message),) = seen
    assert isinstance(error, ConnectionError)
    assert (message.name, message.args) == ("fetch:7", (7,))


def test_a_failing_fallback_callable_raises_its_own_error_chained(rt):
    def fallback(error: BaseException, message: Execute) -> None:
        raise RuntimeError("fallback failed too")

    api = rt.pipeline("primary", fallback=fallback)
    with pytest.raises(RuntimeError, match="fallback failed too") as info:
        api.call(broken)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_fallback_to_the_last_success_per_operation_name(rt):
    api = rt.pipeline("primary", fallback=FallbackConfig(cache_last_success=True))
    healthy = {"value": True}

    def fetch(user_id: int) -> dict[str, Any]:
        if not healthy["value"]:
            raise ConnectionError("primary down")
        return {"id": user_id}

    for user_id in (1, 2):
        assert api.options(name=f"user:{user_id}").call(fetch, user_id) == {"id": user_id}
    healthy["value"] = False
    assert api.options(name="user:2").call(fetch, 2) == {"id": 2}
    assert api.options(name="user:1").call(fetch, 1) == {"id": 1}
    with pytest.raises(ConnectionError):  # nothing cached for this name: the error as it is
        api.options(name="user:3").call(fetch, 3)
    status = api.status()["fallback"]
    assert (status["used"]["cache"], status["reraised"], status["cache_size"]) == (2, 1, 2)


def test_fallback_cache_first_then_value(rt):
    api = rt.pipeline("primary", fallback=FallbackConfig(value="default", cache_last_success=True))
    assert api.options(name="report").call(lambda: "fresh") == "fresh"
    assert api.options(name="report").call(broken) == "fresh"
    assert api.options(name="other").call(broken) == "default"


def test_fallback_answers_what_the_retries_and_the_breaker_could_not(rt, clock, events):
    waiter, _ = events
    api = rt.pipeline(
        "primary",
        # a breaker that says "come back in 30 s" is beyond max_delay: not waited for
        retry=RetryConfig(max_attempts=2, base_delay=1.0, max_delay=10.0, jitter=False),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
        fallback=FallbackConfig(value={"fallback": True}),
    )
    future = api.submit(broken)
    waiter.wait("garrison.retry.attempt_failed", 1)
    settle(api)
    clock.advance(1.0)
    assert future.get(5) == {"fallback": True}
    assert api.status()["circuit_breaker"]["state"] == "open"
    calls: list[int] = []
    assert api.call(calls.append, 1) == {"fallback": True}
    assert calls == []
