"""Overload: ten times the configured capacity, offered open-loop for the profile's duration.

Two pipelines, each limited by one stage:

- ``limited``: a rate limiter of ``RATE`` per second that lets callers wait in a queue of
  ``QUEUE`` (``on_limit="wait"``), in front of a bulkhead that is never the bottleneck;
- ``pooled``: a bulkhead of ``WORKERS`` workers and a waiting room of ``WAITING`` in front
  of an operation that takes ``OP_SECONDS`` (capacity ``WORKERS / OP_SECONDS`` per second).

Sender threads offer ten times each capacity at a fixed pace (open loop: they do not wait
for outcomes). What must hold:

- every request gets an outcome: its value or a typed rejection (``RateLimited``,
  ``QueueFull``, ``QueueTimeout``, ``BulkheadFull``), nothing else, nothing left pending;
- the excess is rejected: the admitted count stays near the capacity, not the offer;
- memory stays bounded: the RSS grows little between the middle and the end of the run
  (the peak is reported);
- the latency of admitted requests stays flat: the median of the last tenth of the run is
  within a generous factor of the second tenth's (the first holds the limiter's initial
  burst and the filling of the queues); every tenth's median is reported, with p90s.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from typing import Any

import pytest

from _helpers.chaos import WAIT, quiet_logs
from _helpers.resources import MB, Sampler
from garrison import Future, Runtime
from garrison.actors.bulkhead import BulkheadConfig
from garrison.errors import BulkheadFull, QueueFull, QueueTimeout, RateLimited
from garrison.pipeline import Pipeline
from garrison.policies.rate import RateLimitConfig

pytestmark = pytest.mark.reliability

OVERLOAD = 10
RATE = 100  # per second (10 per 100 ms), the limited pipeline's capacity
QUEUE = 50
WORKERS = 2
WAITING = 4
OP_SECONDS = 0.01  # the pooled pipeline's capacity: WORKERS / OP_SECONDS = 200 per second
REJECTIONS = (RateLimited, QueueFull, QueueTimeout, BulkheadFull)
SENDERS_PER_PIPELINE = 2


class Tally:
    """Outcomes by kind and admitted latencies by submission time (any thread)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._lock = threading.Lock()
        self.submitted = 0
        self.completed = 0
        self.kinds: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []
        self.latencies: list[tuple[float, float]] = []  # (submitted at, latency)

    def submit(self, api: Pipeline, fn: Any) -> None:
        sent = time.monotonic()
        with self._lock:
            self.submitted += 1
        future = api.submit(fn)

        def done(finished: Future[Any]) -> None:
            latency = time.monotonic() - sent
            error = finished.exception(0)
            with self._lock:
                self.completed += 1
                if error is None:
                    self.kinds["admitted"] += 1
                    self.latencies.append((sent - self.started, latency))
                elif isinstance(error, REJECTIONS):
                    self.kinds[type(error).__name__] += 1
                else:
                    self.unexpected.append(error)

        future.add_done_callback(done)

    def pending(self) -> int:
        with self._lock:
            return self.submitted - self.completed


def offer(
    tally: Tally, api: Pipeline, fn: Any, rate: float, seconds: float, errors: list[BaseException]
) -> None:
    """Submit ``rate`` requests per second for ``seconds``, on a fixed schedule."""
    try:
        interval = 1.0 / rate
        start = time.monotonic()
        due = start
        end = start + seconds
        while due < end:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            tally.submit(api, fn)
            due += interval
    except BaseException as error:
        errors.append(error)


def deciles(latencies: list[tuple[float, float]], seconds: float) -> list[list[float]]:
    """The latencies of requests submitted in each tenth of the run, sorted."""
    tenths: list[list[float]] = [[] for _ in range(10)]
    for at, latency in latencies:
        tenths[min(9, int(at * 10 / seconds))].append(latency)
    return [sorted(tenth) for tenth in tenths]


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@pytest.mark.timeout(300)
def test_ten_times_the_capacity_is_rejected_with_typed_errors_in_bounded_memory(
    profile: Any, figures: Any
) -> None:
    seconds = profile.overload_seconds
    with quiet_logs(), Runtime(name="overload") as rt:
        limited = rt.pipeline(
            "limited",
            rate_limit=RateLimitConfig(
                limits={"100ms": RATE // 10},
                on_limit="wait",
                queue_size=QUEUE,
                queue_timeout=2.0,
            ),
            bulkhead=BulkheadConfig(max_workers=4, max_queue=100),
        )
        pooled = rt.pipeline(
            "pooled", bulkhead=BulkheadConfig(max_workers=WORKERS, max_queue=WAITING)
        )
        tallies = {"limited": Tally(time.monotonic()), "pooled": Tally(time.monotonic())}
        capacity = {"limited": RATE, "pooled": WORKERS / OP_SECONDS}
        work = {"limited": lambda: "ok", "pooled": lambda: time.sleep(OP_SECONDS)}
        errors: list[BaseException] = []
        with Sampler(0.1) as sampler:
            senders = [
                threading.Thread(
                    target=offer,
                    args=(
                        tallies[api.name],
                        api,
                        work[api.name],
                        OVERLOAD * capacity[api.name] / SENDERS_PER_PIPELINE,
                        seconds,
                        errors,
                    ),
                    name=f"overload-{api.name}-{i}",
                )
                for api in (limited, pooled)
                for i in range(SENDERS_PER_PIPELINE)
            ]
            for tally in tallies.values():
                tally.started = time.monotonic()
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(seconds + WAIT)
            assert not [s.name for s in senders if s.is_alive()], "a sender hung"
            assert not errors, errors
            deadline = time.monotonic() + WAIT
            while any(t.pending() for t in tallies.values()) and time.monotonic() < deadline:
                time.sleep(0.05)
        status = {api.name: api.status() for api in (limited, pooled)}

    assert [t.pending() for t in tallies.values()] == [0, 0], "requests left without outcome"
    half = [rss for at, rss, _ in sampler.samples if at >= seconds / 2]
    middle_rss, end_rss = half[0], half[-1]
    figures.update(
        seconds=seconds,
        overload_factor=OVERLOAD,
        peak_rss_mb=round(sampler.peak_rss / MB, 1),
        rss_start_mb=round(sampler.samples[0][1] / MB, 1),
        rss_middle_mb=round(middle_rss / MB, 1),
        rss_end_mb=round(end_rss / MB, 1),
        peak_threads=max(threads for _, _, threads in sampler.samples),
    )
    for name, tally in tallies.items():
        assert not tally.unexpected, (name, tally.unexpected[:5])
        # The first tenth holds the limiter's initial burst (answered at once) and the
        # filling of the queues: "first" is the second tenth, once the overload is steady.
        tenths = deciles(tally.latencies, seconds)
        first, last = tenths[1], tenths[-1]
        offered = tally.submitted / seconds
        admitted = tally.kinds["admitted"] / seconds
        figures[name] = {
            "capacity_per_s": capacity[name],
            "offered_per_s": round(offered, 1),
            "admitted_per_s": round(admitted, 1),
            "outcomes": dict(tally.kinds.most_common()),
            "latency_p50_ms_by_decile": [round(quantile(t, 0.5) * 1000, 2) for t in tenths],
            "latency_first_decile_ms": {
                "p50": round(quantile(first, 0.5) * 1000, 2),
                "p90": round(quantile(first, 0.9) * 1000, 2),
                "n": len(first),
            },
            "latency_last_decile_ms": {
                "p50": round(quantile(last, 0.5) * 1000, 2),
                "p90": round(quantile(last, 0.9) * 1000, 2),
                "n": len(last),
            },
        }
        # The offer really was several times the capacity, and the excess was rejected.
        assert offered > 5 * capacity[name], (name, offered)
        assert admitted < 1.5 * capacity[name] + 50 / seconds, (name, admitted)
        assert sum(n for kind, n in tally.kinds.items() if kind != "admitted") > tally.submitted / 2
        # The latency of admitted requests stays flat (a generous factor: shared machines).
        assert first, name
        assert last, name
        assert statistics.median(last) <= 4 * statistics.median(first) + 0.05, figures.values[name]
    # Bounded memory: the second half of the run adds little.
    assert end_rss - middle_rss < 30 * MB, (middle_rss / MB, end_rss / MB)
    assert sampler.peak_rss - sampler.samples[0][1] < 200 * MB
    # Nothing is left queued anywhere.
    assert status["limited"]["rate_limiter"]["waiting"] == 0, status
    assert status["limited"]["bulkhead"]["queued"] == 0, status
    assert status["pooled"]["bulkhead"]["queued"] == 0, status
