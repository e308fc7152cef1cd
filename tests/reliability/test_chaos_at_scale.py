"""Chaos at scale: 10,000 operations while stages, workers and supervisors crash at random.

Two pipelines with every stage (fallback on one of them, retry, circuit breaker, rate
limiter, timeout, bulkhead) run under one runtime and take the profile's operations (10,000)
from eight sender threads, as asks and tells. The downstream misbehaves: operations fail,
fail once, run slowly, outlive their per-call timeout, or hang for hundreds of milliseconds
holding their worker (see ``_helpers.workload``). Meanwhile a chaos thread crashes, at
random (``_helpers.chaos.Crasher``):

- stage actors, in the hooks their own logic lives in (:data:`STAGE_HOOKS`);
- worker actors of the bulkheads, as they start running an operation (their run_job);
- the pipelines' supervisors, on the next message they handle (a child's exit notice, a
  request): the root supervisor then rebuilds the whole pipeline behind the same Refs.

What must hold whatever the interleaving:

- every ask resolves within one bounded wait, exactly once, to an outcome the pipeline can
  produce: this operation's value, its own error (possibly inside ``RetriesExhausted``), a
  typed garrison error, the ``Chaos`` error of a crash that fired, or the fallback's value;
- no operation ran more often than the retry stage sent it on (once, plus once per retry
  it logged, never more than ``max_attempts``);
- a told operation leaves at most one dead letter, an asked one none;
- at the end the tree is whole (every pipeline supervisor and every stage running), no
  operation is left in any stage's tables, both pipelines still work, and after ``stop()``
  no thread is left.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pykka
import pytest

from _helpers.chaos import (
    STAGE_HOOKS,
    WAIT,
    Chaos,
    Crasher,
    call_when_admitted,
    outcome,
    quiet_logs,
    settle_threads,
    wait_until_whole,
)
from _helpers.workload import OpError, Sent, Workload, run_senders
from garrison import Runtime
from garrison._dead_letters import DeadLetters
from garrison._messages import Execute
from garrison._ref import actor_of
from garrison.actors.bulkhead import BulkheadActor, BulkheadConfig
from garrison.errors import (
    ActorUnavailable,
    BulkheadFull,
    CircuitOpen,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    RetriesExhausted,
)
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

pytestmark = pytest.mark.reliability

SEED = 20261127
SENDERS = 4  # per pipeline
WINDOW = 32
SEND_PAUSE = (0.0, 0.006)
CHAOS_PAUSE = (0.005, 0.03)
MAX_ATTEMPTS = 3
FALLBACK = "fallback value"
WORKERS = 8
PLANS = (
    ("ok", 0.46),
    ("slow", 0.20),
    ("fail", 0.10),
    ("flaky", 0.12),
    ("stuck", 0.10),
    ("hang", 0.02),
)
# What the chaos thread crashes, with weights: a stage hook, a worker, a pipeline supervisor.
TARGETS = (("stage", 0.62), ("worker", 0.33), ("supervisor", 0.05))
GARRISON_OUTCOMES = (
    ActorUnavailable,
    BulkheadFull,
    CircuitOpen,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
)


def build(rt: Runtime, name: str, with_fallback: bool, fused: bool) -> Pipeline:
    """Every stage; limits generous enough that rejections stay a minority."""
    return rt.pipeline(
        name,
        fused=fused,
        rate_limit=RateLimitConfig(limits={"100ms": 150}, on_limit="reject"),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=15,
            error_rate_threshold=0.8,
            min_calls=40,
            window_size=100,
            recovery_timeout=0.05,
        ),
        retry=RetryConfig(max_attempts=MAX_ATTEMPTS, base_delay=0.001, max_delay=0.01),
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=WORKERS, max_queue=500, max_wait=2.0, max_abandoned=64),
        fallback=FALLBACK if with_fallback else None,
        max_restarts=1_000_000,  # restart every crashed stage, however often
        within_seconds=1.0,
    )


def arm_one(api: Pipeline, crasher: Crasher, rng: random.Random) -> None:
    """Arm one crash in ``api``: a stage hook, a worker or the pipeline's supervisor."""
    kind = rng.choices([k for k, _ in TARGETS], [w for _, w in TARGETS])[0]
    if kind == "stage":
        stage = rng.choice(sorted(api.stages))
        crasher.arm(stage, api.stages[stage], rng.choice(STAGE_HOOKS[stage]))
    elif kind == "worker":
        bulkhead = actor_of(api.stages["bulkhead"].actor_ref)
        if isinstance(bulkhead, BulkheadActor):
            workers = [w for w in list(bulkhead._workers) if not (w.retired or w.dead)]
            if workers:
                crasher.arm_actor("worker", rng.choice(workers).actor, "run_job")
    else:
        crasher.arm_actor("supervisor", actor_of(api.supervisor.actor_ref), "on_receive")


def chaos_loop(
    apis: list[Pipeline],
    crasher: Crasher,
    stop: threading.Event,
    seed: int,
    errors: list[BaseException],
) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            arm_one(rng.choice(apis), crasher, rng)
            stop.wait(rng.uniform(*CHAOS_PAUSE))
    except BaseException as error:  # reported by the main thread
        errors.append(error)


def check_error(error: BaseException, op_id: int, fired: set[str]) -> None:
    """``error`` is an outcome the pipeline may give operation ``op_id``."""
    if isinstance(error, Chaos):
        assert str(error) in fired, error
    elif isinstance(error, RetriesExhausted):
        assert 1 < error.attempts <= MAX_ATTEMPTS, error
        last = error.last_error
        assert last is not None
        assert not isinstance(last, RetriesExhausted | Chaos), error  # neither is retried
        check_error(last, op_id, fired)
    elif isinstance(error, OpError):
        assert str(error).startswith(f"op {op_id} failed"), (op_id, error)
    else:
        assert isinstance(error, GARRISON_OUTCOMES), (op_id, repr(error))


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` (bounded); True once it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def drained(api: Pipeline) -> bool:
    """No operation is left in any of the pipeline's tables."""
    status = api.status(WAIT)
    return (
        status["retry"]["waiting"] == 0
        and status["retry"]["in_flight"] == 0
        and status["rate_limiter"]["waiting"] == 0
        and status["timeout"]["pending"] == 0
        and status["bulkhead"]["queued"] == 0
        and status["bulkhead"]["in_use"] == 0
        and status["bulkhead"]["stuck_workers"] == 0
        and status["bulkhead"]["idle_workers"] == WORKERS
    )


@pytest.mark.timeout(300)
def test_ten_thousand_operations_under_random_crashes_each_get_one_outcome(
    profile: Any, figures: Any
) -> None:
    total = profile.chaos_operations
    per_thread = total // (2 * SENDERS)
    total = per_thread * 2 * SENDERS
    baseline = set(threading.enumerate())
    workload = Workload(total, SEED, PLANS, hang_for=(0.1, 0.4))
    dead_letters = DeadLetters(keep=100_000)
    crasher = Crasher()
    chaos_errors: list[BaseException] = []
    results: dict[str, tuple[Sent, Counter[int], list[int]]] = {}
    sender_errors: list[BaseException] = []
    started = time.monotonic()
    with quiet_logs() as events:
        rt = Runtime(
            name="chaos", dead_letters=dead_letters, max_restarts=1_000_000, within_seconds=1.0
        ).start()
        try:
            # one fused pipeline (one actor for all stages), one with an actor per stage
            apis = [
                build(rt, "a", with_fallback=False, fused=True),
                build(rt, "b", with_fallback=True, fused=False),
            ]

            def send(index: int, api: Pipeline) -> None:
                try:
                    results[api.name] = run_senders(
                        api,
                        workload,
                        SEED + index,
                        threads=SENDERS,
                        per_thread=per_thread,
                        window=WINDOW,
                        send_pause=SEND_PAUSE,
                        first_id=index * SENDERS * per_thread,
                        wait=240.0,
                    )
                except BaseException as error:
                    sender_errors.append(error)

            stop = threading.Event()
            chaos = threading.Thread(
                target=chaos_loop, args=(apis, crasher, stop, SEED, chaos_errors), name="chaos"
            )
            drivers = [
                threading.Thread(target=send, args=(i, api), name=f"drive-{api.name}")
                for i, api in enumerate(apis)
            ]
            chaos.start()
            try:
                for driver in drivers:
                    driver.start()
                for driver in drivers:
                    driver.join(260.0)
                assert not sender_errors, sender_errors
                assert not [d.name for d in drivers if d.is_alive()], "a sender hung"
                # Every ask resolves: one bounded wait for the lot.
                deadline = time.monotonic() + WAIT
                outcomes = {
                    name: [outcome(f, deadline - time.monotonic()) for _, f in sent.asks]
                    for name, (sent, _, _) in results.items()
                }
            finally:
                stop.set()
                chaos.join(WAIT)
                crasher.disarm_all()
                workload.released.set()  # hanging operations return now
            sending_took = time.monotonic() - started
            assert not chaos.is_alive()
            assert not chaos_errors, chaos_errors
            hung = [op for _, (_, _, h) in results.items() for op in h]
            for name, (sent, _, _) in results.items():
                hung += [
                    op
                    for (op, _), (kind, _) in zip(sent.asks, outcomes[name], strict=True)
                    if kind == "hung"
                ]
            assert not hung, f"{len(hung)} asks never resolved, e.g. ops {hung[:10]}"

            # The tree is whole: both pipeline supervisors and all their stages run again.
            for api in apis:
                states = wait_until_whole(rt, api.name, set(api.stages))
                assert states == dict.fromkeys(api.stages, "running"), (api.name, states)
            tree = rt.tree()
            assert tree["state"] == "running"
            assert {c["name"]: c["state"] for c in tree["children"]} == {
                "pipeline:a": "running",
                "pipeline:b": "running",
            }
            # Nothing is left in any table once the told operations have finished.
            for api in apis:
                assert wait_for(lambda api=api: drained(api)), api.status(WAIT)
            # Both pipelines still work end to end (close the breakers the chaos opened).
            for api in apis:
                breaker = rt.breakers.get(api.name)
                assert breaker is not None
                breaker.reset()
                assert call_when_admitted(api, lambda: "after") == "after"
            pipeline_restarts = {c["name"]: c["restarts"] for c in tree["children"]}
            stage_restarts = {
                api.name: sum(c["restarts"] for c in api.supervisor.tree()["children"])
                for api in apis
            }
        finally:
            rt.stop()
        leftover = settle_threads(baseline, WAIT)
    assert leftover == [], [t.name for t in leftover]
    registered = [str(ref) for ref in pykka.ActorRegistry.get_all()]
    assert registered == [], f"actors still registered after rt.stop(): {registered}"

    fired = crasher.fired
    fired_texts = {f"chaos in {target}.{hook}" for target, hook in fired}
    by_target = Counter(dict.fromkeys(("worker", "supervisor"), 0))
    for (target, _), n in fired.items():
        by_target["stage" if target in STAGE_HOOKS else target] += n
    assert by_target["stage"] >= 100, fired
    assert by_target["worker"] >= 20, fired
    assert by_target["supervisor"] >= 1, fired

    retries = Counter(
        event["operation"] for event in events if event["event"] == "garrison.retry.attempt_failed"
    )
    kinds: Counter[str] = Counter()
    for name, (sent, completions, _) in results.items():
        with_fallback = name == "b"
        assert all(completions[id(future)] == 1 for _, future in sent.asks)
        for (op_id, _), (kind, result) in zip(sent.asks, outcomes[name], strict=True):
            runs = workload.runs[op_id]
            plan = workload.plans[op_id]
            assert runs <= MAX_ATTEMPTS, (op_id, plan, runs)
            if kind == "value":
                if with_fallback and result == FALLBACK:
                    kinds["fallback"] += 1
                    continue
                assert result == ("ok", op_id), (op_id, result)
                assert plan != "fail", (op_id, result)
                assert runs >= (2 if plan == "flaky" else 1), (op_id, plan, runs)
                kinds["value"] += 1
                continue
            check_error(result, op_id, fired_texts)
            if isinstance(result, RetriesExhausted):
                assert runs <= result.attempts, (op_id, runs, result)
            kinds[type(result).__name__] += 1
        # No operation ran more often than the retry stage sent it on.
        for op_id in [op for op, _ in sent.asks] + sent.tells:
            assert workload.runs[op_id] <= min(MAX_ATTEMPTS, 1 + retries[f"op-{op_id}"]), (
                op_id,
                workload.runs[op_id],
                retries[f"op-{op_id}"],
            )
    # A told operation leaves at most one dead letter; an asked one none.
    letters: Counter[int] = Counter(
        int(letter.message.name.removeprefix("op-"))
        for letter in dead_letters.recent()
        if isinstance(letter.message, Execute) and letter.message.name.startswith("op-")
    )
    asked = {op for sent, _, _ in results.values() for op, _ in sent.asks}
    assert not [op for op in letters if op in asked], letters
    assert all(n == 1 for n in letters.values()), letters

    asks = sum(len(sent.asks) for sent, _, _ in results.values())
    tells = sum(len(sent.tells) for sent, _, _ in results.values())
    assert asks + tells == total
    assert kinds["value"] > asks // 3, kinds
    assert kinds["fallback"] > 0, kinds
    figures.update(
        operations=total,
        asks=asks,
        tells=tells,
        seconds=round(sending_took, 2),
        crashes=sum(fired.values()),
        crashes_by_target=dict(by_target),
        outcomes=dict(kinds.most_common()),
        ran_more_than_once=sum(1 for n in workload.runs.values() if n > 1),
        retries_logged=sum(retries.values()),
        dead_letters=sum(letters.values()),
        pipeline_supervisor_restarts=pipeline_restarts,
        stage_restarts=stage_restarts,
    )
