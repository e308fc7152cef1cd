"""Chaos through whole pipelines: stage actors crash at random while operations are in flight.

Two pipelines with every stage (retry, circuit breaker, rate limiter, timeout, bulkhead; one
of them also with a fallback) take ~3,000 operations from four threads, as asks
(``api.submit``) and tells (``api.ref.tell(Execute(...))``). Operations succeed, fail for good,
fail once and then succeed, run for a few milliseconds, or outlive their own per-call timeout.
Meanwhile a chaos thread crashes stage actors at random.

**How a stage is crashed.** Pipelines are built from the stock stage actors, so the crash is
injected into the running incarnation: the test takes the actor object behind the stage's Ref
(``garrison._ref.actor_of(ref.actor_ref)``) and shadows one of its handler hooks with an
instance attribute that removes itself and raises :class:`Chaos` (a ``RuntimeError``) the
next time the actor calls it, in the actor's own thread. The hooks are the methods a stage's
own logic lives in (:meth:`Stage.handle_execute` for an incoming operation,
:meth:`Stage.handle_outcome` for an outcome coming back, ``handle_other`` for timers and
completion notices), so each injected crash is what a bug in that code would do: an exception
escaping the actor's handler for the message it is handling. Nothing is sent to the actor and
no actor class is changed; the next incarnation (a new object) has no shadowing attribute.

The pipeline supervisor's restart intensity (10 restarts in 10 s by default) is raised for
the chaos runs (``rt.pipeline(..., max_restarts=...)``), so that the supervisor restarts every
crashed stage instead of giving up: escalation is tested separately, at the end of this
module, with the other cases the chaos first exposed (a bulkhead crash on a worker's
completion notice, a restarted timeout stage keeping the deadlines of the operations it had
handed on).

Every random choice (plans, asks or tells, which hook to arm, pauses) comes from seeded
generators; only the threads' interleaving differs from run to run.

What must hold, whatever the interleaving:

- every ask resolves, within one bounded wait, exactly once, to an outcome the pipeline can
  produce: the operation's value, its own error (possibly inside ``RetriesExhausted``), a typed
  garrison error (``CircuitOpen``, ``RateLimited``, ``BulkheadFull``, ``OperationTimeout``,
  ``ActorUnavailable``...) or the ``Chaos`` error of a crash that hit the message carrying the
  operation or its outcome; with a fallback, a value or the fallback's value (a ``Chaos`` error
  only when the fallback stage itself crashed);
- a value is the value of *this* operation;
- no operation ran more often than the retry stage sent it on: once, plus once per retry it
  scheduled (counted from its ``garrison.retry.attempt_failed`` events, across incarnations),
  never more than ``max_attempts``, nor than the attempts ``RetriesExhausted`` reports;
- a told operation yields at most one dead letter, an asked one none;
- at the end every stage is running under the pipeline's supervisor, the pipeline still
  works, and after ``rt.stop()`` no thread is left behind.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from _helpers.chaos import (
    STAGE_HOOKS,
    Chaos,
    Crasher,
    call_when_admitted,
    outcome,
    quiet_logs,
    settle_threads,
    wait_until_whole,
)
from _helpers.workload import OpError, Workload, run_senders
from garrison import Runtime
from garrison._dead_letters import DeadLetters
from garrison._messages import Execute
from garrison._ref import Ref
from garrison.actors.bulkhead import BulkheadConfig
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

WAIT = 20.0  # the bound on any wait; a healthy run needs a small fraction of it
SEED = 20261203
THREADS = 4
PER_THREAD = 375  # x 4 threads x 2 pipelines = 3,000 operations
WINDOW = 24  # asks a sender may have outstanding before it waits for the oldest
MAX_ATTEMPTS = 3
FALLBACK = "fallback value"
SEND_PAUSE = (0.0, 0.02)  # seconds between two sends of one sender
CHAOS_PAUSE = (0.01, 0.05)  # seconds between two arming of a crash

HOOKS = STAGE_HOOKS
# Messages that an armed hook lets through instead of crashing on (none: every message of
# every stage may crash; see test_a_bulkhead_crash_while_handling_a_completion_loses_no_outcome).
SPARED: dict[tuple[str, str], tuple[str, ...]] = {}

# What an operation does: its plan, drawn per operation from a seeded rng.
PLANS = (
    ("ok", 0.50),  # returns at once
    ("slow", 0.20),  # returns after 1-8 ms
    ("fail", 0.10),  # always raises OpError (retryable)
    ("flaky", 0.12),  # raises OpError on its first run, then returns
    ("stuck", 0.08),  # runs 25 ms with a per-call timeout of 8 ms: OperationTimeout
)
STUCK_FOR = 0.025
STUCK_TIMEOUT = 0.008

# The typed errors a pipeline may answer with besides the operation's own and the crashes'.
GARRISON_OUTCOMES = (
    ActorUnavailable,
    BulkheadFull,
    CircuitOpen,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
)


# -- crash injection ----------------------------------------------------------------------------


def chaos_loop(
    api: Pipeline, crasher: Crasher, stop: threading.Event, seed: int, errors: list[BaseException]
) -> None:
    rng = random.Random(seed)
    targets = [(stage, hook) for stage in api.stages for hook in HOOKS[stage]]
    try:
        while not stop.is_set():
            stage, hook = targets[rng.randrange(len(targets))]
            crasher.arm(stage, api.stages[stage], hook, SPARED.get((stage, hook), ()))
            stop.wait(rng.uniform(*CHAOS_PAUSE))
    except BaseException as error:  # reported by the main thread
        errors.append(error)


# -- checks -------------------------------------------------------------------------------------


def check_error(error: BaseException, op_id: int, fired: set[str], with_fallback: bool) -> None:
    """``error`` is an outcome the pipeline may give operation ``op_id``."""
    if isinstance(error, Chaos):
        where = str(error).removeprefix("chaos in ").split(".")[0]
        assert str(error) in fired, error
        if with_fallback:  # any other stage's crash is replaced by the fallback value
            assert where == "fallback", error
        return
    assert not with_fallback, f"op {op_id}: the fallback let {error!r} through"
    if isinstance(error, RetriesExhausted):
        assert 1 < error.attempts <= MAX_ATTEMPTS, error
        last = error.last_error
        assert last is not None
        assert not isinstance(last, RetriesExhausted | Chaos), error  # neither is retried
        check_error(last, op_id, fired, with_fallback)
        return
    if isinstance(error, OpError):
        assert str(error).startswith(f"op {op_id} failed"), (op_id, error)
        return
    assert isinstance(error, GARRISON_OUTCOMES), (op_id, error)


def build(rt: Runtime, name: str, with_fallback: bool, fused: bool = True) -> Pipeline:
    """A pipeline with every stage; limits generous enough that rejections are rare."""
    return rt.pipeline(
        name,
        fused=fused,
        rate_limit=RateLimitConfig(limits={"100ms": 60}, on_limit="reject"),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=10,
            error_rate_threshold=0.7,
            min_calls=20,
            window_size=50,
            recovery_timeout=0.05,
        ),
        retry=RetryConfig(max_attempts=MAX_ATTEMPTS, base_delay=0.001, max_delay=0.01),
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=8, max_queue=500, max_wait=2.0),
        fallback=FALLBACK if with_fallback else None,
        # Restart crashed stages however often they crash (the default gives up after 10
        # in 10 s; see test_a_pipeline_supervisor_that_gave_up_is_rebuilt_with_its_stages).
        max_restarts=1_000_000,
        within_seconds=1.0,
    )


def check_pipeline_chaos(with_fallback: bool, fused: bool) -> None:
    baseline = set(threading.enumerate())
    seed = SEED + int(with_fallback)
    workload = Workload(
        THREADS * PER_THREAD, seed, PLANS, stuck_for=STUCK_FOR, per_call_timeout=STUCK_TIMEOUT
    )
    dead_letters = DeadLetters(keep=100_000)
    crasher = Crasher()
    chaos_errors: list[BaseException] = []
    with quiet_logs() as events:
        rt = Runtime(name="chaos", dead_letters=dead_letters).start()
        try:
            api = build(rt, "p", with_fallback, fused)
            stages = set(api.stages)
            stop = threading.Event()
            chaos = threading.Thread(
                target=chaos_loop,
                args=(api, crasher, stop, seed, chaos_errors),
                name="pipeline-chaos-crasher",
            )
            chaos.start()
            try:
                sent, completions, hung = run_senders(
                    api,
                    workload,
                    seed,
                    threads=THREADS,
                    per_thread=PER_THREAD,
                    window=WINDOW,
                    send_pause=SEND_PAUSE,
                )
                # Every ask resolves: one bounded wait for the lot.
                deadline = time.monotonic() + WAIT
                outcomes = [outcome(f, deadline - time.monotonic()) for _, f in sent.asks]
            finally:
                stop.set()
                chaos.join(WAIT)
                crasher.disarm_all()
            assert not chaos.is_alive()
            assert not chaos_errors, chaos_errors
            hung += [
                op for (op, _), (kind, _) in zip(sent.asks, outcomes, strict=True) if kind == "hung"
            ]
            assert not hung, f"{len(hung)} asks never resolved, e.g. ops {hung[:10]}"

            states = wait_until_whole(rt, "p", stages)
            assert states == dict.fromkeys(stages, "running"), states
            # The pipeline still works end to end after all that (the chaos may have left
            # the breaker open: close it first).
            breaker = rt.breakers.get("p")
            assert breaker is not None
            breaker.reset()
            for op_id in (0, 1, 2):
                assert call_when_admitted(api, lambda i=op_id: ("after", i)) == ("after", op_id)
        finally:
            rt.stop()
        leftover = settle_threads(baseline, WAIT)
    assert leftover == [], [t.name for t in leftover]

    fired = crasher.fired
    assert sum(fired.values()) >= 50, f"too few crashes to prove anything: {fired}"
    crashed_stages = {stage for stage, _ in fired}
    assert crashed_stages == set(HOOKS) - ({"fallback"} - stages), fired
    fired_texts = {f"chaos in {stage}.{hook}" for stage, hook in fired}

    # Exactly one outcome per ask, and one the pipeline can produce.
    assert all(completions[id(future)] == 1 for _, future in sent.asks)
    kinds: Counter[str] = Counter()
    for (op_id, _), (kind, result) in zip(sent.asks, outcomes, strict=True):
        runs = workload.runs[op_id]
        plan = workload.plans[op_id]
        assert runs <= MAX_ATTEMPTS, (op_id, plan, runs)
        if kind == "value":
            if result == FALLBACK and with_fallback:
                kinds["fallback"] += 1
                continue
            assert result == ("ok", op_id), (op_id, result)
            assert plan != "fail", (op_id, result)
            assert runs >= (2 if plan == "flaky" else 1), (op_id, plan, runs)
            kinds["value"] += 1
            continue
        check_error(result, op_id, fired_texts, with_fallback)
        if isinstance(result, RetriesExhausted):
            assert runs <= result.attempts, (op_id, runs, result)
        kinds[type(result).__name__] += 1
    # No operation ran more often than the retry stage sent it on: once, plus once per retry
    # it scheduled (logged as garrison.retry.attempt_failed, whichever incarnation did it).
    retries = Counter(
        event["operation"] for event in events if event["event"] == "garrison.retry.attempt_failed"
    )
    for op_id in [op_id for op_id, _ in sent.asks] + sent.tells:
        runs = workload.runs[op_id]
        assert runs <= min(MAX_ATTEMPTS, 1 + retries[f"op-{op_id}"]), (op_id, runs, retries)

    # A told operation leaves at most one dead letter (its failure, if it failed); an asked
    # one leaves none (its asker got the outcome).
    letters: Counter[int] = Counter(
        int(letter.message.name.removeprefix("op-"))
        for letter in dead_letters.recent()
        if isinstance(letter.message, Execute) and letter.message.name.startswith("op-")
    )
    asked = {op_id for op_id, _ in sent.asks}
    assert not [op for op in letters if op in asked], letters
    assert all(n == 1 for n in letters.values()), letters

    # The mix is what the test is meant to exercise.
    assert kinds["value"] > len(sent.asks) // 3, kinds
    if with_fallback:
        assert kinds["fallback"] > 0, kinds
    else:
        assert kinds["RetriesExhausted"] > 0, kinds
        assert kinds["Chaos"] > 0, kinds


# -- chaos --------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "actor_per_stage"])
@pytest.mark.parametrize("with_fallback", [False, True], ids=["no_fallback", "with_fallback"])
def test_random_stage_crashes_leave_every_operation_one_outcome(
    with_fallback: bool, fused: bool
) -> None:
    check_pipeline_chaos(with_fallback, fused)


# -- known bugs ---------------------------------------------------------------------------------

FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "actor_per_stage"])


def arm_once(ref: Ref, hook: str) -> Callable[[], int]:
    """Crash the actor behind ``ref`` the next time it calls ``hook``; return a fired count.

    Waits (bounded) for the actor to be running, should it be restarting.
    """
    crasher = Crasher()
    deadline = time.monotonic() + WAIT
    while not crasher.arm("stage", ref, hook):
        assert time.monotonic() < deadline, f"{ref.name} never came back"
        time.sleep(0.005)
    return lambda: sum(crasher.fired.values())


@pytest.mark.timeout(60)
@FUSED
def test_a_bulkhead_crash_while_handling_a_completion_loses_no_outcome(fused: bool) -> None:
    with quiet_logs(), Runtime(name="bug") as rt:
        api = rt.pipeline("p", fused=fused, bulkhead=BulkheadConfig(max_workers=1))
        fired = arm_once(api.stages["bulkhead"], "_complete")  # the next completion crashes it
        future = api.submit(lambda: "done")
        kind, _ = outcome(future, 2.0)
        assert fired() == 1
        assert kind != "hung", "the operation ran, but its caller never got an outcome"


@pytest.mark.timeout(60)
@FUSED
def test_a_pipeline_supervisor_that_gave_up_is_rebuilt_with_its_stages(fused: bool) -> None:
    with quiet_logs(), Runtime(name="bug") as rt:
        api = rt.pipeline("p", fused=fused, bulkhead=BulkheadConfig(max_workers=1))
        for _ in range(11):  # one more than the pipeline supervisor's 10 restarts in 10 s
            arm_once(api.stages["bulkhead"], "handle_execute")
            # through the bulkhead actor (api.submit would start it from this thread)
            kind, result = outcome(api.ref.ask_future(Execute(lambda: "x")), WAIT)
            assert (kind, type(result)) == ("error", Chaos), (kind, result)
        whole = {"bulkhead": "running"}
        states = wait_until_whole(rt, "p", set(whole), timeout=2.0)
        assert states == whole, states
        assert api.submit(lambda: "back").get(WAIT) == "back"


@pytest.mark.timeout(60)
@FUSED
def test_an_operation_keeps_its_timeout_when_the_timeout_stage_restarts(fused: bool) -> None:
    started, release = threading.Event(), threading.Event()

    def hang() -> bool:
        started.set()
        return release.wait(WAIT)

    with quiet_logs(), Runtime(name="bug") as rt:
        api = rt.pipeline(
            "p",
            fused=fused,
            timeout=TimeoutConfig(base_timeout=0.2, adaptive=False),
            bulkhead=BulkheadConfig(max_workers=2),
        )
        try:
            stuck = api.submit(hang)  # hangs until released
            assert started.wait(WAIT)
            arm_once(api.stages["timeout"], "handle_execute")
            crashed = api.submit(lambda: "never runs")
            kind, result = outcome(crashed, WAIT)
            assert (kind, type(result)) == ("error", Chaos), (kind, result)
            kind, result = outcome(stuck, 1.0)
            assert (kind, type(result)) == ("error", OperationTimeout), (kind, result)
        finally:
            release.set()
