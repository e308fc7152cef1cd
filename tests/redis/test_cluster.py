"""Redis Cluster: what a namespace's breakers share lands on one slot; windows spread.

A one-node cluster serves every slot but still refuses a script whose declared keys are on
different slots (CROSSSLOT), so everything here runs against it for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import drained, wait_until
from _server import RedisServer, require_binary

import redis
from garrison import CircuitBreakerConfig, RateLimitConfig, Runtime
from garrison.backends import BackendConfig
from garrison.testing import ManualClock

BREAKER = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)
key_slot = pytest.importorskip("redis.crc").key_slot


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    node = RedisServer(
        require_binary(), workdir=tmp_path_factory.mktemp("cluster"), cluster=True
    ).start()
    yield node
    node.stop()


@pytest.fixture
def client(cluster_node: RedisServer) -> Iterator[Any]:
    client = redis.Redis.from_url(cluster_node.url)
    yield client
    client.close()


def slot(name: str | bytes) -> int:
    return int(key_slot(name.encode() if isinstance(name, str) else name))


@pytest.mark.parametrize("namespace", ["billing", "odd{name}", "~%{"])
def test_a_namespaces_breaker_keys_and_channel_share_one_slot(
    cluster_node: RedisServer, client: Any, namespace: str
):
    config = BackendConfig(cluster_node.url, namespace=namespace)
    runtimes = [Runtime(clock=ManualClock(), backend=config).start() for _ in range(2)]
    a, b = runtimes
    try:
        tripper = a.breakers.get_or_create("svc", BREAKER)
        watcher = b.pipeline("svc", circuit_breaker=BREAKER)
        for rt in runtimes:
            assert rt.backend is not None
            assert rt.backend.fleet.subscribed.wait(5)
            drained(rt)
        with pytest.raises(ZeroDivisionError):
            tripper.call(lambda: 1 / 0)
        assert wait_until(lambda: watcher.status()["circuit_breaker"]["state"] == "open")

        assert a.backend is not None
        fleet = a.backend.fleet
        names = [
            fleet.heartbeat_key,
            fleet.channel,
            fleet.key("svc", "trips"),
            fleet.key("s", "probe"),
        ]
        assert len({slot(name) for name in names}) == 1
        prefix = fleet.heartbeat_key.removesuffix("processes")
        stored = client.keys(f"{prefix}*".replace("{", "\\{").replace("}", "\\}"))
        assert {slot(k) for k in stored} == {slot(fleet.heartbeat_key)}
        assert len(stored) == 2  # the heartbeat and svc's trips

        # a script may declare all of them at once: no CROSSSLOT
        declared = client.eval(
            "return #KEYS",
            3,
            fleet.heartbeat_key,
            fleet.key("svc", "trips"),
            fleet.key("svc", "probe"),
        )
        assert declared == 3
        assert a.backend.link.health.errors_total == 0
        assert b.backend is not None
        assert b.backend.link.health.errors_total == 0
    finally:
        for rt in runtimes:
            rt.stop()


def test_rate_limit_windows_spread_over_slots(cluster_node: RedisServer, client: Any):
    with Runtime(name="spread", backend=cluster_node.url) as rt:
        api = rt.pipeline("api", rate_limit=RateLimitConfig(per_second=100, per_minute=1000))
        for user in range(20):
            api.options(key=f"user-{user}").call(lambda: None)
        assert rt.backend is not None
        assert rt.backend.link.health.errors_total == 0
    stored = client.keys("garrison:spread:api:*")
    assert len(stored) == 20
    assert len({slot(k) for k in stored}) > 10
