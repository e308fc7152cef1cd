"""Adversarial review of turns (a fused host lending its turn to the thread that brings a message).

The first group reproduces the bugs the review found (all fixed: a sync fallback callable
run on event-loop threads, a BaseException escaping into a reporting thread, a retired host
handling a message its successor owned, stop requests answered without being counted); the
others pin guarantees that were checked and hold, beyond tests/pipeline/test_turns.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

from _helpers.tiny_switch import tiny_switch
from garrison import Execute, Future, Runtime
from garrison._actor import Actor
from garrison._mailbox import Mailbox
from garrison._ref import Ref, actor_of
from garrison._spawn import stop_and_join
from garrison.actors import BulkheadConfig
from garrison.actors._host import HostedRef, HostedStage, StageHost
from garrison.actors._run import copy_outcome
from garrison.actors._stage import Stage
from garrison.actors.bulkhead import BulkheadActor
from garrison.errors import BulkheadFull
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.supervision import ChildSpec, Restart, Supervisor, SupervisorRef

WAIT = 5.0


@pytest.fixture
def rt() -> Iterator[Runtime]:
    """A runtime on the system clock (the operations here finish by themselves)."""
    with Runtime(name="rt") as runtime:
        yield runtime


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    pause = threading.Event()
    for _ in range(1000):
        if condition():
            return
        pause.wait(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def _current(ref: Ref) -> StageHost:
    host = actor_of(ref.actor_ref)
    assert isinstance(host, StageHost)
    return host


def _restarted(ref: Ref, old: StageHost) -> StageHost:
    """The incarnation that replaced ``old``, once it runs and has settled."""
    _until(lambda: actor_of(ref.actor_ref) is not old and ref.is_alive(), "the host restarted")
    assert ref.settle(WAIT)
    return _current(ref)


class Interrupt(BaseException):
    """A BaseException that is not an Exception (as KeyboardInterrupt, SystemExit)."""


class Boom(Exception):
    pass


class Hold:
    """Told to a Watch stage: it holds the host's thread until ``release``, then maybe crashes."""

    def __init__(self, crash: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.crash = crash


class Watch(Stage):
    """An inline stage that sees each outcome, records who handled what, and notices overlap.

    ``starts`` collects every incarnation started; ``seen`` the names of the Executes it
    handled; ``overlaps`` any handler entered while another was running (never allowed).
    """

    stage = "watch"

    def __init__(
        self,
        starts: list[Watch],
        downstream: Ref | None = None,
        *,
        clock: Any = None,
        scheduler: Any = None,
        loop: Any = None,
    ) -> None:
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.starts = starts
        self.seen: list[str] = []
        self.outcomes = 0
        self.overlaps = 0
        self._inside = threading.Lock()

    def on_start(self) -> None:
        self.starts.append(self)

    def on_stop(self) -> None:
        self.release_scheduler()

    def runs_inline(self) -> bool:
        return True

    def _enter(self) -> None:
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            self._inside.acquire()

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        self._enter()
        try:
            self.seen.append(message.name)
            if message.kwargs.get("interrupt") == "execute":
                raise Interrupt("in handle_execute")
            self.pass_on_observed(message, reply, context=message)
        finally:
            self._inside.release()

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        self._enter()
        try:
            self.outcomes += 1
            if context.kwargs.get("interrupt") == "outcome":
                raise Interrupt("in handle_outcome")
            copy_outcome(outcome, reply)
        finally:
            self._inside.release()

    def handle_other(self, message: Any) -> Any:
        if isinstance(message, Hold):
            message.entered.set()
            message.release.wait(WAIT)
            if message.crash:
                raise Boom("crashed while held")
            return None
        return super().handle_other(message)


class Crasher(Actor):
    """A sibling that crashes when told "crash" (to make a one_for_all group restart)."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("sibling crashed")
        return super().on_receive(message)


def _echo(value: Any = None, **_kwargs: Any) -> Any:
    return value


def _after(go: threading.Event, value: Any = None, **_kwargs: Any) -> Any:
    """An operation that ends once ``go`` is set (so its outcome finds the host idle)."""
    go.wait(WAIT)
    if isinstance(value, BaseException):
        raise value
    return value


def _host(parent: SupervisorRef | Any, stages: list[HostedStage], **spec: Any) -> Ref:
    ref: Ref = parent.start_child(
        ChildSpec("host", StageHost, args=(stages,), restart=Restart.PERMANENT, **spec)
    )
    assert ref.settle(WAIT)
    return ref


def _watched(starts: list[Watch], workers: int = 2) -> list[HostedStage]:
    return [
        HostedStage("watch", Watch, (starts,)),
        HostedStage("bulkhead", BulkheadActor, (BulkheadConfig(max_workers=workers),)),
    ]


def _switching(test: Callable[[], None]) -> None:
    with tiny_switch():
        test()


# ------------------------------------------------------------------------------------------
# Bugs the review found (fixed)
# ------------------------------------------------------------------------------------------


def test_a_sync_fallback_never_runs_on_the_runtime_event_loop(rt: Runtime) -> None:
    failure: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def primary() -> str:
        return await asyncio.wrap_future(failure)  # fails once the caller's turn is over

    async def secondary() -> str:
        return "from the secondary"

    backup = rt.pipeline("backup")
    ran_in: list[str] = []

    def fallback(_error: BaseException, _message: Execute) -> Any:
        ran_in.append(threading.current_thread().name)
        # bounded: the deadlock ends after 1 s with AskTimeout instead of hanging the test
        return backup.submit(secondary).get(1.0)

    api = rt.pipeline("api", fallback=fallback)
    assert api.stages["fallback"].settle(WAIT)  # started: the host is idle
    answer = api.submit(primary)
    failure.set_exception(Boom("primary down"))
    assert answer.get(WAIT) == "from the secondary"
    assert ran_in
    assert not ran_in[0].endswith("-loop")


def test_acall_never_runs_a_sync_fallback_on_the_callers_event_loop(rt: Runtime) -> None:
    busy = threading.Event()
    free = threading.Event()
    loop_ran = threading.Event()

    def occupy() -> None:
        busy.set()
        free.wait(WAIT)

    def fallback(_error: BaseException, _message: Execute) -> bool:
        # the caller's loop sets loop_ran as soon as it gets to run anything
        return loop_ran.wait(1.0)

    api = rt.pipeline("api", bulkhead=BulkheadConfig(max_workers=1), fallback=fallback)
    assert api.stages["fallback"].settle(WAIT)  # started: the host is idle
    held = api.submit(occupy)
    assert busy.wait(WAIT)

    async def main() -> Any:
        asyncio.get_running_loop().call_soon(loop_ran.set)
        return await api.acall(_echo, "never runs: the only worker is busy")

    try:
        answer = asyncio.run(main())
    finally:
        free.set()
        held.get(WAIT)
    assert answer is True  # the fallback saw the loop run while acall was pending


def test_a_base_exception_in_a_workers_lent_turn_crashes_the_host_alone(rt: Runtime) -> None:
    starts: list[Watch] = []
    ref = _host(rt.supervisor, _watched(starts, workers=1))
    host = _current(ref)
    bulkhead = host.stages[1]
    assert isinstance(bulkhead, BulkheadActor)
    worker = bulkhead._workers[0].actor
    assert worker._thread is not None

    reply: Future[Any] = Future()
    go = threading.Event()
    doomed = Execute(_after, args=(go,), name="doomed", kwargs={"interrupt": "outcome"})
    assert host.run_inline(0, Envelope(doomed, reply))
    go.set()  # the worker reports the outcome to an idle host: it takes the turn
    assert isinstance(reply.exception(WAIT), Interrupt)  # the caller got the stage's crash
    _restarted(ref, host)
    worker._thread.join(WAIT)  # the crashed bulkhead's worker ends after its callbacks
    assert ref.ask(Execute(_echo, args=("after",)), WAIT) == "after"
    assert len(starts) == 2  # one crash of the host, one restart...
    assert not worker._crashed  # ...and none of the worker, whose operation went well


def test_a_system_exit_in_a_lent_turn_on_the_event_loop_leaves_the_loop_running() -> None:
    done: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def answer() -> str:
        return await asyncio.wrap_future(done)  # answers once the caller's turn is over

    def exit_now(_done: Future[Any]) -> None:
        sys.exit(3)

    runtime = Runtime(name="rt").start()
    try:
        api = runtime.pipeline("api", circuit_breaker=CircuitBreakerConfig())
        host_ref = api.stages["bulkhead"].host  # type: ignore[attr-defined]
        assert host_ref.settle(WAIT)  # started: the host is idle
        host = _current(host_ref)
        first: Future[Any] = Future()
        first.add_done_callback(exit_now)  # runs where the breaker answers: a lent turn
        api.send(api.execute(answer), first)
        done.set_result("answer")
        _restarted(host_ref, host)  # the SystemExit crashed the host (as it should)
        assert first.get(WAIT) == "answer"
        assert api.submit(answer).get(1.0) == "answer"
    finally:
        runtime.stop()
        loop = runtime.loop._loop
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()  # a loop thread ended by the SystemExit left its loop open
        gc.collect()  # the coroutine a dead loop never ran is reported now, not later


def test_a_retired_host_never_handles_a_message_sent_while_it_waited_for_its_turn(
    rt: Runtime,
) -> None:
    """The host's thread waits for a turn a worker holds; the supervisor retires it (its
    stop timed out) and a successor takes over: the message that waited is the successor's,
    handled before what the same sender sent after it, and never by the retired host."""
    entered, release, go = threading.Event(), threading.Event(), threading.Event()
    ran_in: list[threading.Thread] = []

    def slow_callback(_done: Future[Any]) -> None:
        # Watch answers the caller in the worker's lent turn, where this runs: it holds the
        # turn (user code should not block there; it can).
        ran_in.append(threading.current_thread())
        entered.set()
        release.wait(WAIT)

    starts: list[Watch] = []
    stages = [
        HostedStage("watch", Watch, (starts,)),
        HostedStage("bulkhead", BulkheadActor, (BulkheadConfig(max_workers=2),)),
    ]
    group = rt.supervisor.start_child(
        ChildSpec("group", Supervisor, kwargs={"strategy": "one_for_all", "max_restarts": 5})
    )
    assert isinstance(group, SupervisorRef)
    ref = _host(group, stages, shutdown_timeout=0.2)
    crasher = group.start_child(ChildSpec("crasher", Crasher))
    old = _current(ref)
    old_bulkhead = old.stages[1]
    assert isinstance(old_bulkhead, BulkheadActor)

    first, second, third = Future[Any](), Future[Any](), Future[Any]()
    first.add_done_callback(slow_callback)
    assert old.run_inline(0, Envelope(Execute(_after, args=(go, "first"), name="first"), first))
    go.set()  # the worker reports the outcome to an idle host: the callback holds its turn
    assert entered.wait(WAIT)
    assert ran_in[0] is not old._thread
    ref.forward(Execute(_echo, args=("second",), name="second"), second)  # to the mailbox
    crasher.tell("crash")  # one_for_all: the host is stopped, in vain, then retired
    try:
        new = _restarted(ref, old)
        ref.forward(Execute(_echo, args=("third",), name="third"), third)
        assert third.get(WAIT) == "third"
    finally:
        release.set()
    assert first.get(WAIT) == "first"
    assert second.get(WAIT) == "second"
    old._thread.join(WAIT)  # type: ignore[union-attr]
    # a retired incarnation never runs on_stop: its pool is ours to stop
    for worker in old_bulkhead._workers:
        stop_and_join(worker.ref, WAIT)
    watch_old, watch_new = old.stages[0], new.stages[0]
    assert isinstance(watch_old, Watch)
    assert isinstance(watch_new, Watch)
    assert watch_old.seen == ["first"]
    assert watch_new.seen == ["second", "third"]  # the current incarnation, in order


def test_a_stop_answered_by_release_keeps_the_mailbox_counts_balanced() -> None:
    mailbox = Mailbox("m")
    owner = object()
    mailbox.adopt(owner)
    stop: Future[Any] = Future()
    mailbox.offer(Envelope(pykka.messages._ActorStop(), reply_to=stop), urgent=True)
    mailbox.suspend(10)  # the owner crashed before reading the stop; a restart is coming
    mailbox.release(owner, "the actor has stopped")
    assert stop.get(WAIT) is None  # answered, never to be handled
    mailbox.adopt(object())
    assert mailbox.all_handled()


def test_a_host_crashing_while_its_group_restarts_lends_its_turn_again(rt: Runtime) -> None:
    starts: list[Watch] = []
    group = rt.supervisor.start_child(
        ChildSpec("group", Supervisor, kwargs={"strategy": "one_for_all", "max_restarts": 5})
    )
    assert isinstance(group, SupervisorRef)
    ref = _host(group, _watched(starts))
    crasher = group.start_child(ChildSpec("crasher", Crasher))
    old = _current(ref)
    hold = Hold(crash=True)
    HostedRef(ref, 0, "watch").tell(hold)  # the host's thread handles it, and will crash
    assert hold.entered.wait(WAIT)
    crasher.tell("crash")  # the supervisor stops the host for the group restart...
    _until(lambda: bool(old.mailbox._front), "the stop request is queued")
    hold.release.set()  # ...which crashes before reading the stop
    new = _restarted(ref, old)
    reply: Future[Any] = Future()
    assert new.run_inline(0, Envelope(Execute(_echo, args=("inline",)), reply))
    assert reply.get(WAIT) == "inline"


# ------------------------------------------------------------------------------------------
# Guarantees checked that hold
# ------------------------------------------------------------------------------------------


def test_a_base_exception_in_a_callers_lent_turn_reaches_the_caller_and_crashes_once(
    rt: Runtime,
) -> None:
    starts: list[Watch] = []
    ref = _host(rt.supervisor, _watched(starts))
    host = _current(ref)
    reply: Future[Any] = Future()
    message = Execute(_echo, name="doomed", kwargs={"interrupt": "execute"})
    with pytest.raises(Interrupt):  # as a Ctrl-C in the caller's thread would
        host.run_inline(0, Envelope(message, reply), reraise=True)
    assert isinstance(reply.exception(WAIT), Interrupt)  # the crashing message's outcome
    _restarted(ref, host)
    assert ref.ask(Execute(_echo, args=("after",)), WAIT) == "after"
    assert len(starts) == 2


def test_stress_one_handler_at_a_time_per_sender_order_and_one_outcome_each(
    rt: Runtime,
) -> None:
    """Callers and workers race for the turn: stage handlers never overlap, each caller's
    operations reach the outermost stage in the order it sent them, and every operation
    gets exactly its own outcome."""
    starts: list[Watch] = []
    stages = [
        HostedStage("outer", Watch, (starts,)),
        HostedStage("inner", Watch, (starts,)),
        HostedStage("bulkhead", BulkheadActor, (BulkheadConfig(max_workers=3, max_queue=10_000),)),
    ]
    ref = _host(rt.supervisor, stages)
    outer = HostedRef(ref, 0, "outer")
    callers, per_caller = 4, 150
    replies: dict[str, Future[Any]] = {}
    lock = threading.Lock()

    def caller(index: int) -> None:
        for seq in range(per_caller):
            name = f"{index}:{seq}"
            reply: Future[Any] = Future()
            with lock:
                replies[name] = reply
            outer.forward(Execute(_echo, args=(name,), name=name), reply)

    def run() -> None:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert all(reply.get(WAIT) == name for name, reply in replies.items())

    _switching(run)
    assert len(replies) == callers * per_caller
    assert ref.settle(WAIT)
    host = _current(ref)
    assert starts == list(reversed(host.stages[:2]))  # no crash, no restart
    outer_stage, inner_stage = host.stages[0], host.stages[1]
    assert isinstance(outer_stage, Watch)
    assert isinstance(inner_stage, Watch)
    assert outer_stage.overlaps == inner_stage.overlaps == 0
    assert outer_stage.outcomes == inner_stage.outcomes == callers * per_caller
    for index in range(callers):
        sent = [f"{index}:{seq}" for seq in range(per_caller)]
        assert [name for name in outer_stage.seen if name.startswith(f"{index}:")] == sent
    assert host.mailbox.all_handled()  # the counts are balanced once everything settled


def test_a_sync_fallback_may_call_another_pipeline_from_a_workers_lent_turn(
    rt: Runtime,
) -> None:
    def primary() -> str:
        raise Boom("primary down")

    backup = rt.pipeline("backup")
    api = rt.pipeline(
        "api", fallback=lambda _error, _message: backup.call(_echo, "from the secondary")
    )
    for _ in range(20):
        assert api.call(primary) == "from the secondary"


def test_a_fallback_may_resubmit_to_its_own_pipeline_from_a_lent_turn(rt: Runtime) -> None:
    """The turn is not re-entrant: the nested send goes through the mailbox, no deadlock."""
    resubmitted: list[Future[Any]] = []

    def primary() -> str:
        raise Boom("primary down")

    def fallback(_error: BaseException, _message: Execute) -> str:
        resubmitted.append(api.submit(_echo, "again"))
        return "queued again"

    api = rt.pipeline("api", fallback=fallback)
    for _ in range(10):
        assert api.call(primary) == "queued again"
    assert [reply.get(WAIT) for reply in resubmitted] == ["again"] * 10


def test_a_pipeline_stopped_during_a_lent_turn_answers_every_operation(rt: Runtime) -> None:
    entered, release, go = threading.Event(), threading.Event(), threading.Event()
    ran_in: list[threading.Thread] = []

    def slow_callback(_done: Future[Any]) -> None:
        # The breaker answers the caller in the worker's lent turn: a done-callback on the
        # caller's future runs there and holds the turn (user code should not; it can).
        ran_in.append(threading.current_thread())
        entered.set()
        release.wait(WAIT)

    api = rt.pipeline("api", circuit_breaker=CircuitBreakerConfig())
    assert api.stages["circuit_breaker"].settle(WAIT)  # started: the host is idle
    host = _current(api.stages["bulkhead"].host)  # type: ignore[attr-defined]
    first = api.submit(_after, go, "first")
    first.add_done_callback(slow_callback)
    go.set()
    assert entered.wait(WAIT)
    assert ran_in[0] is not host._thread  # a worker holds the host's turn
    second = api.submit(_echo, "second")  # the host is busy: through its mailbox
    stopper = threading.Thread(target=rt.supervisor.terminate_child, args=("pipeline:api",))
    stopper.start()
    _until(lambda: bool(host.mailbox._front), "the stop request is queued")
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert first.get(WAIT) == "first"
    assert second.get(WAIT) == "second"  # queued before the stop: handled
    assert not host.run_inline(0, Envelope(Execute(_echo), Future()))  # stopped: no lending


def test_an_inline_rejection_reaches_the_caller_before_send_returns(rt: Runtime) -> None:
    """A full bulkhead rejects in the caller's lent turn: the caller holds its outcome as
    soon as submit returns (no hop), and the host lends its turn again afterwards."""
    busy, free = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        free.wait(WAIT)

    api = rt.pipeline("api", bulkhead=BulkheadConfig(max_workers=1))
    assert api.stages["bulkhead"].settle(WAIT)  # started: the host is idle
    held = api.submit(occupy)
    assert busy.wait(WAIT)
    try:
        rejected = api.submit(_echo, "x")
        assert rejected.done()
        assert isinstance(rejected.exception(0), BulkheadFull)
    finally:
        free.set()
    held.get(WAIT)
    host = _current(api.stages["bulkhead"].host)  # type: ignore[attr-defined]
    assert api.stages["bulkhead"].settle(WAIT)
    assert host.mailbox.all_handled()
