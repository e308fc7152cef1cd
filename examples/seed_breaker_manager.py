"""Seed section "Advanced Circuit Breaker Configuration": one breaker per service.

Run with ``.venv/bin/python examples/seed_breaker_manager.py`` (``--quick`` is accepted for
the test suite; the run takes well under a second). It builds the seed's three breakers
(external_api, database, cache) with ``CircuitBreakerManager().get_or_create(name, config)``
and the seed's own configs, keeps the seed's ``protected_operation`` shape (sync with
``call``, async with ``acall``), makes the local database fail until its breaker opens, shows
the "Circuit breaker is OPEN" answer and the seed's cached-data fallback, then resets it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import structlog

from garrison import CircuitBreakerConfig, CircuitBreakerManager

configs = {  # the seed's configs, verbatim
    "external_api": CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=30, error_rate_threshold=0.5, min_calls=10
    ),
    "database": CircuitBreakerConfig(
        failure_threshold=3, recovery_timeout=60, error_rate_threshold=0.3, min_calls=5
    ),
    "cache": CircuitBreakerConfig(
        failure_threshold=10, recovery_timeout=10, error_rate_threshold=0.7, min_calls=20
    ),
}


class LocalDatabase:
    def __init__(self) -> None:
        self.up = True

    def count(self, data: list[dict]) -> dict[str, object]:
        if not self.up:
            raise ConnectionError("database connection refused")
        return {"processed": len(data), "timestamp": time.time()}


def as_result(breaker, result: object = None, error: Exception | None = None) -> dict:
    """The seed's result dicts for one protected call's outcome."""
    if error is None:
        return {"status": "success", "result": result, "circuit_state": state(breaker)}
    if "Circuit breaker is OPEN" in str(error):
        return {
            "status": "circuit_open",
            "error": "Service temporarily unavailable",
            "circuit_state": "OPEN",
            "retry_after": round(breaker.get_status().get("retry_after", 30), 1),
        }
    return {"status": "error", "error": str(error), "circuit_state": state(breaker)}


def state(breaker) -> str:
    return breaker.get_status()["state"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the test suite")
    parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    db = LocalDatabase()
    data = [{"id": i} for i in range(3)]
    with CircuitBreakerManager() as cb_manager:
        circuit_breakers = {name: cb_manager.get_or_create(name, c) for name, c in configs.items()}
        assert cb_manager.get_or_create("database") is circuit_breakers["database"]

        def protected_operation(service_name: str, operation_func, *args, **kwargs):
            breaker = circuit_breakers.get(service_name)
            if not breaker:
                raise ValueError(f"No circuit breaker configured for service: {service_name}")
            try:
                return as_result(breaker, breaker.call(operation_func, *args, **kwargs))
            except Exception as error:
                return as_result(breaker, error=error)

        async def aprotected_operation(service_name: str, operation_func, *args, **kwargs):
            breaker = circuit_breakers[service_name]
            try:
                return as_result(breaker, await breaker.acall(operation_func, *args, **kwargs))
            except Exception as error:
                return as_result(breaker, error=error)

        print("database healthy:", protected_operation("database", db.count, data)["status"])
        db.up = False
        for i in range(1, 5):
            r = protected_operation("database", db.count, data)
            print(f"database down, call {i}: {r['status']:<12} {r.get('error')} ", end="")
            print(f"(circuit {r['circuit_state']}, retry_after {r.get('retry_after', '-')})")

        async def process_with_protection() -> dict:
            async def fetch_rows() -> dict:
                await asyncio.sleep(0.01)
                return db.count(data)

            db_result = await aprotected_operation("database", fetch_rows)
            results = []
            if db_result["status"] == "success":
                results.append(db_result["result"])
            elif db_result["status"] == "circuit_open":
                results.append({"fallback": True, "message": "Using cached data"})
            states = {name: state(cb) for name, cb in circuit_breakers.items()}
            return {"results": results, "circuit_states": states}

        print("resilient_data_processor (async):", asyncio.run(process_with_protection()))
        print("cache lookup (async):", asyncio.run(aprotected_operation("cache", dict, hit=1)))
        print("the database is back; an operator resets its breaker:", end=" ")
        db.up = True
        print(circuit_breakers["database"].reset())
        print("after reset:", asyncio.run(process_with_protection()))


if __name__ == "__main__":
    main()
