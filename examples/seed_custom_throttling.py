"""Seed section "Custom Throttling Implementation": several windows per client key.

Run with ``.venv/bin/python examples/seed_custom_throttling.py`` (``--quick`` is accepted for
the test suite; the run takes about a second). The seed's ``ProductionRateLimiter`` keeps
every timestamp of the last hour per client and sleeps; garrison's limiter checks all the
windows of ``limits={"1s": 5, "1m": 100, "1h": 1000}`` together, per client ``key``, and
answers over-limit requests at once with ``RateLimited(retry_after)``. Three clients send
bursts; each has its own budget; a rejected client comes back after ``retry_after``.
"""

from __future__ import annotations

import argparse
import threading
import time

import structlog

from garrison import RateLimitConfig, RateLimited, Runtime


class LocalService:
    """The operation being throttled: counts what it really processed, per client."""

    def __init__(self) -> None:
        self.processed: dict[str, int] = {}
        self.lock = threading.Lock()

    def process(self, client_id: str, item: int) -> dict[str, object]:
        with self.lock:
            self.processed[client_id] = self.processed.get(client_id, 0) + 1
        return {"id": item, "processed": True}


def burst(api, service: LocalService, client_id: str, count: int) -> tuple[int, list[float]]:
    """Send ``count`` requests for ``client_id`` at once; return (admitted, retry_afters)."""
    view = api.options(key=f"{client_id}:api_call", name="api_call")
    futures = [view.submit(service.process, client_id, i) for i in range(count)]
    admitted, retry_afters = 0, []
    for future in futures:
        try:
            future.get(timeout=5)
            admitted += 1
        except RateLimited as error:
            retry_afters.append(error.retry_after)
    return admitted, retry_afters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the test suite")
    parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    service = LocalService()
    with Runtime(name="throttling") as rt:
        api = rt.pipeline(
            "api_call",
            rate_limit=RateLimitConfig(limits={"1s": 5, "1m": 100, "1h": 1000}, on_limit="reject"),
        )
        print(f"limits per client: {api.status()['rate_limiter']['limits']}")
        longest_wait = 0.0
        for client_id, count in (("alice", 8), ("bob", 3), ("carol", 5)):
            admitted, waits = burst(api, service, client_id, count)
            line = f"  {client_id:<5} sent {count}: {admitted} admitted, {len(waits)} rejected"
            if waits:
                longest_wait = max(longest_wait, *waits)
                line += f" (retry_after {min(waits):.2f}s .. {max(waits):.2f}s)"
            print(line)

        print(f"alice waits the {longest_wait:.2f}s she was told, then tries again:")
        time.sleep(longest_wait)
        admitted, waits = burst(api, service, "alice", 5)
        print(f"  alice sent 5: {admitted} admitted, {len(waits)} rejected")

        status = api.status()["rate_limiter"]
        print(f"processed by the service: {service.processed}")
        print(
            f"limiter: {status['admitted']} admitted, {status['rejected']} rejected, "
            f"{status['keys']} client keys tracked (one bucket each, every window checked)"
        )


if __name__ == "__main__":
    main()
