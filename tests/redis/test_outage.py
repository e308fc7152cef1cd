"""Redis as a dependency that fails: frozen, killed, restarted; and the other two modes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import wait_until
from _server import RedisServer, free_port, require_binary
from structlog.testing import capture_logs

import redis
from garrison import BackendUnavailable, RateLimitConfig, RateLimited, Runtime
from garrison.backends import BackendConfig
from garrison.observability.metrics import RuntimeCollector


@pytest.fixture
def own_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it gets frozen and killed)."""
    server = RedisServer(require_binary(), workdir=tmp_path).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.thaw()
    server.kill()


def calls(api: Any, count: int) -> tuple[int, int]:
    """Make ``count`` calls; (admitted, rate limited). Anything else escapes (and fails)."""
    admitted = limited = 0
    for _ in range(count):
        try:
            api.call(lambda: None)
            admitted += 1
        except RateLimited:
            limited += 1
    return admitted, limited


def test_a_frozen_then_restarted_redis_falls_back_to_the_local_share_and_back(
    own_server: RedisServer, namespace: str
):
    config = BackendConfig(own_server.url, processes=4, retry_interval=0.2)
    with Runtime(name=namespace, backend=config) as rt:
        assert rt.backend is not None
        api = rt.pipeline("api", rate_limit=RateLimitConfig(limits={"10s": 20}))
        assert calls(api, 3) == (3, 0)
        assert api.status()["rate_limiter"]["shared"]["shared_decisions"] == 3

        own_server.freeze()
        with capture_logs() as events:
            started = time.monotonic()
            admitted, limited = calls(api, 12)  # decided within the local share: 20 / 4
            elapsed = time.monotonic() - started
        assert (admitted, limited) == (5, 7)
        assert elapsed < 2.0  # one socket timeout, then local decisions
        degraded = [e for e in events if e["event"] == "garrison.backend.degraded"]
        assert len(degraded) == 1
        assert degraded[0]["backend"] == own_server.url
        shared = api.status()["rate_limiter"]["shared"]
        assert shared["deciding"] == "local"
        assert shared["local_share_of"] == 4
        assert rt.backend.status()["up"] is False
        assert backend_metric(rt, "garrison_backend_up") == 0
        assert backend_metric(rt, "garrison_backend_degraded_total") == 1

        own_server.kill()  # while frozen
        restarted = RedisServer(own_server.binary, port=own_server.port).start()
        own_server.process = restarted.process
        assert wait_until(lambda: rt.backend is not None and rt.backend.link.health.up)
        assert calls(api, 2) == (2, 0)  # in Redis again: a fresh server, an empty window
        client = redis.Redis.from_url(own_server.url)
        try:
            assert client.llen(f"garrison:{namespace}:api:{{~}}:log") == 2
        finally:
            client.close()
        assert rt.backend.status()["degraded_total"] == 1
        assert backend_metric(rt, "garrison_backend_up") == 1
        assert backend_metric(rt, "garrison_backend_processes") == 4


def backend_metric(rt: Runtime, name: str) -> float:
    collector = RuntimeCollector(rt)
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not collected")


def refused_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_on_backend_error_open_admits_everything(namespace: str):
    with Runtime(name=namespace, backend=refused_port_url(), on_backend_error="open") as rt:
        api = rt.pipeline("api", rate_limit=RateLimitConfig(per_second=1))
        assert calls(api, 5) == (5, 0)
        assert api.status()["rate_limiter"]["shared"]["deciding"] == "open"


def test_on_backend_error_closed_rejects_with_a_typed_error(namespace: str):
    with Runtime(name=namespace, backend=refused_port_url(), on_backend_error="closed") as rt:
        api = rt.pipeline("api", rate_limit=RateLimitConfig(per_second=100))
        for _ in range(3):
            with pytest.raises(BackendUnavailable) as caught:
                api.call(lambda: None)
            assert caught.value.retry_after > 0


def test_local_mode_without_a_known_fleet_uses_the_whole_limit(namespace: str):
    with Runtime(name=namespace, backend=refused_port_url()) as rt:
        api = rt.pipeline("api", rate_limit=RateLimitConfig(limits={"10s": 3}))
        assert calls(api, 5) == (3, 2)
