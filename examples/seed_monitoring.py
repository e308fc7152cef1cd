"""Seed section "Best Practices 2: Monitoring Integration": events as JSON lines, and metrics.

Run with ``.venv/bin/python examples/seed_monitoring.py`` (``--quick`` shortens the retry
delays, for the test suite; the run takes about a second). The example configures structlog
(garrison never does) to print one JSON object per line, as a daemon would for its log
shipper. A pipeline in front of a flaky local service then produces the seed's signals:
``garrison.retry.multiple_retries`` (the seed's "WARNING: Multiple retries"),
``garrison.breaker.opened`` with ``alert: true`` (its "ALERT: Circuit breaker open"), and one
``garrison.reliability_metric`` line per operation (the seed's ``RELIABILITY_METRIC``: the
pipeline is built with ``monitor=True``). Last, it scrapes the runtime's Prometheus metrics
once.
"""

from __future__ import annotations

import argparse
import contextlib
import threading

import structlog
from prometheus_client import generate_latest

from garrison import CircuitBreakerConfig, CircuitOpen, RetriesExhausted, RetryConfig, Runtime
from garrison.observability.metrics import register

SHOWN = ("garrison.breaker.", "garrison.retry.", "garrison.reliability_metric")


def only_reliability_events(_logger: object, _method: str, event: dict) -> dict:
    if not str(event.get("event", "")).startswith(SHOWN):
        raise structlog.DropEvent
    return event


class FlakyService:
    def __init__(self) -> None:
        self.failures_left = 0
        self.calls = 0
        self.lock = threading.Lock()

    def fetch(self, item: int) -> dict[str, object]:
        with self.lock:
            self.calls += 1
            fail = self.failures_left > 0
            self.failures_left -= fail
        if fail:
            raise ConnectionError("connection reset by peer")
        return {"item": item}


def call(api, service: FlakyService, item: int) -> None:
    """One call; its reliability metric is logged by the pipeline (monitor=True)."""
    with contextlib.suppress(CircuitOpen, RetriesExhausted):
        api.call(service.fetch, item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter retry delays")
    delay = 0.01 if parser.parse_args().quick else 0.05
    structlog.configure(
        processors=[
            only_reliability_events,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),  # info and up
    )
    service = FlakyService()
    with Runtime(name="monitoring") as rt:
        api = rt.pipeline(
            "fetch",
            retry=RetryConfig(max_attempts=3, base_delay=delay, max_delay=delay * 4),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=4, recovery_timeout=30),
            monitor=True,  # one garrison.reliability_metric event per operation
        )
        print("# a healthy call, a call that needs 3 attempts, then an outage:", flush=True)
        call(api, service, 1)
        service.failures_left = 2
        call(api, service, 2)
        service.failures_left = 100
        for item in (3, 4):
            call(api, service, item)

        collector = register(rt)
        lines = generate_latest(collector.registry).decode().splitlines()
        wanted = ("garrison_circuitbreaker_state{", "garrison_retry_calls_total{")
        print("# one Prometheus scrape (excerpt):")
        for line in lines:
            if line.startswith(wanted) and not line.endswith(" 0.0"):
                print(line)
        print(f"# {len(lines)} lines scraped in all")


if __name__ == "__main__":
    main()
