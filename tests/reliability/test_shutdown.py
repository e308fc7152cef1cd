"""Shutdown under load: ``Runtime.stop()`` while operations are everywhere in a pipeline.

Each round starts a runtime with a pipeline of every stage and four sender threads that
keep asking and telling: operations that return, fail (and wait for a retry), run slowly,
or hang for up to ``HANG`` seconds, so that at the moment of the stop operations wait in the
rate limiter's queue, in the bulkhead's queue, for a retry timer, or run on workers. After
a short while the test calls ``rt.stop(STOP_DEADLINE)`` and the senders go on sending
through it.

What must hold, every round:

- ``stop()`` returns within its deadline (plus a little slack for a loaded machine);
- every ask, sent before, during or after the stop, gets an outcome within a bounded wait
  (values, typed errors, ``ActorUnavailable`` for what the stop refused);
- once the hanging operations have returned, no thread is left.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from _helpers.chaos import WAIT, counted_logs, outcome, settle_threads
from _helpers.workload import OpError
from garrison import Future, Runtime
from garrison.actors.bulkhead import BulkheadConfig
from garrison.errors import GarrisonError
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

pytestmark = pytest.mark.reliability

STOP_DEADLINE = 5.0
SLACK = 1.5
LOAD_BEFORE_STOP = (0.3, 1.0)  # seconds of load before the stop
HANG = 1.0
SENDERS = 4


def build(rt: Runtime) -> Pipeline:
    return rt.pipeline(
        "shutdown",
        rate_limit=RateLimitConfig(
            limits={"100ms": 40}, on_limit="wait", queue_size=200, queue_timeout=5.0
        ),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1_000, error_rate_threshold=1.0),
        retry=RetryConfig(max_attempts=3, base_delay=0.2, max_delay=0.5),
        timeout=TimeoutConfig(base_timeout=0.5, adaptive=False),
        bulkhead=BulkheadConfig(
            max_workers=4, max_queue=50, max_wait=3.0, shutdown_timeout=0.5, max_abandoned=20
        ),
        fallback=None,
    )


def operation(plan: str) -> str:
    if plan == "slow":
        time.sleep(0.02)
    elif plan == "hang":
        time.sleep(HANG)
    elif plan == "fail":
        raise OpError("down")
    return plan


def send(
    api: Pipeline,
    seed: int,
    stopped: threading.Event,
    futures: list[Future[Any]],
    errors: list[BaseException],
) -> None:
    """Ask and tell until a while after the stop; keep every ask's future."""
    rng = random.Random(seed)
    plans = ["ok", "slow", "hang", "fail"]
    try:
        after_stop = 0
        while after_stop < 50:
            plan = rng.choices(plans, [0.5, 0.3, 0.05, 0.15])[0]
            if rng.random() < 0.8:
                futures.append(api.submit(operation, plan))
            else:
                api.ref.tell(api.execute(operation, plan))
            if stopped.is_set():
                after_stop += 1
            time.sleep(rng.uniform(0.002, 0.01))
    except BaseException as error:
        errors.append(error)


@pytest.mark.timeout(600)
def test_stop_during_load_is_bounded_and_leaves_no_operation_nor_thread(
    profile: Any, figures: Any
) -> None:
    rng = random.Random(20261127)
    durations: list[float] = []
    kinds: Counter[str] = Counter()
    asked = 0
    for round_ in range(profile.shutdown_rounds):
        baseline = set(threading.enumerate())
        futures: list[Future[Any]] = []
        errors: list[BaseException] = []
        stopped = threading.Event()
        with counted_logs():
            rt = Runtime(name=f"shutdown-{round_}").start()
            api = build(rt)
            senders = [
                threading.Thread(
                    target=send,
                    args=(api, round_ * 10 + i, stopped, futures, errors),
                    name=f"shutdown-sender-{i}",
                )
                for i in range(SENDERS)
            ]
            for sender in senders:
                sender.start()
            time.sleep(rng.uniform(*LOAD_BEFORE_STOP))  # let the load build up
            started = time.monotonic()
            rt.stop(STOP_DEADLINE)
            durations.append(time.monotonic() - started)
            stopped.set()
            for sender in senders:
                sender.join(WAIT)
            assert not [s.name for s in senders if s.is_alive()], "a sender hung"
            assert not errors, errors
            deadline = time.monotonic() + WAIT
            results = [outcome(f, deadline - time.monotonic()) for f in futures]
            leftover = settle_threads(baseline, WAIT)
        assert leftover == [], [t.name for t in leftover]
        hung = [i for i, (kind, _) in enumerate(results) if kind == "hung"]
        assert not hung, f"round {round_}: {len(hung)} of {len(results)} asks got no outcome"
        for kind, result in results:
            if kind == "value":
                kinds["value"] += 1
            else:
                assert isinstance(result, GarrisonError | OpError), repr(result)
                kinds[type(result).__name__] += 1
        asked += len(results)
        assert durations[-1] <= STOP_DEADLINE + SLACK, (round_, durations[-1])
    figures.update(
        rounds=profile.shutdown_rounds,
        asks=asked,
        outcomes=dict(kinds.most_common()),
        stop_seconds_max=round(max(durations), 3),
        stop_seconds_mean=round(sum(durations) / len(durations), 3),
        stop_deadline=STOP_DEADLINE,
    )
    assert kinds["value"] > 0, kinds
    assert kinds["ActorUnavailable"] > 0, kinds  # some asks did meet the stop
