"""Supervision costs, measured in the same run.

- Restart latency: the time from telling a supervised child a message that crashes it to the
  first reply of its next incarnation (the ask sent right behind the crashing tell waits in
  the kept mailbox and is answered by the new incarnation). Median and p99 over ``CRASHES``
  crashes, for a garrison ``Actor`` child and for a plain ``pykka.ThreadingActor`` child.
- The price of supervision on the message path: a blocking ask round trip and pipelined
  asks (send N, then wait for all) through a supervised child's ``Ref``, against
  ``pykka.ActorRef.ask`` on an equivalent unsupervised plain pykka actor.

Prints a table and writes benchmarks/results/supervision.json. Ratios matter, not absolute
numbers: this machine is shared and noisy, so each figure is the median of several rounds,
and the variants of a round run back to back so they share the machine's noise. garrison's
log events below critical are switched off so that the restart figures
measure the restart, not rendering a traceback per crash.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import structlog

from garrison import Actor, Ref
from garrison.supervision import ChildSpec, Supervisor

ROUNDS = 7
ASKS = 5_000
CRASHES = 300

# ``--quick``: a smoke run (benchmarks/report.py --quick); the figures mean little
QUICK = __name__ == "__main__" and "--quick" in sys.argv[1:]
if QUICK:
    ROUNDS, ASKS, CRASHES = 3, 500, 40
TIMEOUT = 10.0

_incarnations = itertools.count()


class Crash(RuntimeError):
    pass


class GarrisonChild(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.incarnation = next(_incarnations)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Crash("on purpose")
        if message == "who":
            return self.incarnation
        return message


class PlainChild(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.incarnation = next(_incarnations)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Crash("on purpose")
        if message == "who":
            return self.incarnation
        return message


def restart_latencies_us(ref: Ref, crashes: int) -> list[float]:
    """Crash the child ``crashes`` times; each sample is crash-tell to new-incarnation reply."""
    samples = []
    before = ref.ask("who", TIMEOUT)
    for _ in range(crashes):
        start = time.perf_counter()
        ref.tell("crash")
        after = ref.ask("who", TIMEOUT)
        samples.append((time.perf_counter() - start) * 1e6)
        if after == before:
            raise AssertionError("the reply did not come from a new incarnation")
        before = after
    return samples


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def per_op_us(variants: dict[str, Callable[[int], None]], n: int) -> dict[str, float]:
    """Median microseconds per op of each variant; the variants of a round run back to back."""
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(ROUNDS):
        for label, fn in variants.items():
            start = time.perf_counter()
            fn(n)
            samples[label].append((time.perf_counter() - start) / n * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


def blocking(ask: Callable[[Any], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for i in range(n):
            ask(i)

    return run


def pipelined(send: Callable[[Any], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        futures = [send(i) for i in range(n)]
        for future in futures:
            future.get(timeout=TIMEOUT)

    return run


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sup = Supervisor.start(
        "bench",
        max_restarts=1_000_000,
        within_seconds=1.0,
        children=[
            ChildSpec("garrison", GarrisonChild),
            ChildSpec("plain", PlainChild),
        ],
    )
    bare = PlainChild.start()
    try:
        supervised = {"garrison": sup.child("garrison"), "plain": sup.child("plain")}

        restart_rows = {}
        for kind, ref in supervised.items():
            restart_latencies_us(ref, 20)  # warm up
            samples = restart_latencies_us(ref, CRASHES)
            restart_rows[kind] = {
                "median_us": round(statistics.median(samples), 1),
                "p99_us": round(p99(samples), 1),
                "max_us": round(max(samples), 1),
                "crashes": CRASHES,
            }

        g, p = supervised["garrison"], supervised["plain"]
        sends: dict[str, dict[str, Callable[[int], None]]] = {
            "ask round trip": {
                "supervised garrison": blocking(lambda m: g.ask(m, TIMEOUT)),
                "supervised plain": blocking(lambda m: p.ask(m, TIMEOUT)),
                "bare pykka": blocking(lambda m: bare.ask(m, timeout=TIMEOUT)),
            },
            "pipelined ask": {
                "supervised garrison": pipelined(g.ask_future),
                "supervised plain": pipelined(p.ask_future),
                "bare pykka": pipelined(lambda m: bare.ask(m, block=False)),
            },
        }
        for variants in sends.values():  # warm up
            for fn in variants.values():
                fn(500)
        ask_rows = {}
        for label, variants in sends.items():
            us = per_op_us(variants, ASKS)
            base = us["bare pykka"]
            ask_rows[label] = {
                "supervised_garrison_us": round(us["supervised garrison"], 2),
                "supervised_plain_us": round(us["supervised plain"], 2),
                "bare_pykka_us": round(base, 2),
                "ratio_garrison": round(us["supervised garrison"] / base, 3),
                "ratio_plain": round(us["supervised plain"] / base, 3),
            }
    finally:
        bare.stop()
        sup.stop()

    print(f"{'restart latency':<22} {'median us':>10} {'p99 us':>10} {'max us':>10}")
    for kind, row in restart_rows.items():
        print(
            f"{kind + ' child':<22} {row['median_us']:>10} {row['p99_us']:>10} {row['max_us']:>10}"
        )
    print()
    print(
        f"{'benchmark':<16} {'sup. garrison us':>17} {'sup. plain us':>14} {'pykka us':>9}"
        f" {'ratio g':>8} {'ratio p':>8}"
    )
    for label, row in ask_rows.items():
        print(
            f"{label:<16} {row['supervised_garrison_us']:>17} {row['supervised_plain_us']:>14}"
            f" {row['bare_pykka_us']:>9} {row['ratio_garrison']:>8} {row['ratio_plain']:>8}"
        )
    out = Path(__file__).parent / "results" / "supervision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "quick": QUICK,
                "rounds": ROUNDS,
                "asks": ASKS,
                "crashes": CRASHES,
                "restart_latency": restart_rows,
                "results": ask_rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
