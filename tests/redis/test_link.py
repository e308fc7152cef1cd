"""The Redis link: scripts on each thread's own connection, the breaker on the link."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _fleet import wait_until
from structlog.testing import capture_logs

import redis
from garrison.backends import BackendConfig
from garrison.backends._connection import BackendDown, RedisLink
from garrison.backends._redis_rate import RedisRateLimit
from garrison.policies.rate import RateLimitConfig


@pytest.fixture
def link(redis_server: Any) -> Iterator[RedisLink]:
    link = RedisLink(
        BackendConfig(redis_server.url, socket_timeout=2.0, failure_threshold=2),
        runtime="link",
    )
    yield link
    link.close()


def limit(link: RedisLink, namespace: str) -> RedisRateLimit:
    return RedisRateLimit(link, RateLimitConfig(limits={"1s": 100}), f"garrison:{namespace}:svc")


def test_a_lost_script_is_loaded_again_alone_and_in_a_batch(link: RedisLink, namespace: str):
    limiter = limit(link, namespace)
    assert limiter.acquire("a").allowed
    link.client.script_flush()
    assert limiter.acquire("a").allowed  # NOSCRIPT: loaded, run again
    link.client.script_flush()
    assert all(d.allowed for d in limiter.acquire_many([("a", 1), ("b", 2)]))
    assert link.client.llen(limiter.redis_key("a")) == 3
    assert link.health.up


def test_only_failures_in_a_row_open_the_link(link: RedisLink, namespace: str):
    limiter = limit(link, namespace)
    link.client.hset(limiter.redis_key("h"), "x", 1)  # WRONGTYPE for the script: it fails
    with pytest.raises(BackendDown, match="WRONGTYPE"):
        limiter.acquire("h")
    assert limiter.acquire("a").allowed  # a success in between: the count starts again
    with pytest.raises(BackendDown):
        limiter.acquire("h")
    assert link.health.up
    with capture_logs() as events, pytest.raises(BackendDown):
        limiter.acquire_many([("a", 1), ("h", 1)])  # a batch with one error fails as a whole
    assert not link.health.up
    assert [e["event"] for e in events] == ["garrison.backend.degraded"]
    assert link.health.errors_total == 3
    with pytest.raises(BackendDown, match="breaker is open"):
        limiter.acquire("a")  # no caller touches Redis while the link is down


def client_id(link: RedisLink) -> int:
    """The id Redis gives the calling thread's own connection."""
    conn = link._connection()
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def test_each_thread_has_its_own_connection_and_close_closes_them(
    link: RedisLink, namespace: str, redis_server: Any
):
    limiter = limit(link, namespace)
    ids: list[int] = []

    def work(tag: str) -> None:
        assert limiter.acquire(tag).allowed
        ids.extend((client_id(link), client_id(link)))

    threads = [threading.Thread(target=work, args=(str(i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert limiter.acquire("main").allowed
    mine = client_id(link)
    assert len(set(ids)) == 3  # one connection per thread, kept between calls
    assert mine not in ids

    link.close()
    with pytest.raises(BackendDown, match="closed"):
        limiter.acquire("a")
    other = redis.Redis.from_url(redis_server.url)
    try:
        assert wait_until(lambda: mine not in {c["id"] for c in other.client_list()})
    finally:
        other.close()
