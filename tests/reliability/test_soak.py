"""Soak: the profile's duration (60 s in CI, 10 minutes in full) of mixed load.

One pipeline with every stage (a fallback that caches the last success per operation name)
takes a steady mix from four sender threads: quick, slow, failing, flaky, stuck (past their
per-call timeout) and coroutine operations, as asks and tells, under an ever-growing set of
rate-limit keys (a new client every 50 operations) and operation names. Every second the
test samples the process's RSS and thread count and the pipeline's internal tables.

What must hold:

- RSS and the thread count are flat: the least-squares slope past the warm-up (the first
  third) is small (both slopes are reported);
- no internal table grows: scheduler timers, rate-limiter keys, retry and timeout entries,
  bulkhead queue, fallback cache, stage mailboxes and the senders' pending futures stay
  under bounds set by the configuration, not by the run's length;
- every ask of the run got an outcome, and once the load stops every table drains.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from _helpers.chaos import WAIT, counted_logs
from _helpers.resources import MB, Sampler, slope
from _helpers.workload import OpError
from garrison import Future, Runtime
from garrison._ref import actor_of
from garrison.actors.bulkhead import BulkheadConfig
from garrison.pipeline import FallbackConfig, Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

pytestmark = pytest.mark.reliability

SENDERS = 4
WINDOW = 16  # outstanding asks per sender
PAUSE = (0.0, 0.004)
CACHE = 256
WORKERS = 8
QUEUE = 100
KEY_EVERY = 50  # operations per rate-limit key before the next key is used
NAMES = 5_000  # distinct operation names (more than the fallback cache holds)
MIX = (("ok", 0.5), ("slow", 0.15), ("fail", 0.08), ("flaky", 0.1), ("stuck", 0.07))
MIX_ASYNC = 0.1  # share of coroutine operations


def build(rt: Runtime) -> Pipeline:
    return rt.pipeline(
        "soak",
        rate_limit=RateLimitConfig(limits={"1s": 200}, on_limit="reject"),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=50, error_rate_threshold=0.9, min_calls=100, recovery_timeout=0.2
        ),
        retry=RetryConfig(max_attempts=3, base_delay=0.002, max_delay=0.02),
        timeout=TimeoutConfig(base_timeout=0.5, adaptive=True, max_timeout=1.0),
        bulkhead=BulkheadConfig(max_workers=WORKERS, max_queue=QUEUE, max_wait=1.0),
        fallback=FallbackConfig(cache_last_success=True, cache_size=CACHE),
    )


class Load:
    """Closed-loop senders with a bounded window of asks each; counts outcomes."""

    def __init__(self, api: Pipeline, seed: int) -> None:
        self.api = api
        self.seed = seed
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.sent = 0
        self.done = 0
        self.kinds: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._keys = iter(range(1_000_000_000))
        self._key = f"client-{next(self._keys)}"
        self._ops = 0

    def pending(self) -> int:
        with self._lock:
            return self.sent - self.done

    def _next_key(self) -> str:
        with self._lock:
            self._ops += 1
            if self._ops % KEY_EVERY == 0:
                self._key = f"client-{next(self._keys)}"
            return self._key

    def _record(self, future: Future[Any]) -> None:
        error = future.exception(0)
        with self._lock:
            self.done += 1
            self.kinds["value" if error is None else type(error).__name__] += 1

    def run(self, index: int) -> None:
        rng = random.Random(self.seed * 10 + index)
        plans = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        outstanding: list[Future[Any]] = []
        try:
            while not self.stop.is_set():
                time.sleep(rng.uniform(*PAUSE))
                plan = rng.choices(plans, weights)[0]
                coroutine = rng.random() < MIX_ASYNC
                view = self.api.options(
                    key=self._next_key(),
                    name=f"op-{rng.randrange(NAMES)}",
                    timeout=0.01 if plan == "stuck" else None,
                )
                fn = _async_op if coroutine else _op
                if rng.random() < 0.2:
                    self.api.ref.tell(view.execute(fn, plan, rng.random()))
                    continue
                future = view.submit(fn, plan, rng.random())
                with self._lock:
                    self.sent += 1
                future.add_done_callback(self._record)
                outstanding.append(future)
                if len(outstanding) > WINDOW:
                    outstanding.pop(0).exception(WAIT)
            for future in outstanding:
                future.exception(WAIT)
        except BaseException as error:
            self.errors.append(error)


def _op(plan: str, draw: float) -> str:
    if plan == "slow":
        time.sleep(0.001 + draw * 0.005)
    elif plan == "stuck":
        time.sleep(0.03)
    elif plan == "fail" or (plan == "flaky" and draw < 0.5):
        raise OpError(f"{plan} ({draw:.3f})")
    return plan


async def _async_op(plan: str, draw: float) -> str:
    if plan in ("slow", "stuck"):
        await asyncio.sleep(0.03 if plan == "stuck" else 0.001 + draw * 0.005)
    elif plan == "fail" or (plan == "flaky" and draw < 0.5):
        raise OpError(f"{plan} ({draw:.3f})")
    return plan


def tables(rt: Runtime, api: Pipeline, load: Load) -> dict[str, int]:
    """The sizes of the runtime's and the pipeline's internal tables now."""
    status = api.status(WAIT)
    sizes = {
        "timers": rt.scheduler.pending(),
        "limiter_keys": status["rate_limiter"]["keys"],
        "limiter_waiting": status["rate_limiter"]["waiting"],
        "retry_waiting": status["retry"]["waiting"],
        "retry_in_flight": status["retry"]["in_flight"],
        "timeout_pending": status["timeout"]["pending"],
        "bulkhead_queued": status["bulkhead"]["queued"],
        "bulkhead_in_use": status["bulkhead"]["in_use"],
        "bulkhead_stuck": status["bulkhead"]["stuck_workers"],
        "fallback_cache": status["fallback"]["cache_size"],
        "pending_futures": load.pending(),
    }
    for stage, ref in api.stages.items():
        actor = actor_of(ref.actor_ref)
        mailbox = getattr(actor, "mailbox", None)
        sizes[f"mailbox_{stage}"] = mailbox.qsize() if mailbox is not None else 0
    return sizes


# Upper bounds for the tables, from the configuration (not from the run's length).
BOUNDS = {
    # a retry delay, a queue deadline and a deadline per operation in flight, a breaker timer
    "timers": 3 * SENDERS * (WINDOW + 1) + QUEUE + 50,
    # keys of the last second or so (the 1 s window), a few more while they expire
    "limiter_keys": 100,
    "retry_waiting": SENDERS * (WINDOW + 1) + 50,
    "retry_in_flight": SENDERS * (WINDOW + 1) + 50,
    "timeout_pending": WORKERS + QUEUE + 50,
    "bulkhead_queued": QUEUE,
    "bulkhead_in_use": WORKERS,
    "fallback_cache": CACHE,
    "pending_futures": SENDERS * (WINDOW + 1),
}
MAILBOX_BOUND = 500


@pytest.mark.timeout(900)
def test_mixed_load_keeps_memory_threads_and_tables_flat(profile: Any, figures: Any) -> None:
    seconds = profile.soak_seconds
    rows: list[tuple[float, dict[str, int]]] = []
    with counted_logs() as events, Runtime(name="soak") as rt:
        api = build(rt)
        load = Load(api, seed=20261127)
        senders = [
            threading.Thread(target=load.run, args=(i,), name=f"soak-sender-{i}")
            for i in range(SENDERS)
        ]
        idle_threads = threading.active_count()
        with Sampler(1.0) as sampler:
            started = time.monotonic()
            for sender in senders:
                sender.start()
            try:
                while (elapsed := time.monotonic() - started) < seconds:
                    rows.append((elapsed, tables(rt, api, load)))
                    load.stop.wait(min(1.0, max(0.0, seconds - elapsed)))
            finally:
                load.stop.set()
                for sender in senders:
                    sender.join(WAIT)
        assert not [s.name for s in senders if s.is_alive()], "a sender hung"
        assert not load.errors, load.errors[:5]
        assert load.pending() == 0, "asks left without an outcome"
        # Once the load stops, every table drains.
        deadline = time.monotonic() + WAIT
        while True:
            final = tables(rt, api, load)
            busy = {k: v for k, v in final.items() if v and k not in ("limiter_keys", "timers")}
            busy.pop("fallback_cache", None)
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not busy, final

    steady = sampler.after(1 / 3)
    rss_slope = slope([(t / 60, rss / MB) for t, rss, _ in steady])  # MB per minute
    thread_slope = slope([(t / 60, threads) for t, _, threads in steady])  # per minute
    steady_rows = [sizes for at, sizes in rows if at >= seconds / 3]
    peaks = {key: max(sizes[key] for sizes in steady_rows) for key in steady_rows[0]}
    figures.update(
        seconds=seconds,
        operations_asked=load.sent,
        outcomes=dict(load.kinds.most_common()),
        rss_start_mb=round(sampler.samples[0][1] / MB, 1),
        rss_end_mb=round(sampler.samples[-1][1] / MB, 1),
        peak_rss_mb=round(sampler.peak_rss / MB, 1),
        rss_slope_mb_per_min=round(rss_slope, 3),
        threads_before_load=idle_threads,
        threads_min_max=(min(t for _, _, t in steady), max(t for _, _, t in steady)),
        thread_slope_per_min=round(thread_slope, 3),
        table_peaks=peaks,
        tables_at_end=final,
        events=dict(events.most_common(8)),
    )
    assert load.sent > 20 * seconds, "the load was too light to prove anything"
    # Flat: a generous bound on the slopes (shared machines are noisy; a leak of one
    # operation's worth of memory per operation would be tens of MB per minute).
    assert rss_slope < 3.0, rss_slope
    # Threads come and go (a worker stuck in a timed-out call is replaced, and ends when the
    # call returns), so the count is noisy: bound it by the configuration, and require the
    # trend over the steady part to add less than one pool of workers.
    span = (steady[-1][0] - steady[0][0]) / 60
    assert abs(thread_slope) * span < WORKERS, (thread_slope, span)
    assert max(t for _, _, t in steady) <= idle_threads + SENDERS + 2 * WORKERS + 4
    for key, bound in BOUNDS.items():
        assert peaks[key] <= bound, (key, peaks[key], bound)
    for key, peak in peaks.items():
        if key.startswith("mailbox_"):
            assert peak <= MAILBOX_BOUND, (key, peak)
