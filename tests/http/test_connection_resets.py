"""Connections that break mid-request, against the live server (tests/http/conftest.py).

``/reset/{mode}/{tag}?n=K`` breaks the connection for the first K requests of a path: a TCP
reset before any answer (``before``), part of the headers (``headers``), the headers and part
of the body (``body``). Each is a connection error for the breaker; idempotent methods are
retried by a retry stage, POST and PATCH are not resent (``RequestInDoubt``) unless
``retry_non_idempotent``; every request gets exactly one outcome.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from garrison import (
    CircuitBreakerConfig,
    CircuitOpen,
    RetriesExhausted,
    RetryConfig,
    TimeoutConfig,
)
from garrison.http import NotResent, RequestInDoubt

RESET_MODES = ("before", "headers", "body")  # the live server's /reset/{mode} (conftest.py)
FAST_RETRY = RetryConfig(max_attempts=3, base_delay=0.01, jitter=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("mode", RESET_MODES)
def test_a_reset_is_a_transport_error_and_a_breaker_failure(client, server, mode):
    api = client(circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30))
    for _ in range(2):
        with pytest.raises(httpx.TransportError) as caught:
            api.get(f"/reset/{mode}/a", params={"n": "10"})
        assert not isinstance(caught.value, httpx.ConnectError)  # it broke after sending
    with pytest.raises(CircuitOpen):
        api.get(f"/reset/{mode}/a", params={"n": "10"})
    assert server.recorder.per_path == {f"/reset/{mode}/a": 2}
    http = api.status()["http"]
    assert http["transport_errors"] == 2
    assert http["responses"] == {}


@pytest.mark.parametrize("mode", RESET_MODES)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_requests_are_retried_after_a_reset(client, server, mode, method):
    api = client(retry=FAST_RETRY, circuit_breaker=CircuitBreakerConfig(failure_threshold=5))
    response = api.request(method, f"/reset/{mode}/c", params={"n": "1"})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "method": method}
    hits = server.recorder.at(f"/reset/{mode}/c")
    assert [hit.method for hit in hits] == [method, method]
    assert api.pipeline.status()["retry"]["succeeded_after_retry"] == 1


@pytest.mark.parametrize("mode", RESET_MODES)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_non_idempotent_requests_are_not_resent_after_a_reset(client, server, mode, method):
    api = client(
        retry=FAST_RETRY,
        # recovery longer than the retry's max_delay: CircuitOpen is not retried (waited for)
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=120),
    )
    with pytest.raises(RequestInDoubt) as caught:
        api.request(method, f"/reset/{mode}/d", params={"n": "1"}, json={"order": 1})
    error = caught.value
    assert not isinstance(error, NotResent)
    assert isinstance(error.error, httpx.TransportError)
    assert error.__cause__ is error.error
    assert (error.method, error.url) == (method, f"{server.url}/reset/{mode}/d")
    assert f"{method} {server.url}/reset/{mode}/d" in str(error)
    assert "not sent again" in str(error)
    assert len(server.recorder.at(f"/reset/{mode}/d")) == 1  # sent once, never again
    with pytest.raises(CircuitOpen):  # it counted as a connection failure
        api.get("/ok")


@pytest.mark.parametrize("mode", RESET_MODES)
def test_non_idempotent_requests_are_resent_when_configured(client, server, mode):
    api = client(retry=FAST_RETRY, retry_non_idempotent=True)
    response = api.post(f"/reset/{mode}/e", params={"n": "1"}, json={"order": 1})
    assert response.json() == {"ok": True, "method": "POST"}
    assert len(server.recorder.at(f"/reset/{mode}/e")) == 2


def test_a_post_refused_before_sending_is_retried(client):
    api = client(base_url=f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY)
    with pytest.raises(RetriesExhausted) as caught:
        api.post("/ok", json={"order": 1})
    assert caught.value.attempts == 3  # a refused connection never reached a server
    assert isinstance(caught.value.last_error, httpx.ConnectError)
    assert api.status()["http"]["transport_errors"] == 3


def test_a_post_that_timed_out_is_not_resent(client, server, wait_for_retired_workers):
    api = client(
        retry=RetryConfig(max_attempts=3, base_delay=0.01, jitter=False),
        timeout=TimeoutConfig(base_timeout=0.2, adaptive=False),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
        http_timeout=2.0,
    )
    with pytest.raises(NotResent) as caught:
        api.post("/slow", params={"delay": "0.5"})
    assert caught.value.error is None
    assert "may have reached the server" in str(caught.value)
    assert len(server.recorder.at("/slow")) == 1
    # The timeout counted once for the breaker; the refusal (nothing sent) did not.
    assert api.status()["circuit_breaker"]["state"] == "closed"
    assert api.get("/slow", params={"delay": "0.01"}).status_code == 200  # GETs are resent
    wait_for_retired_workers(api)  # the worker stuck in the timed-out call


def test_every_request_gets_exactly_one_typed_outcome(client, server):
    api = client(
        retry=RetryConfig(max_attempts=2, base_delay=0.01, jitter=False),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=1000, min_calls=1000, window_size=1000
        ),
    )
    requests = []
    expected: list[type[BaseException] | int] = []
    for index in range(8):
        mode = RESET_MODES[index % len(RESET_MODES)]
        requests += [
            {"endpoint": f"/reset/{mode}/g{index}", "params": {"n": "1"}},  # retried: 200
            {"endpoint": f"/reset/{mode}/h{index}", "params": {"n": "9"}},  # retried, fails
            {"endpoint": f"/reset/{mode}/p{index}", "method": "POST", "json": {"i": index}},
            {"endpoint": f"/ok/{index}", "method": "POST", "json": {"i": index}},
        ]
        expected += [200, RetriesExhausted, RequestInDoubt, 200]
    outcomes = api.request_many(requests)
    assert len(outcomes) == len(requests)
    for request, outcome, want in zip(requests, outcomes, expected, strict=True):
        if want == 200:
            assert isinstance(outcome, httpx.Response), (request, outcome)
            assert outcome.status_code == 200
        else:
            assert isinstance(outcome, want), (request, outcome)  # type: ignore[arg-type]
        if isinstance(outcome, RetriesExhausted):
            assert isinstance(outcome.last_error, httpx.TransportError)
    counts = server.recorder.per_path
    for index in range(8):
        mode = RESET_MODES[index % len(RESET_MODES)]
        assert counts[f"/reset/{mode}/g{index}"] == 2
        assert counts[f"/reset/{mode}/h{index}"] == 2
        assert counts[f"/reset/{mode}/p{index}"] == 1
        assert counts[f"/ok/{index}"] == 1
