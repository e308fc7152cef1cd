"""Seed section "Bulkhead Pattern": database, api_calls and file_ops isolated from each other.

Run with ``.venv/bin/python examples/seed_bulkheads.py`` (``--quick`` makes the slow queries
shorter, for the test suite). The seed's ``BulkheadExecutor`` becomes one bulkhead per
operation type with the seed's sizes (database 5 workers / 3 at once, api_calls 10 / 5,
file_ops 3 / 2). The local database hangs; its bulkhead fills up (3 running, 2 queued, the
rest refused at once with ``BulkheadFull``) while API calls and file writes still answer in
milliseconds.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import structlog

from garrison import BulkheadConfig, BulkheadFull, Runtime

# the seed's sizes (max_workers, max_concurrent), and how many may wait for a slot
SIZES = {"database": (5, 3, 2), "api_calls": (10, 5, 100), "file_ops": (3, 2, 100)}


class SlowDatabase:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def query(self, n: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay)  # the database is hanging
        with self.lock:
            self.running -= 1
        return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter slow queries")
    delay = 0.4 if parser.parse_args().quick else 1.5
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    db = SlowDatabase(delay)
    with Runtime(name="bulkheads") as rt, tempfile.TemporaryDirectory() as tmp:
        bulkheads = {
            name: rt.pipeline(
                name, bulkhead=BulkheadConfig(max_workers=w, max_concurrent=c, max_queue=q)
            )
            for name, (w, c, q) in SIZES.items()
        }
        for name, (w, c, q) in SIZES.items():
            print(f"bulkhead {name:<9}: {w} workers, {c} at once, {q} may queue")

        t0 = time.perf_counter()
        queries = [bulkheads["database"].submit(db.query, i) for i in range(8)]
        time.sleep(0.05)
        s = bulkheads["database"].status()["bulkhead"]
        print(
            f"8 slow queries sent ({delay}s each): database bulkhead has {s['in_use']} running,"
            f" {s['queued']} queued, {s['rejected']} rejected"
        )

        started = time.perf_counter()
        api = [
            bulkheads["api_calls"].submit(lambda i=i: {"status": "processed", "id": i})
            for i in range(10)
        ]
        answers = [f.get(timeout=5) for f in api]
        path = Path(tmp) / "out.txt"
        written = bulkheads["file_ops"].call(path.write_text, "written while the db hangs")
        elapsed = (time.perf_counter() - started) * 1000
        print(
            f"meanwhile: {len(answers)} API calls and a {written}-byte file write "
            f"answered in {elapsed:.0f} ms"
        )

        done = refused = 0
        for future in queries:
            try:
                future.get(timeout=10)
                done += 1
            except BulkheadFull as error:
                refused += 1
                reason = error
        print(f"database: {done} queries done, {refused} refused at once ({reason})")
        print(
            f"at most {db.peak} queries ran at the same time; the database bulkhead took "
            f"{time.perf_counter() - t0:.2f}s (two rounds of {delay}s)"
        )


if __name__ == "__main__":
    main()
