"""A worker process of the multi-process Redis tests: ``python _worker.py <mode> <json>``.

Prints one JSON line on stdout: ``{"ready": true}`` when set up (trip mode), then its result.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import structlog

from garrison import CircuitBreakerConfig, RateLimitConfig, Runtime
from garrison.backends import BackendConfig

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def share(args: dict[str, Any]) -> dict[str, Any]:
    """Push requests through a shared 50/s limit from ``start`` for ``duration`` seconds."""
    admitted = rejected = 0
    # timeouts that a loaded CI machine does not exceed: this test is about sharing, not outages
    backend = BackendConfig(args["url"], socket_timeout=1.0, connect_timeout=1.0)
    with Runtime(name=args["namespace"], backend=backend) as rt:
        api = rt.pipeline(
            "api",
            rate_limit=RateLimitConfig(
                limits=args["limits"], on_limit="wait", max_wait_time=None, queue_timeout=30
            ),
        )
        while time.time() < args["start"]:
            time.sleep(0.001)
        end = time.monotonic() + args["duration"]
        in_flight: list[Any] = []
        while time.monotonic() < end:
            in_flight = [f for f in in_flight if not f.done()]
            while len(in_flight) < args["depth"]:
                in_flight.append(api.submit(_noop))
            time.sleep(0.002)
        done = [f for f in in_flight if f.done()]
        status = api.status()["rate_limiter"]
        admitted, rejected = status["admitted"], status["rejected"]
        del done
    return {
        "admitted": admitted,
        "rejected": rejected,
        "batches": status["batches"],
        "local_decisions": status["shared"]["local_decisions"],
    }


def trip_watch(args: dict[str, Any]) -> dict[str, Any]:
    """Report when this process's breaker opens (it never fails a call itself)."""
    with Runtime(name=args["namespace"], backend=args["url"]) as rt:
        api = rt.pipeline(
            "svc", circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)
        )
        assert rt.backend is not None
        if not rt.backend.fleet.subscribed.wait(10):
            return {"error": "not subscribed"}
        print(json.dumps({"ready": True}), flush=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if api.status()["circuit_breaker"]["state"] == "open":
                return {"opened_at": time.time()}
            time.sleep(0.0005)
    return {"error": "never opened"}


def _noop() -> None:
    return None


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    result = {"share": share, "trip_watch": trip_watch}[mode](json.loads(raw))
    print(json.dumps(result), flush=True)
