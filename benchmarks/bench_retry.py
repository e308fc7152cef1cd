"""Retry success path against tenacity and stamina, and the RetryActor against bare pykka.

All in one run, so the ratios compare like with like on this (shared, noisy) machine:

- **decorator-style success path** (the operation succeeds at once, per call): a plain call
  (the floor), a minimal retry loop over garrison's pure ``RetryPolicy`` (call, then
  ``on_success()``, which refunds the budget), ``tenacity.retry`` and ``stamina.retry``, all
  configured alike: 3 attempts, exponential backoff from 1 s, retry on ConnectionError;
- **actor round trip**: a blocking ``Ref.ask(Execute(fn))`` through a ``RetryActor`` (which
  observes the outcome before answering) versus a ``WorkerActor`` (garrison without retry) and
  a bare ``pykka.ActorRef.ask`` to an actor that calls the function.

Each figure is the median of ROUNDS rounds. Prints a table and writes
benchmarks/results/retry.json. Needs tenacity and stamina (``pip install tenacity stamina``).
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import stamina
import tenacity

from garrison import Execute, Ref
from garrison.actors import WorkerActor
from garrison.actors.retry import RetryActor
from garrison.policies.backoff import RetryBudgetConfig, RetryConfig, RetryPolicy

ROUNDS = 7
CALLS = 20_000
ASKS = 5_000

# ``--quick``: a smoke run (benchmarks/report.py --quick); the figures mean little
QUICK = __name__ == "__main__" and "--quick" in sys.argv[1:]
if QUICK:
    ROUNDS, CALLS, ASKS = 3, 2_000, 500


def per_op_us(fn: Callable[[int], None], n: int) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def operation() -> int:
    return 42


# -- decorator-style retry wrappers ---------------------------------------------------------


CONFIG = RetryConfig(
    max_attempts=3,
    base_delay=1.0,
    max_delay=10.0,
    retry_exceptions=(ConnectionError,),
    budget=RetryBudgetConfig(),
)


def garrison_policy_wrapper(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A minimal synchronous retry loop over the pure policy (what a decorator would do)."""
    policy = RetryPolicy(CONFIG, random.Random(1))
    clock = time.monotonic

    def call() -> Any:
        attempt = 1
        started = clock()
        previous: float | None = None
        while True:
            try:
                result = fn()
            except Exception as error:
                decision = policy.on_error(
                    attempt, error, clock(), started, previous_delay=previous
                )
                if not decision.retry:
                    raise
                previous = decision.backoff
                time.sleep(decision.delay)
                attempt += 1
                continue
            policy.on_success()
            return result

    return call


def tenacity_wrapper(fn: Callable[[], Any]) -> Callable[[], Any]:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=1, max=10),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )(fn)


def stamina_wrapper(fn: Callable[[], Any]) -> Callable[[], Any]:
    return stamina.retry(on=ConnectionError, attempts=3, wait_initial=1.0, wait_max=10.0)(fn)


def loop(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


# -- actors ---------------------------------------------------------------------------------


class PykkaRunner(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message()


def main() -> None:
    rows: dict[str, dict[str, Any]] = {}

    plain = loop(operation)
    wrapped = {
        "garrison RetryPolicy": loop(garrison_policy_wrapper(operation)),
        "tenacity": loop(tenacity_wrapper(operation)),
        "stamina": loop(stamina_wrapper(operation)),
    }
    for run in (plain, *wrapped.values()):  # warm up
        run(1_000)
    floor = per_op_us(plain, CALLS)
    success = {label: per_op_us(run, CALLS) for label, run in wrapped.items()}
    ours = success["garrison RetryPolicy"]
    rows["success path (per call)"] = {
        "plain_call_us": round(floor, 3),
        **{f"{label}_us": round(us, 3) for label, us in success.items()},
        "tenacity_over_garrison": round(success["tenacity"] / ours, 2),
        "stamina_over_garrison": round(success["stamina"] / ours, 2),
        "garrison_overhead_us": round(ours - floor, 3),
    }

    pykka_ref = PykkaRunner.start()
    worker = Ref(WorkerActor.start())
    retry = Ref(RetryActor.start(RetryConfig(max_attempts=3)))
    try:
        message = Execute(operation)

        def pykka_ask(n: int) -> None:
            for _ in range(n):
                pykka_ref.ask(operation)

        def worker_ask(n: int) -> None:
            for _ in range(n):
                worker.ask(message)

        def retry_ask(n: int) -> None:
            for _ in range(n):
                retry.ask(message)

        for run in (pykka_ask, worker_ask, retry_ask):
            run(500)
        # interleave so the three share the machine's noise
        results: dict[str, list[float]] = {"pykka": [], "worker": [], "retry": []}
        for _ in range(3):
            results["pykka"].append(per_op_us(pykka_ask, ASKS))
            results["worker"].append(per_op_us(worker_ask, ASKS))
            results["retry"].append(per_op_us(retry_ask, ASKS))
        p, w, r = (statistics.median(results[k]) for k in ("pykka", "worker", "retry"))
        rows["actor round trip (per ask)"] = {
            "pykka_ask_us": round(p, 2),
            "garrison_worker_us": round(w, 2),
            "retry_actor_us": round(r, 2),
            "retry_over_pykka": round(r / p, 2),
            "retry_over_worker": round(r / w, 2),
        }
    finally:
        pykka_ref.stop()
        worker.stop()
        retry.stop()

    s = rows["success path (per call)"]
    print("retry success path, per call (median of rounds)")
    print(f"  {'plain call':<22} {s['plain_call_us']:>8} us")
    for label in wrapped:
        print(f"  {label:<22} {s[label + '_us']:>8} us")
    print(
        f"  tenacity / garrison = {s['tenacity_over_garrison']}x, "
        f"stamina / garrison = {s['stamina_over_garrison']}x"
    )
    a = rows["actor round trip (per ask)"]
    print("actor round trip, blocking ask (median of rounds)")
    print(f"  {'bare pykka ask':<22} {a['pykka_ask_us']:>8} us")
    print(f"  {'garrison WorkerActor':<22} {a['garrison_worker_us']:>8} us")
    print(f"  {'garrison RetryActor':<22} {a['retry_actor_us']:>8} us")
    print(f"  retry / pykka = {a['retry_over_pykka']}x, retry / worker = {a['retry_over_worker']}x")

    out = Path(__file__).parent / "results" / "retry.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "tenacity": _version("tenacity"),
                "stamina": _version("stamina"),
                "quick": QUICK,
                "rounds": ROUNDS,
                "calls": CALLS,
                "asks": ASKS,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


def _version(dist: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(dist)


if __name__ == "__main__":
    main()
