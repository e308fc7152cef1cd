"""The HTTP client against a real local server (uvicorn + starlette on 127.0.0.1).

The server records every request it sees (monotonic and wall time, method, path, query), so
limits, priorities and Retry-After are asserted on the server's side of the wire.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from garrison import (
    BulkheadConfig,
    CircuitBreakerConfig,
    CircuitOpen,
    ConfigError,
    OperationTimeout,
    RateLimitConfig,
    RateLimited,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.http import (
    HttpClientConfig,
    HttpClientError,
    HttpServerError,
    HttpStatusError,
    RateLimitResponse,
    ServiceUnavailable,
    TooManyRequests,
    build_http_client,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------


def test_get_post_put_delete_return_responses(client, server):
    api = client(headers={"X-Default": "yes"})
    response = api.get("/ok", params={"q": "1"}, headers={"X-Test": "t"})
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.json() == {
        "method": "GET",
        "path": "/ok",
        "query": {"q": "1"},
        "json": None,
        "x_test": "t",
        "x_default": "yes",
    }
    assert api.post("/ok", json={"a": 1}).json()["json"] == {"a": 1}
    assert api.put("/ok/item", json=[1, 2]).json()["method"] == "PUT"
    assert api.delete("/ok/item").json()["method"] == "DELETE"
    assert api.request("patch", "/ok").json()["method"] == "PATCH"
    assert [hit.method for hit in server.recorder.hits] == ["GET", "POST", "PUT", "DELETE", "PATCH"]
    http = api.status()["http"]
    assert http["responses"] == {200: 5}
    assert http["base_url"] == server.url


def test_arequest_awaits_without_blocking(client):
    api = client()

    async def main() -> int:
        response = await api.arequest("GET", "/ok")
        return response.status_code

    assert asyncio.run(main()) == 200


def test_pipeline_is_registered_on_the_runtime(rt, client):
    api = client(circuit_breaker=CircuitBreakerConfig())
    assert rt.pipelines()["http:api"] is api.pipeline
    assert rt.breakers.get("http:api").get_status()["state"] == "closed"
    with pytest.raises(ValueError, match="already exists"):
        client()


def test_timeout_stage_bounds_a_slow_request(client, server, wait_for_retired_workers):
    api = client(timeout=TimeoutConfig(base_timeout=0.2, adaptive=False), http_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        api.get("/slow", params={"delay": "0.6"})
    assert time.monotonic() - started < 0.5
    assert api.get("/slow", params={"delay": "0.01"}).json() == {"slow": True}
    # The worker stuck in the timed-out call was retired; it ends when the call returns.
    wait_for_retired_workers(api)  # the worker stuck in the timed-out call


# ---------------------------------------------------------------------------------------------
# 429 / 503: Retry-After, feedback to the limiter, retries
# ---------------------------------------------------------------------------------------------


def test_429_retry_after_seconds_is_honoured_and_feeds_the_limiter(client, server):
    api = client(
        rate_limit=RateLimitConfig(per_second=50, throttle_strategy="adaptive"),
        retry=RetryConfig(max_attempts=3, base_delay=0.01),
    )
    response = api.get("/limited/a", params={"n": "1", "after": "0.6"})
    assert response.status_code == 200
    first, second = server.recorder.at("/limited/a")
    assert second.monotonic - first.monotonic >= 0.6  # not before the server asked
    limiter = api.pipeline.status()["rate_limiter"]
    assert limiter["feedbacks"] >= 1
    assert limiter["rate_factor"] < 1.0  # the adaptive throttle slowed down
    assert api.status()["http"]["responses"] == {429: 1, 200: 1}
    retry = api.pipeline.status()["retry"]
    assert retry["succeeded_after_retry"] == 1


def test_429_retry_after_http_date_is_honoured(client, server):
    api = client(
        rate_limit=RateLimitConfig(per_second=50),
        retry=RetryConfig(max_attempts=3, base_delay=0.01),
    )
    response = api.get("/limited-date/b")
    assert response.status_code == 200
    first, second = server.recorder.at("/limited-date/b")
    assert first.wall < second.wall
    target = server.recorder.date_targets["/limited-date/b"]
    assert second.wall >= target  # the date the server gave, on the server's clock
    assert api.pipeline.status()["rate_limiter"]["feedbacks"] == 1


def test_429_without_retry_stage_raises_typed_error_and_pauses_admissions(client, server):
    api = client(rate_limit=RateLimitConfig(per_second=50))  # no retry stage
    with pytest.raises(TooManyRequests) as caught:
        api.get("/limited/c", params={"n": "5", "after": "3"})
    error = caught.value
    assert isinstance(error, RateLimitResponse)
    assert isinstance(error, HttpStatusError)
    assert error.status == 429
    assert error.retry_after == 3.0
    assert error.response.json() == {"error": "slow down"}
    # The limiter honours the server's pause: the next request is refused locally (a retry
    # stage would retry that RateLimited after its retry_after instead).
    with pytest.raises(RateLimited) as paused:
        api.get("/ok")
    assert 2.0 < paused.value.retry_after <= 3.0
    assert server.recorder.per_path == {"/limited/c": 1}


def test_rate_limit_answer_longer_than_max_delay_is_not_waited_for(client, server):
    api = client(retry=RetryConfig(max_attempts=3, base_delay=0.01, max_delay=1.0))
    retried = api.config.stages()["retry"].retry_exceptions
    assert TooManyRequests in retried
    assert ServiceUnavailable in retried
    with pytest.raises(TooManyRequests) as caught:
        api.get("/limited/d", params={"n": "5", "after": "30"})
    assert caught.value.retry_after == 30.0
    assert server.recorder.per_path == {"/limited/d": 1}


# ---------------------------------------------------------------------------------------------
# The circuit breaker
# ---------------------------------------------------------------------------------------------


def test_5xx_open_the_breaker_then_circuit_open_without_hitting_the_server(client, server):
    api = client(circuit_breaker=CircuitBreakerConfig(failure_threshold=3, recovery_timeout=30))
    for _ in range(3):
        with pytest.raises(HttpServerError) as caught:
            api.get("/burst/e", params={"n": "10"})
        assert caught.value.status_code == 500
    with pytest.raises(CircuitOpen):
        api.get("/burst/e", params={"n": "10"})
    assert server.recorder.per_path == {"/burst/e": 3}
    assert api.status()["circuit_breaker"]["state"] == "open"


@pytest.mark.parametrize("count_4xx", [False, True])
def test_4xx_do_not_open_the_breaker_unless_asked(client, server, count_4xx):
    api = client(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
        count_4xx_as_failures=count_4xx,
    )
    outcomes = []
    for _ in range(4):
        try:
            api.get("/status/404")
        except (HttpClientError, CircuitOpen) as error:
            outcomes.append(type(error))
    if count_4xx:
        assert outcomes == [HttpClientError, HttpClientError, CircuitOpen, CircuitOpen]
        assert server.recorder.per_path == {"/status/404": 2}
    else:
        assert outcomes == [HttpClientError] * 4
        assert server.recorder.per_path == {"/status/404": 4}
        assert api.status()["circuit_breaker"]["state"] == "closed"


def test_429_never_opens_the_breaker(client, server):
    api = client(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30),
        retry_on_rate_limit=False,
    )
    for index in range(3):
        with pytest.raises(TooManyRequests):
            api.get(f"/limited/f{index}", params={"n": "1", "after": "0"})
    assert api.status()["circuit_breaker"]["state"] == "closed"


def test_503_outage_opens_the_breaker_and_it_recovers(client, server):
    api = client(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=0.3),
        retry_on_rate_limit=False,
    )
    server.recorder.outage = True
    for _ in range(2):
        with pytest.raises(ServiceUnavailable) as caught:
            api.get("/outage")
        assert caught.value.retry_after is None
    with pytest.raises(CircuitOpen):
        api.get("/outage")
    assert server.recorder.per_path == {"/outage": 2}
    server.recorder.outage = False
    time.sleep(0.35)
    assert api.get("/outage").status_code == 200  # the half-open probe
    assert api.status()["circuit_breaker"]["state"] == "closed"


def test_503_retried_after_the_outage_when_retry_on_rate_limit(client, server):
    api = client(retry=RetryConfig(max_attempts=5, base_delay=0.05, jitter=False))
    server.recorder.outage = True
    threading.Timer(0.12, setattr, (server.recorder, "outage", False)).start()
    assert api.get("/outage").status_code == 200
    assert len(server.recorder.at("/outage")) >= 2


def test_connection_refused_counts_as_a_failure(client):
    api = client(
        base_url=f"http://127.0.0.1:{free_port()}",
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
    )
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            api.get("/ok")
    with pytest.raises(CircuitOpen):
        api.get("/ok")
    assert api.status()["http"]["transport_errors"] == 2


# ---------------------------------------------------------------------------------------------
# request_many, limits on the wire
# ---------------------------------------------------------------------------------------------


def test_request_many_returns_outcomes_in_input_order_by_priority(client, server):
    api = client(
        rate_limit=RateLimitConfig(limits={"100ms": 1}, on_limit="wait", priority_queue=True)
    )
    requests = [
        {"endpoint": "/ok/0", "priority": "low"},
        {"endpoint": "/ok/1", "priority": "low"},
        {"endpoint": "/ok/2", "priority": "normal", "method": "POST", "json": {"i": 2}},
        {"endpoint": "/ok/3", "priority": "high"},
        {"endpoint": "/status/404", "priority": "normal"},
        {"endpoint": "/ok/5", "priority": "high", "params": {"i": "5"}},
    ]
    outcomes = api.request_many(requests)
    assert len(outcomes) == 6
    assert [o.json()["path"] for o in outcomes if isinstance(o, httpx.Response)] == [
        "/ok/0",
        "/ok/1",
        "/ok/2",
        "/ok/3",
        "/ok/5",
    ]
    assert isinstance(outcomes[4], HttpClientError)
    assert outcomes[2].json()["json"] == {"i": 2}
    assert outcomes[5].json()["query"] == {"i": "5"}
    # The first is admitted at once; the queued ones leave by priority, FIFO within one.
    assert [hit.path for hit in server.recorder.hits] == [
        "/ok/0",
        "/ok/3",
        "/ok/5",
        "/ok/2",
        "/status/404",
        "/ok/1",
    ]


def test_server_never_sees_more_than_the_limit_in_any_window(client, server):
    api = client(rate_limit=RateLimitConfig(limits={"200ms": 2}, on_limit="wait"))
    outcomes = api.request_many([{"endpoint": f"/ok/{i}"} for i in range(8)])
    assert all(isinstance(o, httpx.Response) and o.status_code == 200 for o in outcomes)
    times = sorted(hit.monotonic for hit in server.recorder.hits)
    assert len(times) == 8
    slack = 0.08  # the wire and a loaded machine add jitter between admission and arrival
    for index in range(len(times) - 2):
        assert times[index + 2] - times[index] >= 0.2 - slack


# ---------------------------------------------------------------------------------------------
# Seed options, bad input
# ---------------------------------------------------------------------------------------------

SEED = {
    "base_url": "https://api.example.com",
    "rate_limit_per_second": 10,
    "rate_limit_per_minute": 100,
    "rate_limit_per_hour": 1000,
    "throttle_strategy": "adaptive",
    "backoff_multiplier": 1.5,
    "max_wait_time": 60.0,
    "queue_size": 1000,
    "queue_timeout": 300,
    "priority_queue": True,
    "retry_on_rate_limit": True,
    "max_retries": 3,
    "retry_delay": 5.0,
}


def test_seed_options_map_to_config_fields():
    config = HttpClientConfig.from_seed(SEED)
    rate = config.rate_limit
    assert rate is not None
    assert (rate.per_second, rate.per_minute, rate.per_hour) == (10, 100, 1000)
    assert rate.throttle_strategy == "adaptive"
    assert rate.backoff_multiplier == 1.5
    assert rate.max_wait_time == 60.0
    assert (rate.queue_size, rate.queue_timeout, rate.priority_queue) == (1000, 300.0, True)
    assert rate.on_limit == "wait"  # a queue is configured
    retry = config.stages()["retry"]
    assert (retry.max_attempts, retry.base_delay) == (4, 5.0)
    assert TooManyRequests in retry.retry_exceptions
    assert ServiceUnavailable in retry.retry_exceptions
    assert "httpx.TransportError" in retry.retry_exceptions
    no_queue = HttpClientConfig.from_seed(
        {"base_url": SEED["base_url"], "rate_limit_per_second": 5}
    )
    assert no_queue.rate_limit is not None
    assert no_queue.rate_limit.on_limit == "reject"
    off = HttpClientConfig.from_seed({**SEED, "retry_on_rate_limit": False})
    assert TooManyRequests not in off.stages()["retry"].retry_exceptions


def test_seed_options_are_validated():
    with pytest.raises(ConfigError, match="rate_limit_per_sec"):
        HttpClientConfig.from_seed({**SEED, "rate_limit_per_sec": 10})
    with pytest.raises(ConfigError, match="rate_limit_per_second"):
        HttpClientConfig.from_seed({**SEED, "rate_limit_per_second": 0})
    with pytest.raises(ConfigError, match="not both"):
        HttpClientConfig.from_seed(SEED, rate_limit=RateLimitConfig(per_second=1))
    with pytest.raises(ConfigError, match="max_retries"):
        HttpClientConfig.from_seed({**SEED, "max_retries": -1})
    with pytest.raises(ConfigError, match="base_url"):
        HttpClientConfig.from_seed({"rate_limit_per_second": 1})


def test_seed_options_build_the_pipeline(rt, client, server):
    seed = {key: value for key, value in SEED.items() if key != "base_url"}
    api = client("seeded", **seed)
    status = api.pipeline.status()
    assert status["rate_limiter"]["limits"] == {"1s": 10, "1m": 100, "1h": 1000}
    assert status["rate_limiter"]["on_limit"] == "wait"
    assert status["retry"]["config"]["max_attempts"] == 4
    assert api.get("/ok").status_code == 200


def test_bad_input_is_refused_before_anything_is_sent(rt, client, server):
    with pytest.raises(ConfigError, match="base_url"):
        build_http_client(rt, "relative", "/api/v1")
    with pytest.raises(ConfigError, match="base_url"):
        build_http_client(rt, "no-scheme", "api.example.com")
    api = client()
    with pytest.raises(ValueError, match="unknown HTTP method"):
        api.request("FETCH", "/ok")
    with pytest.raises(ValueError, match="relative to base_url"):
        api.get("http://elsewhere.example.com/steal")
    with pytest.raises(TypeError, match=r"requests\[1\] must be a dict"):
        api.request_many([{"endpoint": "/ok"}, "/ok"])
    with pytest.raises(ValueError, match=r"requests\[0\].*unknown HTTP method"):
        api.request_many([{"endpoint": "/ok", "method": "BREW"}, {"endpoint": "/ok"}])
    with pytest.raises(ValueError, match="unknown keys"):
        api.request_many([{"endpoint": "/ok", "prio": "high"}])
    with pytest.raises(ValueError, match="priority"):
        api.get("/ok", priority="urgent")
    assert server.recorder.hits == []


def test_worker_threads_have_their_own_pools_and_share_cookies(client, server):
    api = client(bulkhead=BulkheadConfig(max_workers=4, max_queue=20))
    assert api.get("/cookie/set", params={"value": "abc"}).json() == {"set": True}
    echoes = [{"endpoint": f"/cookie/echo/{i}", "params": {"delay": "0.05"}} for i in range(8)]
    outcomes = api.request_many(echoes)  # slow answers: the four workers all send
    assert [o.json() for o in outcomes] == [{"session": "abc"}] * 8  # type: ignore[union-attr]
    assert api.status()["http"]["connection_pools"] == 4  # one per worker that sent


def test_a_given_transport_is_shared_by_the_workers(rt):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"mock": True})

    api = build_http_client(
        rt, "mocked", "http://mock.invalid/api", transport=httpx.MockTransport(handler)
    )
    with api:
        outcomes = api.request_many([{"endpoint": f"/items/{i}"} for i in range(4)])
        assert [o.json() for o in outcomes] == [{"mock": True}] * 4  # type: ignore[union-attr]
        assert sorted(seen) == [f"http://mock.invalid/api/items/{i}" for i in range(4)]
        assert api.status()["http"]["connection_pools"] == 1


def test_close_releases_the_pool_and_refuses_later_requests(client):
    api = client()
    assert api.get("/ok").status_code == 200
    api.close()
    api.close()
    assert api.closed
    with pytest.raises(RuntimeError, match="closed"):
        api.get("/ok")


def test_retry_on_rate_limit_false_does_not_retry_429(client, server):
    api = client(retry=RetryConfig(max_attempts=3, base_delay=0.01), retry_on_rate_limit=False)
    with pytest.raises(TooManyRequests):
        api.get("/limited/g", params={"n": "1", "after": "0"})
    assert server.recorder.per_path == {"/limited/g": 1}


def test_rt_http_client_builds_one_and_the_runtime_closes_it(server):
    with Runtime(name="rt-http") as runtime:
        api = runtime.http_client(
            "api_client",
            base_url=server.url,
            rate_limit=RateLimitConfig(per_second=10, per_minute=100, per_hour=1000),
            circuit_breaker=CircuitBreakerConfig(),
        )
        assert api.get("/ok").status_code == 200
        assert runtime.breakers.get("http:api_client") is not None
    assert api.closed


def test_http_sections_of_a_config_file_configure_rt_http_client(server):
    config = {
        "http": {
            "api_client": {
                "base_url": server.url,
                "rate_limit_per_second": 10,
                "rate_limit_per_minute": 100,
                "max_retries": 2,
                "retry_delay": 0.01,
            }
        }
    }
    with Runtime.from_config(config, name="rt-config") as runtime:
        api = runtime.http_client("api_client")
        assert api.get("/ok").status_code == 200
        stages = api.status()
        assert stages["rate_limiter"]["limits"] == {"1s": 10, "1m": 100}
        assert stages["retry"]["config"]["max_attempts"] == 3


def test_a_bad_http_section_is_a_config_error_with_its_path():
    with pytest.raises(ConfigError) as info:
        Runtime.from_config({"http": {"api_client": {"base_url": "x", "rate_limit_per_secnd": 1}}})
    assert info.value.key.startswith("http.api_client.")


def test_http_errors_pickle_with_their_response():
    import pickle  # noqa: PLC0415

    from garrison.http import ServiceUnavailable  # noqa: PLC0415

    request = httpx.Request("GET", "http://127.0.0.1:9/data")
    response = httpx.Response(503, headers={"Retry-After": "2"}, content=b"down", request=request)
    error = pickle.loads(pickle.dumps(ServiceUnavailable(response, retry_after=2.0)))
    assert isinstance(error, ServiceUnavailable)
    assert (error.status_code, error.retry_after) == (503, 2.0)
    assert error.response.text == "down"
    assert error.response.headers["retry-after"] == "2"
    assert (
        str(error)
        == "GET http://127.0.0.1:9/data answered 503 Service Unavailable; retry after 2.000s"
    )
