"""Prometheus metrics: the collector's exact values, a real /metrics endpoint, an ASGI app,
stages that do not answer, and prometheus-client as an optional extra."""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from garrison import (
    Actor,
    BulkheadConfig,
    BulkheadFull,
    CircuitBreakerConfig,
    CircuitOpen,
    Execute,
    Future,
    OperationTimeout,
    Pipeline,
    RateLimitConfig,
    RateLimited,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.observability import metrics
from garrison.observability.metrics import (
    METRICS,
    RuntimeCollector,
    metrics_app,
    register,
    start_metrics_server,
)
from garrison.pipeline import STAGE_ORDER
from garrison.testing import ManualClock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def snapshot(families: Iterable[Any]) -> Samples:
    """Every sample of ``families``, by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def labelled(samples: Samples, metric: str, /, **labels: str) -> dict[Any, float]:
    """The samples of ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {
        key: sample_value
        for (sample_name, key), sample_value in samples.items()
        if sample_name == metric and wanted <= set(key)
    }


class Gate:
    """Operations that block until released, telling the test when they started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._started = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []

    def blocked(self, result: Any = "late") -> Any:
        self.threads.append(threading.current_thread())
        self._started.release()
        assert self.release.wait(10)
        return result

    def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert self._started.acquire(timeout=5)

    def open(self, *, join: bool = False) -> None:
        """Release the operations; with ``join``, wait for their threads to end (retired
        workers end once their call returns; pool workers do not)."""
        self.release.set()
        for thread in self.threads if join else ():
            thread.join(5)
            assert not thread.is_alive(), thread.name


class Crashy(Actor):
    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        return message


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(error: BaseException) -> None:
    raise error


def settle(pipeline: Pipeline) -> None:
    for stage in STAGE_ORDER:
        if stage in pipeline.stages:
            assert pipeline.stages[stage].settle(5)


@dataclass
class World:
    rt: Runtime
    clock: ManualClock
    api: Pipeline
    db: Pipeline
    db_gate: Gate = field(default_factory=Gate)
    stuck_gate: Gate = field(default_factory=Gate)
    db_calls: list[Future[Any]] = field(default_factory=list)


def drive(world: World) -> None:
    """Traffic with known outcomes; the comments give what each stage counts."""
    rt, clock, api, db = world.rt, world.clock, world.api, world.db

    # api, through every stage: 1 success, 1 success after a retry
    assert api.call(add, 1, 2) == 3
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("blip")
        return "ok"

    assert api.call(flaky) == "ok"
    # two failures that are not retried open the breaker (failure_threshold=2); the fallback
    # answers them, and the next call, refused by the open breaker
    assert api.call(fail, ValueError("bad")) == "fallback"
    assert api.call(fail, ValueError("bad")) == "fallback"
    assert api.call(add, 1) == "fallback"
    # message level, to the limiter: 5 admitted so far, the 6th fits, two more are refused
    limiter = api.stages["rate_limiter"]
    assert limiter.ask(Execute(add, args=(9,)), 5) == 9
    for _ in range(2):
        with pytest.raises(RateLimited):
            limiter.ask(Execute(add, args=(9,)), 5)
    # message level, to the timeout stage: an operation that outlives its 5 s is abandoned
    timed_out = api.stages["timeout"].ask_future(Execute(world.stuck_gate.blocked))
    world.stuck_gate.wait_started()
    settle(api)
    clock.advance(5.0)
    with pytest.raises(OperationTimeout):
        timed_out.get(5)
    settle(api)  # the bulkhead has retired the stuck worker

    # the standalone breaker: a success, a failure that opens it, a refused call
    payments = rt.breakers.get_or_create(
        "payments", CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60)
    )
    assert payments.call(add, 1, 1) == 2
    with pytest.raises(ValueError, match="declined"):
        payments.call(fail, ValueError("declined"))
    with pytest.raises(CircuitOpen):
        payments.call(add, 1)

    # db, a bulkhead only: two operations hold both slots, a third is refused
    world.db_calls.extend(db.submit(world.db_gate.blocked, i) for i in range(2))
    world.db_gate.wait_started(2)
    with pytest.raises(BulkheadFull):
        db.call(add, 1)

    # a supervised actor that crashes once and is restarted
    crashy = rt.spawn(Crashy, name="crashy", restart="permanent")
    with pytest.raises(RuntimeError, match="boom"):
        crashy.ask("boom", 5)
    assert rt.supervisor.settle(5)
    assert crashy.ask("hello", 5) == "hello"

    # a dead letter: a tell to an actor that has stopped
    assert rt.dead_letters.count == 0
    temporary = rt.spawn(Crashy, name="temporary")
    assert temporary.stop()
    temporary.tell("lost")
    assert rt.dead_letters.count == 1


@pytest.fixture
def world() -> Iterator[World]:
    clock = ManualClock()
    rt = Runtime(name="rt", clock=clock).start()
    try:
        api = rt.pipeline(
            "api",
            rate_limit=RateLimitConfig(per_second=6, on_limit="reject"),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
            retry=RetryConfig(
                max_attempts=3,
                base_delay=0.0,
                max_delay=0.5,
                jitter=False,
                retry_exceptions=[ConnectionError],
            ),
            timeout=TimeoutConfig(base_timeout=5.0, adaptive=False),
            bulkhead=BulkheadConfig(max_workers=2),
            fallback=lambda error, message: "fallback",
        )
        db = rt.pipeline("db", bulkhead=BulkheadConfig(max_workers=3, max_concurrent=2))
        world = World(rt, clock, api, db)
        try:
            drive(world)
            yield world
        finally:
            world.db_gate.open()
            world.stuck_gate.open(join=True)
    finally:
        rt.stop()


def release_db(world: World) -> None:
    world.db_gate.open()
    assert [call.get(5) for call in world.db_calls] == [0, 1]
    assert world.db.stages["bulkhead"].settle(5)


# -- (a) the collector ------------------------------------------------------------------------


def test_the_collector_reports_what_the_stages_report(world):
    collector = register(world.rt)
    assert isinstance(collector, RuntimeCollector)
    assert isinstance(collector.registry, CollectorRegistry)
    samples = snapshot(collector.registry.collect())

    # runtime, dead letters, and no scrape errors
    assert value(samples, "garrison_runtime_up") == 1
    assert value(samples, "garrison_dead_letters_total") == 1
    assert labelled(samples, "garrison_scrape_errors_total") == {}
    assert value(samples, "garrison_scrape_duration_seconds") is not None

    # the pipeline's breaker: open after 2 of 5 calls succeeded and 3 failed; once only
    state = labelled(samples, "garrison_circuitbreaker_state", name="api")
    assert state == {
        (("name", "api"), ("state", "closed")): 0,
        (("name", "api"), ("state", "open")): 1,
        (("name", "api"), ("state", "half_open")): 0,
        (("name", "api"), ("state", "forced_open")): 0,
        (("name", "api"), ("state", "disabled")): 0,
    }
    buffered = "garrison_circuitbreaker_buffered_calls"
    assert value(samples, buffered, name="api", kind="successful") == 2
    assert value(samples, buffered, name="api", kind="failed") == 3
    assert value(samples, "garrison_circuitbreaker_failure_rate", name="api") == pytest.approx(0.6)
    assert value(samples, "garrison_circuitbreaker_slow_calls", name="api") == 0
    assert value(samples, "garrison_circuitbreaker_consecutive_failures", name="api") == 2
    assert value(samples, "garrison_circuitbreaker_retry_after_seconds", name="api") == 25.0
    assert value(samples, "garrison_circuitbreaker_recovery_timeout_seconds", name="api") == 30.0
    calls = "garrison_circuitbreaker_calls_total"
    assert value(samples, calls, name="api", kind="successful") == 2
    assert value(samples, calls, name="api", kind="failed") == 3
    # the standalone breaker
    assert value(samples, "garrison_circuitbreaker_state", name="payments", state="open") == 1
    assert value(samples, buffered, name="payments", kind="successful") == 1
    assert value(samples, buffered, name="payments", kind="failed") == 1
    assert value(samples, "garrison_circuitbreaker_failure_rate", name="payments") == 0.5
    assert {dict(key)["name"] for key in labelled(samples, "garrison_circuitbreaker_state")} == {
        "api",
        "payments",
    }

    # the rate limiter
    assert value(samples, "garrison_ratelimiter_admitted_total", name="api") == 6
    rejected = "garrison_ratelimiter_rejected_total"
    assert value(samples, rejected, name="api", reason="rate_limited") == 2
    assert value(samples, rejected, name="api", reason="queue_full") == 0
    assert value(samples, rejected, name="api", reason="queue_timeout") == 0
    for priority in ("high", "normal", "low"):
        depth = value(samples, "garrison_ratelimiter_queue_depth", name="api", priority=priority)
        assert depth == 0
    assert value(samples, "garrison_ratelimiter_limit", name="api", window="1s") == 6
    assert value(samples, "garrison_ratelimiter_effective_limit", name="api", window="1s") == 6
    assert value(samples, "garrison_ratelimiter_rate_factor", name="api") == 1.0
    assert value(samples, "garrison_ratelimiter_paused_seconds", name="api") == 0.0
    assert value(samples, "garrison_ratelimiter_keys", name="api") == 1

    # the bulkheads: api's retired its stuck worker; db's two slots are taken
    assert value(samples, "garrison_bulkhead_completed_total", name="api") == 6
    assert value(samples, "garrison_bulkhead_abandoned_total", name="api") == 1
    assert value(samples, "garrison_bulkhead_stuck_workers", name="api") == 1
    assert value(samples, "garrison_bulkhead_in_use", name="api") == 0
    assert value(samples, "garrison_bulkhead_rejected_total", name="api") == 0
    assert value(samples, "garrison_bulkhead_max_concurrent", name="api") == 2
    assert value(samples, "garrison_bulkhead_in_use", name="db") == 2
    assert value(samples, "garrison_bulkhead_queued", name="db") == 0
    assert value(samples, "garrison_bulkhead_idle_workers", name="db") == 1
    assert value(samples, "garrison_bulkhead_rejected_total", name="db") == 1
    assert value(samples, "garrison_bulkhead_wait_timeouts_total", name="db") == 0
    assert value(samples, "garrison_bulkhead_max_workers", name="db") == 3
    assert value(samples, "garrison_bulkhead_max_concurrent", name="db") == 2
    assert value(samples, "garrison_bulkhead_max_queue", name="db") == 0

    # the timeout stage
    assert value(samples, "garrison_timeout_timeouts_total", name="api") == 1
    assert value(samples, "garrison_timeout_completed_total", name="api") == 6
    assert value(samples, "garrison_timeout_current_seconds", name="api") == 5.0
    assert value(samples, "garrison_timeout_pending", name="api") == 0

    # the retry stage: 1 plain success, 1 after a retry, 2 not retryable, 1 refused by the
    # open breaker with a retry_after longer than max_delay
    calls = "garrison_retry_calls_total"
    assert value(samples, calls, name="api", outcome="successful_without_retry") == 1
    assert value(samples, calls, name="api", outcome="successful_with_retry") == 1
    assert value(samples, calls, name="api", outcome="failed") == 3
    assert value(samples, calls, name="api", outcome="abandoned") == 0
    assert labelled(samples, "garrison_retry_gave_up_total", name="api") == {
        (("name", "api"), ("reason", "not_retryable")): 2,
        (("name", "api"), ("reason", "retry_after_too_long")): 1,
    }
    assert value(samples, "garrison_retry_attempts_total", name="api") == 6
    assert value(samples, "garrison_retry_retries_total", name="api") == 1
    assert value(samples, "garrison_retry_waiting", name="api") == 0
    assert value(samples, "garrison_retry_in_flight", name="api") == 0
    assert labelled(samples, "garrison_retry_budget_tokens") == {}  # no budget configured

    # the fallback stage
    used = "garrison_fallback_used_total"
    assert value(samples, used, name="api", source="callable") == 3
    assert value(samples, used, name="api", source="value") == 0
    assert value(samples, used, name="api", source="cache") == 0
    assert value(samples, "garrison_fallback_successes_total", name="api") == 2
    assert value(samples, "garrison_fallback_reraised_total", name="api") == 0
    assert value(samples, "garrison_fallback_callable_failed_total", name="api") == 0

    # a pipeline with a bulkhead only reports nothing else
    assert not [
        key
        for key in samples
        if dict(key[1]).get("name") == "db" and not key[0].startswith("garrison_bulkhead_")
    ]

    # supervision: the root restarted crashy once; nothing else was restarted
    assert value(samples, "garrison_supervisor_restarts_total", supervisor="rt") == 1
    assert value(samples, "garrison_supervisor_restarts_total", supervisor="rt/pipeline:api") == 0
    assert value(samples, "garrison_supervisor_give_ups_total", path="rt/pipeline:api") == 0
    assert value(samples, "garrison_actor_restarts_total", path="rt/crashy") == 1
    assert value(samples, "garrison_actor_up", path="rt/crashy") == 1
    assert value(samples, "garrison_actor_restarts_total", path="rt/pipeline:api/retry") == 0
    assert value(samples, "garrison_actor_up", path="rt/pipeline:db/bulkhead") == 1
    assert value(samples, "garrison_actor_up", path="rt/breaker:payments") == 1
    assert value(samples, "garrison_actor_up", path="rt/temporary") is None  # left the tree


def test_every_metric_family_is_there_even_without_samples():
    with Runtime(name="empty", clock=ManualClock()) as rt:
        collector = register(rt)
        families = {family.name: family for family in collector.registry.collect()}
        described = {family.name for family in collector.describe()}
    assert set(families) == described
    assert len(families) == len(METRICS)
    for name, (kind, _labels, _help) in METRICS.items():
        family = families[name.removesuffix("_total")]
        assert family.type == kind
    assert families["garrison_runtime_up"].samples[0].value == 1


def test_register_never_uses_the_global_registry():
    with Runtime(name="rt", clock=ManualClock()) as rt:
        first, second = register(rt), register(rt)
        assert first.registry is not second.registry
        assert REGISTRY.get_sample_value("garrison_runtime_up") is None
        own = CollectorRegistry()
        collector = register(rt, own, timeout=0.5)
        assert collector.registry is own
        assert collector.timeout == 0.5
        assert own.get_sample_value("garrison_runtime_up") == 1
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            register(rt, own)  # one RuntimeCollector per registry
        with pytest.raises(ValueError, match="timeout"):
            RuntimeCollector(rt, timeout=0)


# -- (b) a real HTTP endpoint, and an ASGI app -------------------------------------------------


def test_a_real_metrics_endpoint(world):
    release_db(world)
    before = {thread for thread in threading.enumerate() if thread.name.startswith("garrison-m")}
    assert before == set()
    server, port = start_metrics_server(world.rt, "127.0.0.1", 0)
    try:
        assert port == server.port > 0
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        with httpx.Client(timeout=10) as client:
            response = client.get(server.url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            samples = snapshot(text_string_to_metric_families(response.text))
            assert client.get(f"http://127.0.0.1:{port}/other").status_code == 404
            openmetrics = client.get(
                server.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
            assert openmetrics.text.rstrip().endswith("# EOF")
    finally:
        server.stop()
    server.stop()  # idempotent

    assert value(samples, "garrison_runtime_up") == 1
    assert value(samples, "garrison_dead_letters_total") == 1
    assert value(samples, "garrison_circuitbreaker_state", name="api", state="open") == 1
    assert value(samples, "garrison_circuitbreaker_state", name="payments", state="open") == 1
    assert value(samples, "garrison_ratelimiter_admitted_total", name="api") == 6
    assert (
        value(samples, "garrison_ratelimiter_rejected_total", name="api", reason="rate_limited")
        == 2
    )
    assert value(samples, "garrison_retry_calls_total", name="api", outcome="failed") == 3
    assert value(samples, "garrison_fallback_used_total", name="api", source="callable") == 3
    assert value(samples, "garrison_timeout_timeouts_total", name="api") == 1
    assert value(samples, "garrison_bulkhead_in_use", name="db") == 0  # released since
    assert value(samples, "garrison_bulkhead_completed_total", name="db") == 2
    assert value(samples, "garrison_bulkhead_rejected_total", name="db") == 1
    assert value(samples, "garrison_actor_restarts_total", path="rt/crashy") == 1

    # stopped: no thread left, the port closed, the collector out of its registry
    assert not [t for t in threading.enumerate() if t.name.startswith("garrison-metrics")]
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass
    assert list(server.registry.collect()) == []


def test_start_metrics_server_adds_to_a_given_registry():
    with Runtime(name="rt", clock=ManualClock()) as rt:
        registry = CollectorRegistry()
        server, _port = start_metrics_server(rt, registry=registry)
        with server, httpx.Client(timeout=10) as client:
            assert server.registry is registry
            assert registry.get_sample_value("garrison_runtime_up") == 1
            text = client.get(server.url).text
            assert "garrison_runtime_up 1.0" in text
        assert registry.get_sample_value("garrison_runtime_up") is None  # unregistered


def test_an_asgi_app(world):
    release_db(world)
    app = metrics_app(world.rt)

    async def scrape() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (
                await client.get("/metrics"),
                await client.get("/elsewhere"),
                await client.post("/metrics"),
            )

    ok, missing, post = asyncio.run(scrape())
    assert (ok.status_code, missing.status_code, post.status_code) == (200, 404, 405)
    samples = snapshot(text_string_to_metric_families(ok.text))
    assert value(samples, "garrison_circuitbreaker_state", name="api", state="open") == 1
    assert value(samples, "garrison_bulkhead_completed_total", name="db") == 2
    assert app.registry is app.collector.registry


# -- stages that do not answer ----------------------------------------------------------------


def test_a_stage_that_does_not_answer_is_skipped_not_waited_for():
    with Runtime(name="rt", clock=ManualClock()) as rt:
        rt.pipeline("db", bulkhead=BulkheadConfig(max_workers=1))
        stuck = rt.breakers.get_or_create("stuck")
        gate = Gate()
        # with no downstream, the breaker runs a plain function on its own thread: while
        # it runs, the breaker cannot answer a status request
        running = stuck.ref.ask_future(Execute(gate.blocked, args=("done",)))
        gate.wait_started()
        collector = register(rt, timeout=0.2)
        errors = "garrison_scrape_errors_total"
        try:
            first = snapshot(collector.registry.collect())
            second = snapshot(collector.registry.collect())
        finally:
            gate.open()
        assert running.get(5) == "done"
        third = snapshot(collector.registry.collect())

    for samples, count in ((first, 1), (second, 2)):
        assert value(samples, errors, source="breaker:stuck", reason="timeout") == count
        assert labelled(samples, "garrison_circuitbreaker_state", name="stuck") == {}
        # everything else was scraped
        assert value(samples, "garrison_bulkhead_max_workers", name="db") == 1
        assert value(samples, "garrison_actor_up", path="rt/breaker:stuck") == 1
        assert value(samples, "garrison_runtime_up") == 1
    # answering again: back in the scrape; the error counter keeps its count
    assert value(third, "garrison_circuitbreaker_state", name="stuck", state="closed") == 1
    assert value(third, errors, source="breaker:stuck", reason="timeout") == 2


def test_a_stopped_actor_is_skipped_at_once():
    with Runtime(name="rt", clock=ManualClock()) as rt:
        rt.breakers.get_or_create("gone")
        rt.supervisor.terminate_child("breaker:gone")  # the manager still has its handle
        collector = register(rt, timeout=30)
        samples = snapshot(collector.registry.collect())  # would take 30 s if it waited
    errors = "garrison_scrape_errors_total"
    assert value(samples, errors, source="breaker:gone", reason="unavailable") == 1
    assert labelled(samples, "garrison_circuitbreaker_state", name="gone") == {}


def test_a_runtime_that_is_not_running_is_scraped_without_asking_anything():
    rt = Runtime(name="rt", clock=ManualClock())
    collector = register(rt)
    samples = snapshot(collector.registry.collect())  # not started yet
    assert value(samples, "garrison_runtime_up") == 0
    with rt:
        rt.pipeline("db", bulkhead=BulkheadConfig(max_workers=1))
        assert snapshot(collector.registry.collect())[("garrison_runtime_up", ())] == 1
    samples = snapshot(collector.registry.collect())  # stopped
    assert value(samples, "garrison_runtime_up") == 0
    assert value(samples, "garrison_dead_letters_total") == 0
    assert labelled(samples, "garrison_scrape_errors_total") == {}
    assert labelled(samples, "garrison_bulkhead_max_workers") == {}


# -- the optional extra and the documentation -------------------------------------------------


def test_without_prometheus_client_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "garrison.observability.metrics")
    with pytest.raises(ImportError, match=re.escape("pip install 'garrison[metrics]'")):
        importlib.import_module("garrison.observability.metrics")


def test_the_rest_of_garrison_does_not_import_prometheus_client():
    code = (
        "import sys, garrison, garrison.actors, garrison.pipeline, garrison.supervision, "
        "garrison.breakers, garrison.config, garrison.testing, garrison.observability, "
        "garrison.observability.events\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_docstring_lists_every_metric():
    doc = (metrics.__doc__ or "").split("Metrics\n-------\n", 1)[1]
    documented = set(re.findall(r"``(garrison_[a-z_]+)", doc))
    assert documented == set(METRICS)
    for name, (kind, labels, _help) in METRICS.items():
        assert kind in ("counter", "gauge")
        assert name.endswith("_total") == (kind == "counter"), name
        line = next(line for line in doc.splitlines() if f"``{name}" in line)
        if labels:
            assert f"``{name}{{{', '.join(labels)}}}``" in line, name
        kinds = re.search(r"\((counter|gauge)s?\)", doc.split(f"``{name}", 1)[1])
        assert kinds is not None
        assert kinds.group(1) == kind, name
