"""Fused pipelines (one StageHost runs every stage, the default) and ``fused=False`` ones
share limits and trips alike, and both decide a deep backlog in batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import drained, wait_until

import redis
from garrison import CircuitBreakerConfig, CircuitOpen, RateLimitConfig, RateLimited, Runtime
from garrison._ref import actor_of
from garrison.actors._host import HostedRef, StageHost
from garrison.actors._stage import Stage
from garrison.backends import BackendConfig
from garrison.pipeline import Pipeline
from garrison.testing import ManualClock

BREAKER = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)


@pytest.fixture
def pair(redis_server: Any, namespace: str) -> Iterator[tuple[Runtime, Runtime]]:
    """Two processes of one fleet (same backend and name), each on its own manual clock.

    Redis calls may wait long here (a paused Redis), without the link giving up."""
    config = BackendConfig(redis_server.url, socket_timeout=10.0)
    made = [Runtime(name=namespace, clock=ManualClock(100.0), backend=config) for _ in range(2)]
    for rt in made:
        rt.start()
    yield made[0], made[1]
    for rt in made:
        rt.stop()


def ready(*runtimes: Runtime) -> None:
    for rt in runtimes:
        assert rt.backend is not None
        assert rt.backend.fleet.subscribed.wait(5)
        drained(rt)


def outcomes(futures: list[Any]) -> tuple[int, int]:
    """(admitted, rate limited) of submitted calls; any other outcome fails the test."""
    admitted = limited = 0
    for future in futures:
        try:
            future.get(10)
            admitted += 1
        except RateLimited:
            limited += 1
    return admitted, limited


def limiter_status(api: Pipeline) -> dict[str, Any]:
    status: dict[str, Any] = api.status()["rate_limiter"]
    return status


def test_a_deep_backlog_is_decided_in_batches_and_the_limit_is_shared(
    pair: tuple[Runtime, Runtime], redis_server: Any
):
    a, b = pair
    limit = RateLimitConfig(limits={"1m": 30})
    fused = a.pipeline("api", rate_limit=limit)
    separate = b.pipeline("api", rate_limit=limit, fused=False)
    ready(a, b)
    client = redis.Redis.from_url(redis_server.url)
    try:
        # Redis holds every script until unpaused: the limiters' queues grow meanwhile
        client.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            futures = [api.submit(lambda: None) for _ in range(25) for api in (fused, separate)]
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert outcomes(futures) == (30, 20)  # one limit for both processes, exactly
    finally:
        client.close()
    for api in (fused, separate):
        status = limiter_status(api)
        assert status["shared"]["shared_decisions"] == 25
        assert status["shared"]["local_decisions"] == 0
        assert 1 <= status["batches"] <= 3, status["batches"]  # not 25 batches of one


def test_trips_and_probes_reach_fused_and_separate_breakers(pair: tuple[Runtime, Runtime]):
    a, b = pair
    fused = a.pipeline("svc", circuit_breaker=BREAKER)
    separate = b.pipeline("svc", circuit_breaker=BREAKER, fused=False)
    ready(a, b)

    def state(api: Pipeline) -> str:
        return str(api.status()["circuit_breaker"]["state"])

    with pytest.raises(ZeroDivisionError):
        fused.call(lambda: 1 / 0)
    assert wait_until(lambda: state(separate) == "open")
    with pytest.raises(CircuitOpen):
        separate.call(lambda: "not called")

    assert isinstance(a.clock, ManualClock)
    a.clock.advance(30)  # the fused breaker asks for the fleet's probe lock and gets it
    assert wait_until(lambda: fused.status()["circuit_breaker"]["fleet_probe"] == "granted")
    assert fused.call(lambda: "probe") == "probe"
    assert wait_until(lambda: state(separate) == "closed")  # the recovery reached it too

    with pytest.raises(ZeroDivisionError):
        separate.call(lambda: 1 / 0)  # and the other way round
    assert wait_until(lambda: state(fused) == "open")
    with pytest.raises(CircuitOpen):
        fused.call(lambda: "not called")


def test_stages_that_talk_to_redis_stay_on_their_hosts_thread(pair: tuple[Runtime, Runtime]):
    """A Redis decision may wait for the network: it never runs in a caller's thread."""
    a, _ = pair
    api = a.pipeline("home", rate_limit=RateLimitConfig(per_second=100), circuit_breaker=BREAKER)
    ready(a)
    ref = api.stages["rate_limiter"]
    assert isinstance(ref, HostedRef)
    assert ref.settle(5)
    host = actor_of(ref.host.actor_ref)
    assert isinstance(host, StageHost)
    assert host._thread is not None
    limiter = actor_of(ref.actor_ref)
    assert isinstance(limiter, Stage)
    assert not limiter.runs_inline()
    seen: list[int] = []
    decide = limiter.handle_execute

    def spy(message: Any, reply: Any) -> None:
        seen.append(threading.get_ident())
        decide(message, reply)

    limiter.handle_execute = spy  # type: ignore[method-assign]
    assert api.call(lambda: "done") == "done"
    assert seen == [host._thread.ident]
