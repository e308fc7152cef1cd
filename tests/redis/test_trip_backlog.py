"""Trips of a process that could not reach Redis: kept, then recorded when it answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import drained, wait_until
from _server import RedisServer, free_port, require_binary

import redis
from garrison import CircuitBreakerConfig, Runtime
from garrison.backends import BackendConfig
from garrison.backends._backend import RedisBackend
from garrison.backends._protocol import FleetTrip
from garrison.testing import ManualClock

BREAKER = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)


@pytest.fixture
def own_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it gets killed and started again)."""
    server = RedisServer(require_binary(), workdir=tmp_path).start()
    yield server
    server.kill()


class Inbox:
    """Stands in for a breaker actor's Ref: keeps what the fleet tells it."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()

    def tell(self, message: object) -> None:
        with self.lock:
            self.messages.append(message)

    def trips(self, service: str) -> list[FleetTrip]:
        with self.lock:
            return [m for m in self.messages if isinstance(m, FleetTrip) and m.service == service]


def flushed(backend: RedisBackend) -> None:
    """Wait until the io thread has done everything queued so far."""
    done = threading.Event()
    backend.fleet._jobs.put(done.set)
    assert done.wait(5)


def test_a_trip_while_redis_is_down_reaches_the_fleet_when_it_is_back(
    own_server: RedisServer, namespace: str
):
    config = BackendConfig(own_server.url, retry_interval=0.1)
    a, b = (
        Runtime(name=namespace, clock=ManualClock(start=100.0), backend=config).start()
        for _ in range(2)
    )
    try:
        tripper = a.breakers.get_or_create("svc", BREAKER)
        watcher = b.breakers.get_or_create("svc", BREAKER)
        for rt in (a, b):
            assert rt.backend is not None
            assert rt.backend.fleet.subscribed.wait(5)
            drained(rt)
        assert a.backend is not None

        own_server.kill()
        with pytest.raises(ZeroDivisionError):
            tripper.call(lambda: 1 / 0)
        assert wait_until(lambda: a.backend is not None and not a.backend.link.health.up)
        drained(a)
        assert a.backend.fleet.status()["trips_unrecorded"] == 1
        assert a.backend.fleet.trips_published == 0
        assert watcher.get_status()["state"] == "closed"

        own_server.start()
        assert wait_until(lambda: watcher.get_status()["state"] == "open")
        status = a.backend.fleet.status()
        assert (status["trips_published"], status["trips_unrecorded"]) == (1, 0)
    finally:
        a.stop()
        b.stop()


def test_only_trips_within_their_window_are_recorded_dated_when_they_happened(
    own_server: RedisServer, namespace: str
):
    clock = ManualClock(start=0.0)
    config = BackendConfig(own_server.url, namespace=namespace, retry_interval=0.1)
    tripper = RedisBackend(config, runtime=namespace, clock=clock)
    listener = RedisBackend(config, runtime=namespace)
    inbox = Inbox()
    tripper.start()
    listener.start()
    client = redis.Redis.from_url(own_server.url)
    try:
        listener.fleet.register("new", inbox, BREAKER)  # type: ignore[arg-type]
        listener.fleet.register("old", inbox, BREAKER)  # type: ignore[arg-type]
        assert listener.fleet.subscribed.wait(5)
        flushed(listener)

        own_server.kill()
        tripper.fleet.tripped("old", BREAKER)
        clock.advance(20)
        tripper.fleet.tripped("new", BREAKER)
        tripper.fleet.tripped("gone", BREAKER)
        tripper.fleet.recovered("gone")  # recovered while Redis was down: nothing to tell
        flushed(tripper)
        assert tripper.fleet.status()["trips_unrecorded"] == 2
        clock.advance(15)  # "old" tripped 35 s ago: outside its 30 s window

        own_server.start()
        assert wait_until(lambda: len(inbox.trips("new")) > 0)
        flushed(tripper)
        status = tripper.fleet.status()
        assert (status["trips_published"], status["trips_dropped"]) == (1, 1)
        assert inbox.trips("new")[0].age == pytest.approx(15, abs=1.0)
        flushed(listener)
        assert inbox.trips("old") == []
        key = tripper.fleet.key("new", "trips")
        [(_, score)] = client.zrange(key, 0, -1, withscores=True)
        now_ms = client.time()[0] * 1000
        assert score == pytest.approx(now_ms - 15_000, abs=2_000)
        assert client.exists(tripper.fleet.key("old", "trips")) == 0
    finally:
        client.close()
        tripper.close()
        listener.close()


def test_the_backlog_keeps_the_latest_trip_of_each_service_up_to_a_bound(namespace: str):
    backend = RedisBackend(BackendConfig(f"redis://127.0.0.1:{free_port()}/0"), runtime=namespace)
    backend.start()
    try:
        for i in range(300):
            backend.fleet.tripped(f"svc{i}", BREAKER)
        backend.fleet.tripped("svc299", BREAKER)  # again: still one entry
        flushed(backend)
        status = backend.fleet.status()
        assert (status["trips_unrecorded"], status["trips_dropped"]) == (256, 44)
        assert next(iter(backend.fleet._backlog)) == "svc44"  # the oldest went first
    finally:
        backend.close()
