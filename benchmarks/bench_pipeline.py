"""Pipelines against their bare peers, in the same run (issue 6's benchmarks).

- **Sequential latency**: a blocking ``api.call(noop)`` through a pipeline with all six stages
  (fallback, retry, circuit breaker, rate limiter, timeout, bulkhead; generous limits), against
  a bare pykka chain of the same depth: six plain ``pykka.ThreadingActor`` s, each ``tell`` ing
  ``(payload, reply)`` to the next, the last one setting the pykka future the caller waits on.
  Target: at most 1.25x. For reference, the same chain with 12 actors: the number of mailbox
  hops the pipeline really makes (7 forward: six stages and the worker; 5 back: the bulkhead,
  timeout, breaker, retry and fallback each see the outcome before the caller does, DESIGN.md
  rule 2).
- **Rejection latency** against one bare ``pykka.ActorRef.ask``: a breaker forced open
  (``rt.breakers.get(name).force_open()``), and a rate limiter (``on_limit="reject"``) whose
  limit is used up, each the outermost stage of its pipeline (breaker, limiter, timeout,
  bulkhead; retry and fallback in front would turn the rejection into a wait or a value).
  Target: at most 1.25x. For reference, the rate-limited rejection behind a retry stage
  (``max_attempts=1``) and the breaker, which both observe it on its way back.
- **Throughput** of 1 ms I/O-bound operations (``time.sleep(0.001)``) from 64 caller threads
  through a pipeline whose bulkhead runs 32 at once (``max_workers=32``, a large queue),
  against a bare ``ThreadPoolExecutor(32)`` (each caller submits and waits). Target: at least
  0.9x. For reference, the same through all six stages.
- **Failing downstream**: 4 threads each make ``FAILING_CALLS`` calls of a function that fails
  after 20 ms, through a garrison breaker handle (``rt.breakers.get_or_create(...).call``) and
  through pybreaker (which holds its lock across the call, so calls are serialised), both
  opening after 5 failures. Total wall time; the ratio is reported.

Each figure is the median of several rounds, the variants of a round back to back so they
share the machine's noise (it is shared, with 2 cores): ratios matter, not absolute numbers.
Prints a table and writes benchmarks/results/pipeline.json. ``--profile`` instead profiles
the sequential pipeline call in every thread (cProfile on each thread's CPU clock) and prints
the hot spots.
"""

from __future__ import annotations

import cProfile
import io
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pybreaker
import pykka
import structlog

from garrison import Runtime
from garrison.actors.bulkhead import BulkheadConfig
from garrison.errors import CircuitOpen, RateLimited
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

ROUNDS = 7
SEQUENTIAL_CALLS = 2_000
REJECTIONS = 3_000
CALLERS = 64
CALLS_PER_CALLER = 60
POOL = 32
IO_TIME = 0.001
THROUGHPUT_ROUNDS = 5
FAILING_THREADS = 4
FAILING_CALLS = 50
FAIL_AFTER = 0.020
FAIL_MAX = 5
FAILING_ROUNDS = 5
TIMEOUT = 30.0
TARGETS = {"latency": 1.25, "rejection": 1.25, "throughput": 0.9}


def noop() -> None:
    return None


def io_bound() -> None:
    time.sleep(IO_TIME)


class DownstreamError(ConnectionError):
    pass


def failing() -> None:
    time.sleep(FAIL_AFTER)
    raise DownstreamError("the service is down")


# -- peers ------------------------------------------------------------------------------------


class Forward(pykka.ThreadingActor):
    """One link of the bare chain: tells ``(payload, reply)`` on, or answers at the end."""

    def __init__(self, next_ref: pykka.ActorRef[Any] | None) -> None:
        super().__init__()
        self.next_ref = next_ref

    def on_receive(self, message: Any) -> Any:
        if self.next_ref is None:
            payload, reply = message
            reply.set(payload)
        else:
            self.next_ref.tell(message)
        return None


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def start_chain(depth: int) -> list[pykka.ActorRef[Any]]:
    refs: list[pykka.ActorRef[Any]] = []
    next_ref = None
    for _ in range(depth):
        next_ref = Forward.start(next_ref)
        refs.append(next_ref)
    refs.reverse()
    return refs


# -- pipelines ---------------------------------------------------------------------------------


def full_pipeline(rt: Runtime, name: str, bulkhead: BulkheadConfig) -> Pipeline:
    """All six stages, limits that never bite."""
    return rt.pipeline(
        name,
        rate_limit=RateLimitConfig(per_second=1_000_000),
        circuit_breaker=CircuitBreakerConfig(),
        retry=RetryConfig(max_attempts=3),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=bulkhead,
        fallback="fallback",
    )


# -- measuring ---------------------------------------------------------------------------------


def sequential_us(variants: dict[str, Callable[[int], None]], n: int) -> dict[str, float]:
    """Median microseconds per call of each variant; the variants of a round back to back."""
    for fn in variants.values():
        fn(max(n // 10, 50))  # warm up
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(ROUNDS):
        for label, fn in variants.items():
            start = time.perf_counter()
            fn(n)
            samples[label].append((time.perf_counter() - start) / n * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


def repeat(
    call: Callable[[], Any], catch: type[BaseException] | None = None
) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            if catch is None:
                call()
                continue
            try:
                call()
            except catch:
                pass
            else:
                raise AssertionError("expected a rejection")

    return run


def wall_seconds(threads: int, work: Callable[[], None]) -> float:
    """Run ``work`` in ``threads`` threads started together; seconds until all finished."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            work()
        except BaseException as error:
            errors.append(error)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def medians_of_rounds(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, fn in variants.items():
            samples[label].append(fn())
    return {label: statistics.median(values) for label, values in samples.items()}


def row(
    ours: float, theirs: float, peer: str, unit: str, target: str | None = None
) -> dict[str, Any]:
    ratio = ours / theirs
    result: dict[str, Any] = {
        "garrison": round(ours, 2),
        "peer": round(theirs, 2),
        "peer_name": peer,
        "unit": unit,
        "ratio": round(ratio, 3),
    }
    if target is not None:
        bound = TARGETS[target]
        result["target"] = f">= {bound}" if target == "throughput" else f"<= {bound}"
        result["met"] = ratio >= bound if target == "throughput" else ratio <= bound
    return result


# -- the benchmarks ----------------------------------------------------------------------------


def latency_rows(rt: Runtime) -> dict[str, dict[str, Any]]:
    api = full_pipeline(rt, "latency", BulkheadConfig(max_workers=4, max_queue=100))
    chain6 = start_chain(6)
    chain12 = start_chain(12)
    try:

        def through_chain(first: pykka.ActorRef[Any]) -> Callable[[], Any]:
            def call() -> Any:
                reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
                first.tell((None, reply))
                return reply.get(timeout=TIMEOUT)

            return call

        us = sequential_us(
            {
                "pipeline": repeat(lambda: api.call(noop)),
                "chain6": repeat(through_chain(chain6[0])),
                "chain12": repeat(through_chain(chain12[0])),
            },
            SEQUENTIAL_CALLS,
        )
    finally:
        for ref in chain6 + chain12:
            ref.stop()
    return {
        "sequential latency: 6-stage pipeline vs 6-actor pykka chain": row(
            us["pipeline"], us["chain6"], "pykka chain x6", "us/call", "latency"
        ),
        "(ref) 6-stage pipeline vs 12-actor pykka chain": row(
            us["pipeline"], us["chain12"], "pykka chain x12", "us/call"
        ),
    }


def rejection_rows(rt: Runtime) -> dict[str, dict[str, Any]]:
    small = BulkheadConfig(max_workers=1, max_queue=10)
    opened = rt.pipeline(
        "rejecting-breaker",
        circuit_breaker=CircuitBreakerConfig(),
        rate_limit=RateLimitConfig(per_second=1_000_000),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=small,
    )
    breaker = rt.breakers.get("rejecting-breaker")
    assert breaker is not None
    breaker.force_open()
    exhausted = RateLimitConfig(per_hour=1, on_limit="reject")
    limited = rt.pipeline(
        "rejecting-limiter",
        rate_limit=exhausted,
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=small,
    )
    deep = rt.pipeline(
        "rejecting-limiter-deep",
        retry=RetryConfig(max_attempts=1),
        circuit_breaker=CircuitBreakerConfig(),
        rate_limit=exhausted,
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=small,
    )
    limited.call(noop)  # use the one call of the hour
    deep.call(noop)
    echo = Echo.start()
    try:
        us = sequential_us(
            {
                "open breaker": repeat(lambda: opened.call(noop), CircuitOpen),
                "rate limited": repeat(lambda: limited.call(noop), RateLimited),
                "rate limited deep": repeat(lambda: deep.call(noop), RateLimited),
                "pykka ask": repeat(lambda: echo.ask(None, timeout=TIMEOUT)),
            },
            REJECTIONS,
        )
    finally:
        echo.stop()
    ask = us["pykka ask"]
    return {
        "rejection latency: open breaker vs pykka ask": row(
            us["open breaker"], ask, "pykka ask", "us/call", "rejection"
        ),
        "rejection latency: rate limited vs pykka ask": row(
            us["rate limited"], ask, "pykka ask", "us/call", "rejection"
        ),
        "(ref) rate limited behind retry+breaker vs pykka ask": row(
            us["rate limited deep"], ask, "pykka ask", "us/call"
        ),
    }


def throughput_rows(rt: Runtime) -> dict[str, dict[str, Any]]:
    pool_config = BulkheadConfig(max_workers=POOL, max_concurrent=POOL, max_queue=10_000)
    bulkhead_only = rt.pipeline("throughput", bulkhead=pool_config)
    six_stages = full_pipeline(rt, "throughput-full", pool_config)
    executor = ThreadPoolExecutor(POOL)
    total = CALLERS * CALLS_PER_CALLER

    def through(api: Pipeline) -> Callable[[], float]:
        def work() -> None:
            for _ in range(CALLS_PER_CALLER):
                api.call(io_bound)

        return lambda: total / wall_seconds(CALLERS, work)

    def pooled() -> float:
        def work() -> None:
            for _ in range(CALLS_PER_CALLER):
                executor.submit(io_bound).result(TIMEOUT)

        return total / wall_seconds(CALLERS, work)

    try:
        variants = {
            "bulkhead": through(bulkhead_only),
            "six stages": through(six_stages),
            "executor": pooled,
        }
        for fn in variants.values():
            fn()  # warm up
        ops = medians_of_rounds(variants, THROUGHPUT_ROUNDS)
    finally:
        executor.shutdown()
    return {
        f"throughput: {CALLERS} callers, 1 ms ops, bulkhead {POOL} vs ThreadPoolExecutor({POOL})": (
            row(
                ops["bulkhead"],
                ops["executor"],
                f"ThreadPoolExecutor({POOL})",
                "ops/s",
                "throughput",
            )
        ),
        f"(ref) the same through all six stages vs ThreadPoolExecutor({POOL})": row(
            ops["six stages"], ops["executor"], f"ThreadPoolExecutor({POOL})", "ops/s"
        ),
    }


def failing_rows(rt: Runtime) -> dict[str, dict[str, Any]]:
    handle = rt.breakers.get_or_create(
        "failing", CircuitBreakerConfig(failure_threshold=FAIL_MAX, recovery_timeout=60.0)
    )

    def calls(call: Callable[[Callable[[], None]], Any]) -> Callable[[], None]:
        def work() -> None:
            for _ in range(FAILING_CALLS):
                with suppress(DownstreamError, CircuitOpen, pybreaker.CircuitBreakerError):
                    call(failing)

        return work

    def garrison_run() -> float:
        handle.reset()
        return wall_seconds(FAILING_THREADS, calls(handle.call)) * 1e3

    def pybreaker_run() -> float:
        breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=60)
        return wall_seconds(FAILING_THREADS, calls(breaker.call)) * 1e3

    ms = medians_of_rounds({"garrison": garrison_run, "pybreaker": pybreaker_run}, FAILING_ROUNDS)
    label = (
        f"failing downstream: {FAILING_THREADS} threads x {FAILING_CALLS} calls failing "
        f"after 20 ms, total"
    )
    return {label: row(ms["garrison"], ms["pybreaker"], "pybreaker", "ms")}


# -- profile -----------------------------------------------------------------------------------


def profile() -> None:
    """Profile sequential pipeline calls in every thread and print the hot spots."""
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profiling(*_args: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start_profiling)  # every thread started from now on profiles itself
    try:
        with Runtime(name="profile") as rt:
            api = full_pipeline(rt, "profiled", BulkheadConfig(max_workers=4, max_queue=100))
            main_profiler = cProfile.Profile(time.thread_time)
            profilers.append(main_profiler)
            main_profiler.enable()
            for _ in range(SEQUENTIAL_CALLS * 2):
                api.call(noop)
            main_profiler.disable()
    finally:
        threading.setprofile(None)
    for profiler in profilers:
        profiler.disable()
    stats = pstats.Stats(profilers[0], stream=io.StringIO())
    for profiler in profilers[1:]:
        stats.add(profiler)
    # Each thread's profiler reads that thread's CPU clock: waiting for a message or a reply
    # costs nothing, so what shows is the work done per call, by function and by module.
    entries = [
        (tottime, calls, f"{Path(file).name}:{line}({name})")
        for (file, line, name), (_, calls, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    entries.sort(reverse=True)
    by_module: dict[str, float] = {}
    for tottime, _, where in entries:
        module = where.split(":")[0]
        by_module[module] = by_module.get(module, 0.0) + tottime
    calls = SEQUENTIAL_CALLS * 2
    busy = sum(tottime for tottime, _, _ in entries)
    print(f"{calls} sequential calls through six stages, CPU time of every thread:")
    print(f"{busy / calls * 1e6:.1f} us per call under the profiler (which inflates it)")
    print(f"{'us/call':>8} {'calls/call':>10}  function")
    for tottime, n, where in entries[:25]:
        print(f"{tottime / calls * 1e6:>8.2f} {n / calls:>10.1f}  {where}")
    print(f"\n{'us/call':>8}  module")
    for module, tottime in sorted(by_module.items(), key=lambda item: -item[1])[:15]:
        print(f"{tottime / calls * 1e6:>8.2f}  {module}")


# -- one core ----------------------------------------------------------------------------------


def one_core_rows() -> None:
    """Print the latency and rejection rows as JSON, measured with every thread on one CPU."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any thread starts
    with Runtime(name="bench-one-core") as rt:
        rows = {**latency_rows(rt), **rejection_rows(rt)}
    print(json.dumps(rows))


def pinned_rows() -> dict[str, dict[str, Any]]:
    """The latency and rejection rows again, in a child process pinned to one CPU.

    Across two cores a round trip's cost is mostly how fast the other core wakes up (on this
    shared VM, 14 us to 90 us for the same bare pykka ask, from run to run); on one core it
    is the work done and the context switches, which is what the targets are about.
    """
    if not hasattr(os, "sched_setaffinity"):
        return {}
    done = subprocess.run(
        [sys.executable, __file__, "--one-core-rows"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        f"{label} (one core)": row for label, row in rows.items() if not label.startswith("(ref)")
    }


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    # garrison never configures logging; this program does: only errors, to keep the table
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if "--profile" in sys.argv[1:]:
        profile()
        return
    if "--one-core-rows" in sys.argv[1:]:
        one_core_rows()
        return
    started = time.perf_counter()
    with Runtime(name="bench") as rt:
        rows = {
            **latency_rows(rt),
            **rejection_rows(rt),
            **throughput_rows(rt),
            **failing_rows(rt),
        }
    rows.update(pinned_rows())
    elapsed = time.perf_counter() - started

    print(f"{'benchmark':<78} {'garrison':>10} {'peer':>10} {'unit':>8} {'ratio':>7}  target")
    for label, result in rows.items():
        target = ""
        if "target" in result:
            target = f"{result['target']} {'met' if result['met'] else 'MISSED'}"
        print(
            f"{label:<78} {result['garrison']:>10} {result['peer']:>10} {result['unit']:>8}"
            f" {result['ratio']:>7}  {target}"
        )
    print(f"(peers: {', '.join(sorted({r['peer_name'] for r in rows.values()}))}; {elapsed:.0f} s)")
    out = Path(__file__).parent / "results" / "pipeline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "pykka": version("pykka"),
                "pybreaker": version("pybreaker"),
                "rounds": ROUNDS,
                "throughput_rounds": THROUGHPUT_ROUNDS,
                "failing_rounds": FAILING_ROUNDS,
                "sequential_calls": SEQUENTIAL_CALLS,
                "rejections": REJECTIONS,
                "callers": CALLERS,
                "calls_per_caller": CALLS_PER_CALLER,
                "seconds": round(elapsed, 1),
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
