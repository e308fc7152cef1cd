"""Seed section "Best Practices 1: Reliability Strategy": the seed's config, as it is.

Run with ``.venv/bin/python examples/seed_reliability_config.py`` (``--quick`` is accepted for
the test suite; the run takes 1-2 s). The seed's ``reliability_config`` dict goes through
``Runtime.from_config`` unchanged, as the defaults of every service, plus a per-service
override for ``database``; ``rt.pipeline(name)`` then builds each service's pipeline from it.
Calls go through both pipelines against a local service; a typo in a config is a
``ConfigError`` that names the full key.
"""

from __future__ import annotations

import argparse
import threading

import structlog

from garrison import ConfigError, RetriesExhausted, Runtime

reliability_config = {  # the seed's dict, verbatim
    "rate_limiting": {
        "per_second": 10,
        "per_minute": 100,
        "per_hour": 1000,
        "strategy": "adaptive",
    },
    "circuit_breaker": {
        "failure_threshold": 5,
        "recovery_timeout": 30,
        "error_rate_threshold": 0.5,
    },
    "retry": {
        "max_attempts": 3,
        "backoff_strategy": "exponential",
        "base_delay": 1.0,
        "max_delay": 10.0,
        "jitter": True,
    },
    "timeout": {"base_timeout": 30.0, "adaptive": True, "max_timeout": 120.0},
}
overrides = {  # the database: more sensitive breaker, quicker retries, a small bulkhead
    "database": {
        "circuit_breaker": {"failure_threshold": 3, "error_rate_threshold": 0.3},
        "retry": {"base_delay": 0.05, "max_delay": 0.2},
        "bulkhead": {"max_workers": 5, "max_concurrent": 3},
    }
}


class LocalService:
    def __init__(self) -> None:
        self.calls = 0
        self.failing = 0  # how many of the next calls fail
        self.lock = threading.Lock()

    def handle(self, request: str) -> dict[str, object]:
        with self.lock:
            self.calls += 1
            fail, self.failing = self.failing > 0, max(0, self.failing - 1)
        if fail:
            raise ConnectionError(f"{request}: connection reset")
        return {"request": request, "status": "success"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the test suite")
    parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    try:
        Runtime.from_config({"circuit_breaker": {"failure_treshold": 5}})
    except ConfigError as error:
        print(f"a typo is refused: ConfigError: {error}")

    config = {"reliability_config": {**reliability_config, "services": overrides}}
    service = LocalService()
    with Runtime.from_config(config, name="reliability") as rt:
        api, db = rt.pipeline("external_api"), rt.pipeline("database")
        for pipeline in (api, db):
            s = pipeline.status()
            print(
                f"{pipeline.name}: {' -> '.join(s)}; limits {s['rate_limiter']['limits']} "
                f"({s['rate_limiter']['throttle_strategy']}), breaker opens after "
                f"{s['circuit_breaker']['failure_threshold']} failures, retry base "
                f"{s['retry']['config']['base_delay']}s, timeout {s['timeout']['timeout']}s, "
                f"{s['bulkhead']['max_concurrent']} at once"
            )
        print("external_api:", api.call(service.handle, "GET /orders"))
        service.failing = 1
        print(
            "external_api after one connection reset (retried):",
            api.call(service.handle, "GET /orders/7"),
        )
        service.failing = 3
        try:
            db.call(service.handle, "SELECT 1")
        except RetriesExhausted as error:
            print(
                f"database down: RetriesExhausted after {error.attempts} attempts:",
                error.last_error,
            )
        print(
            f"breakers: external_api {api.status()['circuit_breaker']['state']}, "
            f"database {db.status()['circuit_breaker']['state']} (its threshold is 3); "
            f"rt.breakers knows {rt.breakers.names()}"
        )
        print(f"the service saw {service.calls} calls")


if __name__ == "__main__":
    main()
