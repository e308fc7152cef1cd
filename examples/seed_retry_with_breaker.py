"""Seed section "Retry Node with Circuit Breaker": retry outside, breaker inside.

Run with ``.venv/bin/python examples/seed_retry_with_breaker.py`` (``--quick`` shortens the
breaker's recovery timeout, for the test suite). One pipeline has the seed's retry node
(3 attempts, exponential backoff with jitter, only ConnectionError/TimeoutError) and circuit
breaker (5 failures, 50 % error rate over at least 10 calls). The local service goes down:
the retries' failures open the breaker, then calls are refused with ``CircuitOpen`` without
reaching the service; it comes back, the breaker's half-open probe succeeds and it closes.
"""

from __future__ import annotations

import argparse
import threading
import time

import structlog

from garrison import CircuitBreakerConfig, CircuitOpen, RetriesExhausted, RetryConfig, Runtime


class ExternalAPI:
    """A local stand-in for https://external-api.com/data that can go down."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.lock = threading.Lock()

    def post(self, item: int) -> dict[str, object]:
        with self.lock:
            self.calls += 1
        time.sleep(0.002)
        if self.down:
            raise ConnectionError("connection refused")
        return {"item": item, "status": "ok"}


def only_breaker_events(_logger: object, _method: str, event: dict) -> dict:
    if not str(event.get("event", "")).startswith("garrison.breaker."):
        raise structlog.DropEvent
    event["event"] = f"    event: {event['event']}"
    return event


def attempt(api, service: ExternalAPI, item: int) -> None:
    before, t0 = service.calls, time.perf_counter()
    try:
        outcome = f"ok {api.call(service.post, item)}"
    except RetriesExhausted as error:
        outcome = f"RetriesExhausted({error.attempts} attempts, last: {error.last_error!r})"
    except CircuitOpen as error:
        outcome = f"CircuitOpen: {error}"
    state = api.status()["circuit_breaker"]["state"]
    print(
        f"  call {item}: {outcome}\n"
        f"          service hit {service.calls - before}x in {time.perf_counter() - t0:.2f}s;"
        f" breaker {state}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short recovery timeout")
    quick = parser.parse_args().quick
    structlog.configure(  # show the breaker's transitions as they happen, nothing else
        processors=[only_breaker_events, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(20),
    )
    recovery = 0.3 if quick else 1.0  # the seed's 30 s, scaled down
    service = ExternalAPI()
    with Runtime(name="retry-breaker") as rt:
        api = rt.pipeline(
            "external_api",
            retry=RetryConfig(
                max_attempts=3,
                base_delay=0.02,
                max_delay=0.2,
                backoff_strategy="exponential",
                jitter=True,
                retry_exceptions=["ConnectionError", "TimeoutError"],
            ),
            circuit_breaker=CircuitBreakerConfig(
                failure_threshold=5,
                recovery_timeout=recovery,
                error_rate_threshold=0.5,
                min_calls=10,
            ),
        )
        print(f"pipeline {api}; recovery_timeout {recovery}s")
        print("service healthy:")
        attempt(api, service, 1)
        print("service goes down:")
        service.down = True
        for item in (2, 3, 4):
            attempt(api, service, item)
        print(f"service back up; waiting out the recovery timeout ({recovery}s)")
        service.down = False
        time.sleep(recovery + 0.05)
        for item in (5, 6):
            attempt(api, service, item)
        retry, breaker = api.status()["retry"], api.status()["circuit_breaker"]
        print(
            f"retry stage: {retry['operations']} operations, {retry['attempts']} attempts, "
            f"{retry['succeeded']} succeeded, gave up {retry['gave_up']}"
        )
        print(f"breaker: {breaker['state']}, calls by kind {breaker['totals']}")
        print(f"the service was called {service.calls}x in all")


if __name__ == "__main__":
    main()
