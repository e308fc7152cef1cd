"""Seed section "Exponential Backoff with Retry": retries on timers, with and without jitter.

Run with ``.venv/bin/python examples/seed_exponential_backoff.py`` (``--quick`` scales the
delays down, for the test suite). The seed's ``robust_external_call`` sleeps between
attempts; garrison's retry stage waits on scheduler timers, so its actor keeps serving other
operations meanwhile. A local endpoint fails a given number of times with ConnectionError;
the example prints when each attempt really happened, for no jitter (delays base, 2·base,
4·base) and the default full jitter, then a non-retryable error and an exhausted retry.
"""

from __future__ import annotations

import argparse
import threading
import time

import structlog

from garrison import RetriesExhausted, RetryConfig, Runtime


class FlakyEndpoint:
    """Fails its first ``failures`` calls with ConnectionError, then processes the data."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()

    def post(self, data: dict[str, object]) -> dict[str, object]:
        with self.lock:
            self.attempts.append(time.perf_counter() - self.t0)
            attempt = len(self.attempts)
        if attempt <= self.failures:
            raise ConnectionError(f"connection refused (attempt {attempt})")
        if data.get("bad"):
            raise ValueError("payload rejected: not retryable")
        return {"status": "processed", "data": data, "attempts": attempt}


def run(rt: Runtime, label: str, config: RetryConfig, failures: int, data: dict) -> None:
    endpoint = FlakyEndpoint(failures)
    caller = rt.pipeline(f"robust_api_caller_{label}", retry=config)
    try:
        result = caller.call(endpoint.post, data)
        outcome = f"success after {result['attempts']} attempt(s)"
    except RetriesExhausted as error:
        outcome = f"RetriesExhausted after {error.attempts} attempts: {error.last_error}"
    except ValueError as error:
        outcome = f"not retried ({type(error).__name__}: {error})"
    times = ", ".join(f"{t:.3f}s" for t in endpoint.attempts)
    gaps = [b - a for a, b in zip(endpoint.attempts, endpoint.attempts[1:], strict=False)]
    print(f"{label}: attempts at t = {times}")
    print(f"  waits between attempts: {', '.join(f'{g:.3f}s' for g in gaps) or 'none'}")
    print(f"  -> {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter delays (test suite)")
    quick = parser.parse_args().quick
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    base = 0.05 if quick else 0.25  # the seed's base_delay is 1.0s; scaled for a short run
    common = {"base_delay": base, "max_delay": 60.0, "backoff_strategy": "exponential"}
    retry_on = ["ConnectionError", "TimeoutError"]  # the seed's retryable errors
    with Runtime(name="backoff") as rt:
        print(f"base_delay {base}s, exponential backoff, max_attempts 4")
        run(
            rt,
            "no_jitter",
            RetryConfig(max_attempts=4, jitter=False, retry_exceptions=retry_on, **common),
            failures=3,
            data={"id": 1},
        )
        run(
            rt,
            "full_jitter",
            RetryConfig(max_attempts=4, jitter=True, retry_exceptions=retry_on, **common),
            failures=3,
            data={"id": 2},
        )
        run(
            rt,
            "non_retryable",
            RetryConfig(max_attempts=4, jitter=True, retry_exceptions=retry_on, **common),
            failures=1,
            data={"id": 3, "bad": True},
        )
        run(
            rt,
            "exhausted",
            RetryConfig(max_attempts=3, jitter="equal", retry_exceptions=retry_on, **common),
            failures=10,
            data={"id": 4},
        )


if __name__ == "__main__":
    main()
