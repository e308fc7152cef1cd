"""Circuit breaker costs against pybreaker and circuitbreaker, in the same run.

Measures (each figure the median of several rounds; ratios matter, not absolute numbers, as
this machine is shared and noisy):

- the pure policy's decision + record (``before_call`` + ``on_success``, no clock read), and
  the same with clock reads and the protected call, against ``pybreaker.CircuitBreaker.call``
  and a ``circuitbreaker.circuit``-decorated call of the same trivial function;
- ``CircuitBreakerHandle.call`` of a trivial function (two asks to the breaker actor: a
  permit, then the report) against ``pybreaker.call``;
- rejection latency through the breaker actor (forced open): an ``Execute`` ask and a
  handle ``call``, against a bare pykka ask round trip;
- 4 threads x 5 calls of a 20 ms function through one breaker: garrison runs them
  concurrently, pybreaker holds its lock across the call and serialises them.

Needs the benchmark-only packages ``pybreaker`` and ``circuitbreaker``. Prints a table and
writes benchmarks/results/breaker.json.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import circuitbreaker
import pybreaker
import pykka
import structlog

from garrison import CircuitOpen, Execute, Runtime
from garrison.actors.breaker import CircuitBreakerActor, ForceOpen
from garrison.breakers import CircuitBreakerManager
from garrison.policies.breaker import BreakerPolicy, CircuitBreakerConfig

ROUNDS = 7
PURE_CALLS = 200_000
ACTOR_CALLS = 3_000
THREADS = 4
CALLS_PER_THREAD = 5
SLOW_CALL = 0.020

# ``--quick``: a smoke run (benchmarks/report.py --quick); the figures mean little
QUICK = __name__ == "__main__" and "--quick" in sys.argv[1:]
if QUICK:
    ROUNDS, PURE_CALLS, ACTOR_CALLS = 3, 20_000, 300


class PykkaEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def noop() -> None:
    return None


def per_op_us(fn: Callable[[int], None], n: int) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def paired_us(
    ours: Callable[[int], None], theirs: Callable[[int], None], n: int, n_theirs: int | None = None
) -> tuple[float, float]:
    """Medians of per-call microseconds, rounds alternating so both share the machine's noise."""
    n_theirs = n if n_theirs is None else n_theirs
    a, b = [], []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        ours(n)
        a.append((time.perf_counter() - start) / n * 1e6)
        start = time.perf_counter()
        theirs(n_theirs)
        b.append((time.perf_counter() - start) / n_theirs * 1e6)
    return statistics.median(a), statistics.median(b)


def wall_seconds(fn: Callable[[], None], rounds: int = 3) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def in_threads(call: Callable[[Callable[[], None]], Any]) -> Callable[[], None]:
    def slow() -> None:
        time.sleep(SLOW_CALL)

    def worker() -> None:
        for _ in range(CALLS_PER_THREAD):
            call(slow)

    def run() -> None:
        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run


def pure_rows() -> dict[str, dict[str, float]]:
    config = CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30)
    policy = BreakerPolicy(config)
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    decorated = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(noop)
    monotonic = time.monotonic

    def policy_decision(n: int) -> None:
        before, success = policy.before_call, policy.on_success
        now = 1.0
        for _ in range(n):
            success(before(now), 0.0, now)

    def policy_call_path(n: int) -> None:
        before, success = policy.before_call, policy.on_success
        for _ in range(n):
            started = monotonic()
            permit = before(started)
            noop()
            success(permit, monotonic() - started, started)

    def pybreaker_call(n: int) -> None:
        call = pb.call
        for _ in range(n):
            call(noop)

    def circuitbreaker_call(n: int) -> None:
        for _ in range(n):
            decorated()

    def bare_call(n: int) -> None:
        for _ in range(n):
            noop()

    for fn in (policy_decision, policy_call_path, pybreaker_call, circuitbreaker_call):
        fn(10_000)  # warm up
    decision, pyb = paired_us(policy_decision, pybreaker_call, PURE_CALLS)
    path, cbr = paired_us(policy_call_path, circuitbreaker_call, PURE_CALLS)
    bare = per_op_us(bare_call, PURE_CALLS)
    return {
        "policy decision+record vs pybreaker.call": _row(decision, pyb, "pybreaker"),
        "policy decision+record vs circuitbreaker": _row(decision, cbr, "circuitbreaker"),
        "policy call path vs pybreaker.call": _row(path, pyb, "pybreaker"),
        "policy call path vs circuitbreaker": _row(path, cbr, "circuitbreaker"),
        "bare function call (reference)": {"garrison_us": round(bare, 3)},
    }


def actor_rows() -> dict[str, dict[str, float]]:
    pykka_ref = PykkaEcho.start()
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    rows: dict[str, dict[str, float]] = {}
    try:
        with Runtime(name="bench") as rt, CircuitBreakerManager(rt) as breakers:
            handle = breakers.get_or_create("bench", CircuitBreakerConfig())
            opened = rt.spawn(CircuitBreakerActor, CircuitBreakerConfig(), service="open")
            opened.ask(ForceOpen(), timeout=5)
            open_handle = breakers.get_or_create("open-handle", CircuitBreakerConfig())
            open_handle.force_open()
            reject_msg = Execute(noop)

            def handle_call(n: int) -> None:
                call = handle.call
                for _ in range(n):
                    call(noop)

            def pybreaker_call(n: int) -> None:
                call = pb.call
                for _ in range(n):
                    call(noop)

            def execute_rejected(n: int) -> None:
                ask = opened.ask
                for _ in range(n):
                    with suppress(CircuitOpen):
                        ask(reject_msg, 5)

            def handle_rejected(n: int) -> None:
                call = open_handle.call
                for _ in range(n):
                    with suppress(CircuitOpen):
                        call(noop)

            def pykka_ask(n: int) -> None:
                ask = pykka_ref.ask
                for i in range(n):
                    ask(i)

            for fn in (handle_call, execute_rejected, handle_rejected, pykka_ask):
                fn(300)  # warm up
            hc, pyb = paired_us(handle_call, pybreaker_call, ACTOR_CALLS, ACTOR_CALLS * 20)
            rej, ask = paired_us(execute_rejected, pykka_ask, ACTOR_CALLS)
            hrej, ask2 = paired_us(handle_rejected, pykka_ask, ACTOR_CALLS)
            rows["handle.call (closed) vs pybreaker.call"] = _row(hc, pyb, "pybreaker")
            rows["rejection: Execute ask (open) vs pykka ask"] = _row(rej, ask, "pykka ask")
            rows["rejection: handle.call (open) vs pykka ask"] = _row(hrej, ask2, "pykka ask")

            concurrent = in_threads(handle.call)
            serialised = in_threads(pb.call)
            ours = wall_seconds(concurrent)
            theirs = wall_seconds(serialised)
            rows[f"{THREADS} threads x {CALLS_PER_THREAD} x 20 ms call, wall ms"] = {
                "garrison_ms": round(ours * 1e3, 1),
                "peer_ms": round(theirs * 1e3, 1),
                "peer": "pybreaker",
                "ratio": round(ours / theirs, 3),
            }
    finally:
        pykka_ref.stop()
    return rows


def _row(ours: float, theirs: float, peer: str) -> dict[str, Any]:
    return {
        "garrison_us": round(ours, 3),
        "peer_us": round(theirs, 3),
        "peer": peer,
        "ratio": round(ours / theirs, 3),
    }


def main() -> None:
    # garrison never configures logging; this program does: only errors, to keep the table
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    rows = {**pure_rows(), **actor_rows()}
    print(f"{'benchmark':<52} {'garrison':>10} {'peer':>10} {'ratio':>7}  peer")
    for label, row in rows.items():
        ours = row.get("garrison_us", row.get("garrison_ms"))
        theirs = row.get("peer_us", row.get("peer_ms", ""))
        print(
            f"{label:<52} {ours:>10} {theirs:>10} {row.get('ratio', ''):>7}  {row.get('peer', '')}"
        )
    print("(microseconds per call; the threads row is wall-clock milliseconds)")
    out = Path(__file__).parent / "results" / "breaker.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "pybreaker": version("pybreaker"),
                "circuitbreaker": version("circuitbreaker"),
                "pykka": version("pykka"),
                "quick": QUICK,
                "rounds": ROUNDS,
                "pure_calls": PURE_CALLS,
                "actor_calls": ACTOR_CALLS,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
