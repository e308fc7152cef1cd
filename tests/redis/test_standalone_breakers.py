"""Standalone breakers (``rt.breakers.get_or_create``) share their trips like pipeline ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import drained, wait_until

from garrison import CircuitBreakerConfig, CircuitBreakerManager, CircuitOpen, Runtime
from garrison.backends import BackendConfig
from garrison.breakers import CircuitBreakerHandle
from garrison.testing import ManualClock

BREAKER = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)


def fail(handle: CircuitBreakerHandle) -> None:
    with pytest.raises(ZeroDivisionError):
        handle.call(lambda: 1 / 0)


def state(handle: CircuitBreakerHandle) -> str:
    return str(handle.get_status()["state"])


@pytest.fixture
def runtimes(redis_server: Any, namespace: str) -> Iterator[list[Runtime]]:
    """Two runtimes of one fleet (same backend and name), each on its own manual clock."""
    made = [
        Runtime(name=namespace, clock=ManualClock(start=100.0), backend=redis_server.url).start()
        for _ in range(2)
    ]
    yield made
    for rt in made:
        rt.stop()


def ready(rt: Runtime) -> None:
    assert rt.backend is not None
    assert rt.backend.fleet.subscribed.wait(5)
    drained(rt)


def test_a_standalone_breaker_trip_opens_a_pipeline_breaker_elsewhere_and_back(
    runtimes: list[Runtime],
):
    a, b = runtimes
    standalone = a.breakers.get_or_create("svc", BREAKER)
    pipeline = b.pipeline("svc", circuit_breaker=BREAKER)
    ready(a)
    ready(b)
    assert a.breakers.status()["svc"]["fleet_probe"] == "idle"  # it is a fleet member

    fail(standalone)
    assert state(standalone) == "open"
    assert wait_until(lambda: pipeline.status()["circuit_breaker"]["state"] == "open")
    with pytest.raises(CircuitOpen):
        pipeline.call(lambda: "not called")

    standalone.reset()
    handle = b.breakers.get("svc")  # the pipeline's breaker, through the manager
    assert handle is not None
    handle.reset()
    assert b.backend is not None
    published = b.backend.fleet.trips_published
    with pytest.raises(ZeroDivisionError):
        pipeline.call(lambda: 1 / 0)  # and the other way round
    assert wait_until(lambda: state(standalone) == "open")
    assert b.backend.fleet.trips_published == published + 1


def test_backend_memory_keeps_a_standalone_breaker_in_the_process(runtimes: list[Runtime]):
    a, b = runtimes
    local = a.breakers.get_or_create("svc", BREAKER, backend="memory")
    shared = a.breakers.get_or_create("other", BREAKER)
    tripper = b.breakers.get_or_create("svc", BREAKER)
    b.breakers.get_or_create("other", BREAKER)
    ready(a)
    ready(b)
    assert "fleet_probe" not in local.get_status()
    assert a.backend is not None
    assert a.backend.fleet.status()["breakers"] == ["other"]

    fail(tripper)
    fail(b.breakers.get_or_create("other"))
    assert wait_until(lambda: state(shared) == "open")  # published after svc's trip
    drained(a)
    assert state(local) == "closed"

    fail(local)  # its own trip is not published
    drained(a)
    assert a.backend.fleet.trips_published == 0


def test_an_existing_breaker_keeps_its_backend(runtimes: list[Runtime], redis_server: Any):
    a, _ = runtimes
    handle = a.breakers.get_or_create("svc", BREAKER)
    assert a.breakers.get_or_create("svc") is handle
    assert a.breakers.get_or_create("svc", backend=redis_server.url) is handle
    with pytest.raises(ValueError, match="already exists with <RedisBackend"):
        a.breakers.get_or_create("svc", backend="memory")
    local = a.breakers.get_or_create("local", backend="memory")
    assert a.breakers.get_or_create("local", backend="memory") is local
    with pytest.raises(ValueError, match="already exists in this process only"):
        a.breakers.get_or_create("local", backend=redis_server.url)


def test_a_manager_that_owns_its_runtime_takes_a_backend(redis_server: Any, namespace: str):
    config = BackendConfig(redis_server.url, namespace=namespace)
    with Runtime(name=namespace, backend=config) as rt:
        watched = rt.breakers.get_or_create("svc", BREAKER)
        ready(rt)
        with CircuitBreakerManager(backend=config) as manager:
            assert manager.runtime.backend is not None
            tripper = manager.get_or_create("svc", BREAKER)
            ready(manager.runtime)
            fail(tripper)
            assert wait_until(lambda: state(watched) == "open")
        assert manager.runtime.state == "stopped"


def test_a_manager_without_a_backend_stays_in_the_process():
    with CircuitBreakerManager(clock=ManualClock()) as manager:
        handle = manager.get_or_create("svc", BREAKER)
        assert manager.runtime.backend is None
        fail(handle)
        assert state(handle) == "open"
        assert "fleet_probe" not in handle.get_status()


def test_a_manager_on_a_runtime_takes_the_runtimes_backend_only(redis_server: Any):
    with Runtime() as rt, pytest.raises(ValueError, match="either a runtime or a backend"):
        CircuitBreakerManager(rt, backend=redis_server.url)
