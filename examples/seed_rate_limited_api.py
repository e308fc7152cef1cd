"""Seed section "Rate Limited API Calls": per-second/minute/hour limits and priorities.

Run with ``.venv/bin/python examples/seed_rate_limited_api.py`` (``--quick`` is accepted
for the test suite; the run takes about a second either way). A pipeline with the seed's
``RateLimitedAPINode`` settings (10/s, 100/min, 1000/h, ``on_limit="wait"``, a priority
queue, adaptive throttling) sits in front of a small local API. Ten warm-up requests use up
the second's budget; then the seed's three requests arrive in the *worst* order (low, normal,
high) and wait in the limiter's queue, which admits them high first as slots free up.
"""

from __future__ import annotations

import argparse
import threading
import time

import structlog

from garrison import BulkheadConfig, RateLimitConfig, RateLimitFeedback, Runtime


class LocalAPI:
    """A stand-in for https://api.example.com: records when each endpoint was served."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.served: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def get(self, endpoint: str) -> dict[str, object]:
        time.sleep(0.002)  # the request itself
        with self.lock:
            self.served.append((time.perf_counter() - self.started, endpoint))
        return {"endpoint": endpoint, "status": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the test suite")
    parser.parse_args()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(40),  # errors only
    )
    api = LocalAPI()
    requests = [  # the seed's requests list, sent low first to make the queue work for it
        {"endpoint": "/data/3", "priority": "low"},
        {"endpoint": "/data/2", "priority": "normal"},
        {"endpoint": "/data/1", "priority": "high"},
    ]
    with Runtime(name="rate-limited-api") as rt:
        client = rt.pipeline(
            "api_client",
            rate_limit=RateLimitConfig(
                per_second=10,
                per_minute=100,
                per_hour=1000,
                throttle_strategy="adaptive",
                backoff_multiplier=1.5,
                max_wait_time=60.0,
                queue_size=1000,
                queue_timeout=300,
                priority_queue=True,
                on_limit="wait",
            ),
            bulkhead=BulkheadConfig(max_workers=1, max_queue=100),  # one request at a time
        )
        warmups = [client.submit(api.get, f"/warmup/{i}") for i in range(10)]
        for future in warmups:
            future.get(timeout=10)
        print(f"10 warm-up requests served in {api.served[-1][0]:.2f}s: the 1s window is full")

        futures = []
        for request in requests:
            view = client.options(priority=request["priority"], name=request["endpoint"])
            futures.append((request, view.submit(api.get, request["endpoint"])))
            time.sleep(0.01)  # they really arrive in this order
        depth = client.status()["rate_limiter"]["queue_depth"]
        print(f"sent low, normal, high; waiting in the limiter's queue: {depth}")
        for request, future in futures:
            answer = future.get(timeout=10)
            print(f"  {request['priority']:>6} {request['endpoint']} answered {answer['status']}")

        print("order in which the API served them:")
        for at, endpoint in api.served[10:]:
            print(f"  t={at:5.2f}s {endpoint}")
        order = [endpoint for _, endpoint in api.served[10:]]
        print(f"served in priority order: {order == ['/data/1', '/data/2', '/data/3']}")

        # The service answered 429 Retry-After: 0.3 -> the limiter pauses and slows down.
        client.ref.tell(RateLimitFeedback(retry_after=0.3))
        t0 = time.perf_counter()
        client.call(api.get, "/data/after-429")
        limits = client.status()["rate_limiter"]
        print(
            f"after a 429 with Retry-After 0.3s the next request waited "
            f"{time.perf_counter() - t0:.2f}s; effective limits now {limits['effective_limits']}"
        )
        print(f"admitted {limits['admitted']}, rejected {limits['rejected']}")


if __name__ == "__main__":
    main()
