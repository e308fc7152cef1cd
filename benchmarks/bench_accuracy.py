"""Limiter accuracy under many threads: garrison against limits and pyrate-limiter.

``THREADS`` threads hammer one key limited to ``LIMIT`` per second for ``SECONDS`` on the real
clock, through each exact ("at most N in any 1 s window") limiter:

- garrison: a ``RateLimiterActor`` (``sliding_log``, ``on_limit="reject"``), asked with
  ``Execute`` from every thread (the actor is the only writer of the limiter's state);
- limits: ``MovingWindowRateLimiter(MemoryStorage())``, ``hit()`` from every thread;
- pyrate-limiter: ``Limiter`` over an ``InMemoryBucket`` for the key,
  ``try_acquire(blocking=False)`` from every thread (which refuses at once, without looking
  at the bucket, whenever another thread holds the limiter's lock: ``refused_on_busy_lock``;
  those calls are counted as decisions at the caller's clock reading).

Each limiter's decisions are recorded at the clock reading it decided with (garrison: the
actor's reading; limits: the reading stored with the entry; pyrate-limiter: the item's
timestamp), so the figures judge the limiter, not the scheduling of the callers. Per run:
``admitted``; ``allowed``, the most an exact limiter could admit at those decision times (a
greedy replay), and the share admitted of it; ``max_in_1s``, the most admissions in any
window (t - 1 s, t]; ``overshoot``, admissions that made a window exceed ``LIMIT``. Every run
is repeated with ``sys.setswitchinterval(1e-6)``: thread switches between any two bytecodes
expose races that the default 5 ms interval hides.

Targets (issue 4): garrison's sliding_log admits at least 99% of the allowed count, zero
overshoot. Prints a table and writes benchmarks/results/accuracy.json; ``--quick`` runs 1 s
per limiter with 4 threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import limits.storage.memory
import pyrate_limiter
import structlog
from bench_rate import PerKeyFactory, RecordingClock, RecordingLimiter, accuracy_stats
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from garrison import Execute, GetStatus, RateLimited, Runtime
from garrison.policies.rate import RateLimitConfig

LIMIT = 100
FULL = {"threads": 16, "seconds": 3.0}
QUICK = {"threads": 4, "seconds": 1.0}
SWITCH_INTERVALS = (None, 1e-6)  # None: the interpreter's default (5 ms)
KEY = "client"


# (decision time in seconds, admitted) per call; every thread appends to its own list
Record = list[tuple[float, bool]]
Hammer = Callable[[Record, float], None]


@contextlib.contextmanager
def switch_interval(interval: float | None) -> Iterator[None]:
    default = sys.getswitchinterval()
    if interval is not None:
        sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(default)


def hammer_all(hammer: Hammer, threads: int, seconds: float) -> list[tuple[float, bool]]:
    """Run ``hammer`` in ``threads`` threads until ``seconds`` pass; every decision, in order."""
    records: list[Record] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop_at = time.monotonic() + seconds

    def run(record: Record) -> None:
        try:
            hammer(record, stop_at)
        except BaseException as error:
            errors.append(error)
            raise

    workers = [threading.Thread(target=run, args=(record,)) for record in records]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    if any(worker.is_alive() for worker in workers):
        raise RuntimeError("a hammering thread did not finish")
    if errors:
        raise RuntimeError(f"{len(errors)} hammering threads failed") from errors[0]
    return sorted(entry for record in records for entry in record)


def stats(decided: list[tuple[float, bool]]) -> dict[str, Any]:
    decisions = [t for t, _ in decided]
    admissions = [t for t, ok in decided if ok]
    row = accuracy_stats(decisions, admissions, LIMIT, 1.0)
    for nominal in ("nominal", "share_of_nominal"):  # bench_rate's fixed 3 s figure
        row.pop(nominal)
    return row


# -------------------------------------------------------------------- the limiters


def garrison_run(threads: int, seconds: float) -> dict[str, Any]:
    clock = RecordingClock()
    config = RateLimitConfig(per_second=LIMIT, algorithm="sliding_log")
    with Runtime(name="bench-accuracy") as rt:
        ref = rt.spawn(RecordingLimiter, config, clock=clock)
        ref.ask("admissions", timeout=5)  # started
        del clock.reads[:]
        op = Execute(int)

        def hammer(record: Record, stop_at: float) -> None:
            while time.monotonic() < stop_at:
                try:
                    ref.ask(op, 30)
                except RateLimited:
                    pass
                except Exception as error:  # counted, not hidden: a limiter must not raise
                    errors[f"{type(error).__name__}: {error}"[:120]] += 1

        errors: Counter[str] = Counter()
        hammer_all(hammer, threads, seconds)
        admissions = ref.ask("admissions", timeout=30)
        decisions = list(clock.reads)  # before GetStatus, which reads the clock too
        status = ref.ask(GetStatus(), timeout=30)
    if len(decisions) != status["admitted"] + status["rejected"]:
        raise RuntimeError("the actor read its clock more than once per decision")
    admitted = set(admissions)
    row = stats(sorted((t, t in admitted) for t in decisions))
    row["errors"] = dict(errors)
    row["limiter"] = "RateLimiterActor sliding_log, asked from every thread"
    return row


class RecordingTime:
    """limits' memory storage reads ``time.time()`` of its module: remember each thread's last."""

    def __init__(self) -> None:
        self.local = threading.local()

    def time(self) -> float:
        now = time.time()
        self.local.last = now
        return now


def limits_run(threads: int, seconds: float) -> dict[str, Any]:
    recorder = RecordingTime()
    module: Any = limits.storage.memory
    real = module.time
    module.time = SimpleNamespace(time=recorder.time)
    storage = MemoryStorage()
    try:
        hit = MovingWindowRateLimiter(storage).hit
        item = RateLimitItemPerSecond(LIMIT)

        def hammer(record: Record, stop_at: float) -> None:
            local = recorder.local
            while time.monotonic() < stop_at:
                try:
                    ok = hit(item, KEY)
                except Exception as error:  # counted, not hidden: a limiter must not raise
                    errors[f"{type(error).__name__}: {error}"[:120]] += 1
                    continue
                record.append((local.last, ok))  # the entry's time, or the rejecting reading

        errors: Counter[str] = Counter()
        decided = hammer_all(hammer, threads, seconds)
    finally:
        storage.timer.cancel()
        storage.timer.join()
        storage.reset()
        module.time = real
    row = stats(decided)
    row["errors"] = dict(errors)
    row["limiter"] = "MovingWindowRateLimiter(MemoryStorage()).hit from every thread"
    return row


class RealPyrateClock(pyrate_limiter.AbstractClock):
    """Integer milliseconds of the monotonic clock (what pyrate-limiter's buckets count in)."""

    def now(self) -> int:
        return int(time.monotonic() * 1000)


class RecordingFactory(PerKeyFactory):
    """bench_rate's bucket-per-key factory on the real clock, remembering each thread's item."""

    def __init__(self, make: Callable[[Any], pyrate_limiter.AbstractBucket]) -> None:
        super().__init__(make)
        self.clock = RealPyrateClock()  # type: ignore[assignment]
        self.local = threading.local()

    def wrap_item(self, name: str, weight: int = 1) -> pyrate_limiter.RateItem:
        item = super().wrap_item(name, weight)
        self.local.item = item
        return item


def pyrate_run(threads: int, seconds: float) -> dict[str, Any]:
    rates = [pyrate_limiter.Rate(LIMIT, pyrate_limiter.Duration.SECOND)]

    def make(clock: Any) -> pyrate_limiter.AbstractBucket:
        bucket = pyrate_limiter.InMemoryBucket(rates)
        bucket._clock = clock
        return bucket

    factory = RecordingFactory(make)
    limiter = pyrate_limiter.Limiter(factory)
    try:
        try_acquire = limiter.try_acquire

        refusals = [0] * threads
        slots = iter(range(threads))

        def hammer(record: Record, stop_at: float) -> None:
            local = factory.local
            slot = next(slots)
            while time.monotonic() < stop_at:
                local.item = None
                asked = time.monotonic()
                try:
                    ok = bool(try_acquire(KEY, blocking=False))
                except Exception as error:  # counted, not hidden: a limiter must not raise
                    errors[f"{type(error).__name__}: {error}"[:120]] += 1
                    continue
                if local.item is None:  # the limiter lock was busy: refused without a look
                    refusals[slot] += 1
                    record.append((asked, ok))
                else:
                    record.append((local.item.timestamp / 1000, ok))

        errors: Counter[str] = Counter()
        decided = hammer_all(hammer, threads, seconds)
    finally:
        limiter.close()
    row = stats(decided)
    row["refused_on_busy_lock"] = sum(refusals)
    row["errors"] = dict(errors)
    row["limiter"] = "Limiter(InMemoryBucket per key).try_acquire(blocking=False), every thread"
    return row


RUNS: dict[str, Callable[[int, float], dict[str, Any]]] = {
    "garrison sliding_log": garrison_run,
    "limits moving window": limits_run,
    "pyrate InMemoryBucket": pyrate_run,
}


def main() -> None:
    # garrison never configures logging; this program does: only errors, to keep the table
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    quick = "--quick" in sys.argv[1:]
    setup = QUICK if quick else FULL
    threads, seconds = int(setup["threads"]), float(setup["seconds"])
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for interval in SWITCH_INTERVALS:
        label = "default switch interval" if interval is None else f"switch interval {interval:g}"
        with switch_interval(interval):
            results[label] = {name: run(threads, seconds) for name, run in RUNS.items()}
    elapsed = round(time.perf_counter() - started, 1)

    fields = (
        "decisions",
        "admitted",
        "allowed",
        "share_of_allowed",
        "needless_rejections",
        "max_in_1s",
        "overshoot",
        "errors",
    )
    print(f"{threads} threads hammering one key limited to {LIMIT}/s for {seconds:g} s")
    for label, rows in results.items():
        print(f"{label:<26}" + "".join(f"{field:>20}" for field in fields))
        for name, row in rows.items():
            print(f"  {name:<24}" + "".join(f"{row[field]!s:>20}" for field in fields))
    print(f"target: garrison share >= 0.99 and overshoot 0 ({elapsed} s)")
    out = Path(__file__).parent / "results" / "accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "limits": version("limits"),
                "pyrate-limiter": version("pyrate-limiter"),
                "quick": quick,
                "threads": threads,
                "seconds": seconds,
                "limit_per_second": LIMIT,
                "elapsed": elapsed,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
