"""Ref round trips against bare pykka, in the same run.

Measures, for an echo actor: a blocking ask round trip through ``garrison.Ref`` versus
``pykka.ActorRef.ask``, and pipelined asks (send N, then wait for all). Prints a table and
writes benchmarks/results/ref.json. Ratios matter, not absolute numbers: this machine is
shared and noisy, so each figure is the median of several rounds.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pykka

from garrison import Actor, Ref

ROUNDS = 7
ASKS = 5_000

# ``--quick``: a smoke run (benchmarks/report.py --quick); the figures mean little
QUICK = __name__ == "__main__" and "--quick" in sys.argv[1:]
if QUICK:
    ROUNDS, ASKS = 3, 500


class GarrisonEcho(Actor):
    def on_receive(self, message: Any) -> Any:
        return message


class PykkaEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def per_op_us(fn: Any, n: int) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    pykka_ref = PykkaEcho.start()
    garrison_ref = Ref(GarrisonEcho.start())
    try:

        def pykka_ask(n: int) -> None:
            for i in range(n):
                pykka_ref.ask(i)

        def garrison_ask(n: int) -> None:
            for i in range(n):
                garrison_ref.ask(i)

        def pykka_pipelined(n: int) -> None:
            futures = [pykka_ref.ask(i, block=False) for i in range(n)]
            for f in futures:
                f.get()

        def garrison_pipelined(n: int) -> None:
            futures = [garrison_ref.ask_future(i) for i in range(n)]
            for f in futures:
                f.get()

        # warm up both
        pykka_ask(500)
        garrison_ask(500)
        rows = {}
        for label, ours, theirs in [
            ("ask round trip", garrison_ask, pykka_ask),
            ("pipelined ask", garrison_pipelined, pykka_pipelined),
        ]:
            # interleave to share the machine's noise fairly
            g = per_op_us(ours, ASKS)
            p = per_op_us(theirs, ASKS)
            rows[label] = {
                "garrison_us": round(g, 2),
                "pykka_us": round(p, 2),
                "ratio": round(g / p, 3),
            }
    finally:
        pykka_ref.stop()
        garrison_ref.stop()

    print(f"{'benchmark':<18} {'garrison us':>12} {'pykka us':>10} {'ratio':>7}")
    for label, row in rows.items():
        print(f"{label:<18} {row['garrison_us']:>12} {row['pykka_us']:>10} {row['ratio']:>7}")
    out = Path(__file__).parent / "results" / "ref.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "quick": QUICK,
                "rounds": ROUNDS,
                "asks": ASKS,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
