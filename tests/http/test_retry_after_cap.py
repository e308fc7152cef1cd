"""A huge Retry-After is capped (``max_retry_after``); an HTTP date in the past means 0.

The limiter's pause is checked on an injected ManualClock: the runtime's clock only moves when
the test advances it, while the requests travel to the live server for real.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import httpx
import pytest

from garrison import (
    CircuitBreakerConfig,
    ConfigError,
    RateLimitConfig,
    RateLimited,
    RetryConfig,
    Runtime,
)
from garrison.http import (
    HttpClientConfig,
    NotResent,
    RateLimitResponse,
    RequestInDoubt,
    RetryAfterTooLong,
    ServiceUnavailable,
    TooManyRequests,
    build_http_client,
)
from garrison.testing import ManualClock

BASE = "https://api.example.com"


@pytest.fixture
def manual() -> Iterator[tuple[Runtime, ManualClock]]:
    clock = ManualClock(start=1000.0)
    with Runtime(name="http-manual", clock=clock) as runtime:
        yield runtime, clock


def test_a_huge_retry_after_fails_at_once_and_pauses_the_limiter_for_the_cap(manual, server):
    rt, clock = manual
    api = build_http_client(
        rt, "capped", server.url, rate_limit=RateLimitConfig(per_second=50), max_retry_after=5
    )
    with api:
        with pytest.raises(RetryAfterTooLong) as caught:
            api.get("/limited/a", params={"n": "9", "after": "3600"})
        error = caught.value
        assert isinstance(error, RateLimitResponse)
        assert not isinstance(error, TooManyRequests)
        assert (error.status_code, error.retry_after, error.max_retry_after) == (429, 3600.0, 5.0)
        assert "longer than max_retry_after (5s)" in str(error)
        # The limiter honours the capped pause, on the runtime's clock.
        with pytest.raises(RateLimited) as paused:
            api.get("/ok")
        assert paused.value.retry_after == pytest.approx(5.0)
        clock.advance(4.9)
        with pytest.raises(RateLimited):
            api.get("/ok")
        clock.advance(0.1)
        assert api.get("/ok").status_code == 200
        assert server.recorder.per_path == {"/limited/a": 1, "/ok": 1}
        assert api.pipeline.status()["rate_limiter"]["feedbacks"] == 1


def test_a_huge_retry_after_is_not_retried_even_when_the_retry_could_wait(client, server):
    api = client(
        retry=RetryConfig(max_attempts=3, base_delay=0.01, max_delay=7200),
        max_retry_after=2,
    )
    with pytest.raises(RetryAfterTooLong) as caught:
        api.get("/limited/b", params={"n": "9", "after": "3600"})
    assert caught.value.retry_after == 3600.0
    assert server.recorder.per_path == {"/limited/b": 1}


def test_a_retry_after_within_the_cap_is_still_honoured(client, server):
    api = client(retry=RetryConfig(max_attempts=3, base_delay=0.01), max_retry_after=0.5)
    assert api.get("/limited/c", params={"n": "1", "after": "0.3"}).status_code == 200
    first, second = server.recorder.at("/limited/c")
    assert second.monotonic - first.monotonic >= 0.3


def test_a_huge_retry_after_on_a_503_never_opens_the_breaker(client, server):
    api = client(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=120),
        max_retry_after=1,
    )
    for _ in range(2):
        with pytest.raises(RetryAfterTooLong) as caught:
            api.get("/status/503", params={"after": "86400"})
        assert caught.value.status_code == 503
    assert api.status()["circuit_breaker"]["state"] == "closed"
    with pytest.raises(ServiceUnavailable):  # within the cap: a breaker failure as before
        api.get("/status/503", params={"after": "0"})
    assert api.status()["circuit_breaker"]["state"] == "open"


def test_an_http_date_in_the_past_means_zero(client, server):
    plain = client("plain", rate_limit=RateLimitConfig(per_second=50))
    with pytest.raises(TooManyRequests) as caught:
        plain.get("/limited-past/d")
    assert caught.value.retry_after == 0.0
    assert plain.get("/ok").status_code == 200  # nothing paused
    retried = client(retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False))
    assert retried.get("/limited-past/e").status_code == 200
    assert len(server.recorder.at("/limited-past/e")) == 2


def test_max_retry_after_defaults_to_the_limiters_max_wait_time_else_60_s():
    assert HttpClientConfig(BASE).effective_max_retry_after == 60.0
    limited = HttpClientConfig(BASE, rate_limit=RateLimitConfig(per_second=1, max_wait_time=7))
    assert limited.effective_max_retry_after == 7.0
    unbounded = HttpClientConfig(BASE, rate_limit=RateLimitConfig(per_second=1, max_wait_time=None))
    assert unbounded.effective_max_retry_after == 60.0
    assert HttpClientConfig(BASE, max_retry_after=0).effective_max_retry_after == 0.0
    seeded = HttpClientConfig.from_seed(
        {
            "base_url": BASE,
            "rate_limit_per_second": 5,
            "max_wait_time": 30,
            "max_retry_after": 10,
            "retry_non_idempotent": True,
        }
    )
    assert (seeded.effective_max_retry_after, seeded.retry_non_idempotent) == (10.0, True)


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), True, "60"])
def test_max_retry_after_is_validated(value):
    with pytest.raises(ConfigError, match="max_retry_after"):
        HttpClientConfig(BASE, max_retry_after=value)


def test_retry_non_idempotent_is_validated():
    with pytest.raises(ConfigError, match="retry_non_idempotent"):
        HttpClientConfig(BASE, retry_non_idempotent="yes")  # type: ignore[arg-type]


def test_the_new_errors_pickle():
    request = httpx.Request("GET", "http://127.0.0.1:9/data")
    response = httpx.Response(429, headers={"Retry-After": "3600"}, request=request)
    too_long = pickle.loads(
        pickle.dumps(RetryAfterTooLong(response, retry_after=3600.0, max_retry_after=60.0))
    )
    assert (too_long.status_code, too_long.retry_after, too_long.max_retry_after) == (
        429,
        3600.0,
        60.0,
    )
    assert str(too_long) == (
        "GET http://127.0.0.1:9/data answered 429 Too Many Requests; retry after 3600.000s, "
        "longer than max_retry_after (60s): not waited for, admissions paused for 60s"
    )
    cause = httpx.ReadError("reset")
    doubt = pickle.loads(pickle.dumps(RequestInDoubt("POST", "http://h/x", cause, "reset")))
    assert (type(doubt), doubt.method, doubt.url, doubt.why) == (
        RequestInDoubt,
        "POST",
        "http://h/x",
        "reset",
    )
    assert isinstance(doubt.error, httpx.ReadError)
    refused = pickle.loads(pickle.dumps(NotResent("PATCH", "http://h/y", None, "timed out")))
    assert type(refused) is NotResent
    assert str(refused) == (
        "PATCH http://h/y: timed out; not sent again (PATCH is not idempotent, "
        "retry_non_idempotent=False)"
    )
