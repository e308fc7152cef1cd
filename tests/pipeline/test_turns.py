"""Turns: an idle fused host lets the thread that brings a message run its stages.

The actor rules must hold whichever thread runs a stage: one message at a time, in the
order each sender sent them, and a crash is the host's crash (supervised, the message that
crashed answered with the error).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pykka._envelope import Envelope

from _helpers.tiny_switch import tiny_switch
from garrison import Execute, Future, Runtime
from garrison._mailbox import Mailbox
from garrison._ref import Ref, actor_of
from garrison.actors import BulkheadConfig
from garrison.actors._host import HostedRef, HostedStage, StageHost
from garrison.actors._stage import Stage
from garrison.actors.bulkhead import BulkheadActor
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.timeouts import TimeoutConfig
from garrison.supervision import ChildSpec, Restart

WAIT = 5.0


class Block:
    """Tell this to a Recording stage: it blocks the host until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


class Recording(Stage):
    """Records (label, thread) for every Execute it passes on, and what else it handles."""

    stage = "recording"

    def __init__(
        self,
        label: str,
        inline: bool = True,
        downstream: Ref | None = None,
        *,
        clock: Any = None,
        scheduler: Any = None,
        loop: Any = None,
    ) -> None:
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.label = label
        self.inline = inline
        self.seen: list[Any] = []

    def on_stop(self) -> None:
        self.release_scheduler()

    def runs_inline(self) -> bool:
        return self.inline

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        self.seen.append(message.name)
        if message.kwargs.get("crash") == self.label:
            raise Boom(f"{self.label} crashed")
        threads = message.kwargs.get("threads")
        if threads is not None:
            threads.append((self.label, threading.get_ident()))
        self.pass_on(message, reply)

    def handle_other(self, message: Any) -> Any:
        if isinstance(message, Block):
            message.entered.set()
            message.release.wait(WAIT)
            return None
        if message == "seen":
            return list(self.seen)
        return super().handle_other(message)


class Boom(Exception):
    pass


def _threads(**kwargs: Any) -> list[tuple[str, int]]:
    return list(kwargs["threads"])


def _noop(**_kwargs: Any) -> None:
    return None


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(name="rt") as runtime:
        yield runtime


def _host(rt: Runtime, *stages: HostedStage) -> tuple[Ref, StageHost]:
    ref = rt.supervisor.start_child(
        ChildSpec("host", StageHost, args=(list(stages),), restart=Restart.PERMANENT)
    )
    assert ref.settle(WAIT)  # started: its stages are ready
    actor = actor_of(ref.actor_ref)
    assert isinstance(actor, StageHost)
    return ref, actor


def _chain(labels: str, *, inline: bool = True) -> list[HostedStage]:
    # the innermost stage runs the operation itself: it must not say it runs inline
    return [
        HostedStage(label, Recording, (label, inline and index < len(labels) - 1))
        for index, label in enumerate(labels)
    ]


def _send(host: StageHost, message: Execute) -> tuple[bool, Future[Any]]:
    reply: Future[Any] = Future()
    return host.run_inline(0, Envelope(message, reply)), reply


def _pooled(labels: str) -> list[HostedStage]:
    """Stages that all run inline, with a bulkhead innermost: a worker runs the operation."""
    return [HostedStage(label, Recording, (label,)) for label in labels] + [
        HostedStage("bulkhead", BulkheadActor, (BulkheadConfig(max_workers=4, max_queue=1000),))
    ]


def test_an_idle_host_runs_stages_in_the_thread_that_sends(rt: Runtime) -> None:
    _ref, host = _host(rt, *_pooled("ab"))
    threads: list[tuple[str, int]] = []
    ran, reply = _send(host, Execute(_threads, kwargs={"threads": threads}))
    assert ran
    result = reply.get(WAIT)
    me = threading.get_ident()
    # a and b handled the operation in this thread; a worker ran it
    assert result == [("a", me), ("b", me)]


def test_a_host_with_a_stage_that_must_stay_home_never_lends_its_turn(rt: Runtime) -> None:
    ref, host = _host(rt, *_chain("abc", inline=False))
    threads: list[tuple[str, int]] = []
    ran, _reply = _send(host, Execute(_threads, kwargs={"threads": threads}))
    assert not ran  # refused, nothing done: the caller uses the mailbox
    assert not threads
    result = ref.ask(Execute(_threads, kwargs={"threads": threads}), WAIT)
    assert host._thread is not None
    assert {ident for _, ident in result} == {host._thread.ident}


def test_a_busy_host_does_not_lend_its_turn(rt: Runtime) -> None:
    ref, host = _host(rt, *_pooled("ab"))
    block = Block()
    ref.tell(block)
    assert block.entered.wait(WAIT)
    ran, _ = _send(host, Execute(_noop, name="while-busy"))
    assert not ran
    block.release.set()
    assert ref.settle(WAIT)


def test_a_message_never_overtakes_one_its_sender_queued_before() -> None:
    """The sender's first message goes through the mailbox; the second must not run inline
    before it (it would, nearly always, without the host's count of unhandled messages)."""
    with tiny_switch(), Runtime(name="rt") as rt:
        ref, host = _host(rt, *_pooled("ab"))
        replies = []
        for round_ in range(300):
            first: Future[Any] = Future()
            ref.forward(Execute(_noop, name=f"{round_}-first"), first)
            ran, second = _send(host, Execute(_noop, name=f"{round_}-second"))
            if not ran:
                ref.forward(Execute(_noop, name=f"{round_}-second"), second)
            replies += [first, second]
        for reply in replies:
            reply.get(WAIT)
        seen = HostedRef(ref, 0, "a").ask("seen", WAIT)
    expected = [f"{r}-{which}" for r in range(300) for which in ("first", "second")]
    assert seen == expected


def test_a_crash_in_a_lent_turn_is_the_hosts_crash(rt: Runtime) -> None:
    ref, host = _host(rt, *_pooled("ab"))
    ran, reply = _send(host, Execute(_noop, name="doomed", kwargs={"crash": "b"}))
    assert ran  # handled here, and crashed here
    with pytest.raises(Boom, match="b crashed"):
        reply.get(WAIT)
    assert not host.run_inline(0, Envelope(Execute(_noop), Future()))  # no more lending
    # The host's thread went through the crash: the supervisor restarted the host...
    for _ in range(500):
        successor = actor_of(ref.actor_ref)
        if successor is not host and ref.is_alive():
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the host was not restarted")
    assert isinstance(successor, StageHost)
    assert host.actor_stopped.is_set()
    assert ref.settle(WAIT)
    # ...which lends its turn again, and a sends still works both ways
    ran, again = _send(successor, Execute(_noop, name="after"))
    assert ran
    assert again.get(WAIT) is None
    assert ref.ask(Execute(lambda: "mailbox"), WAIT) == "mailbox"


def test_messages_queued_behind_a_crash_in_a_lent_turn_reach_the_next_incarnation() -> None:
    with tiny_switch(), Runtime(name="rt") as rt:
        ref, _ = _host(rt, *_pooled("ab"))
        outcomes: list[Future[Any]] = []
        for index in range(50):
            reply: Future[Any] = Future()
            crash = "b" if index == 25 else None
            message = Execute(_noop, name=str(index), kwargs={"crash": crash})
            current = actor_of(ref.actor_ref)
            if not (
                isinstance(current, StageHost) and current.run_inline(0, Envelope(message, reply))
            ):
                ref.forward(message, reply)
            outcomes.append(reply)
        errors = [reply.exception(WAIT) for reply in outcomes]
    # exactly the crashing operation failed; every other one got its result
    assert [index for index, error in enumerate(errors) if error is not None] == [25]
    assert isinstance(errors[25], Boom)


def test_outcomes_are_handled_in_the_reporting_thread_when_the_host_is_idle(rt: Runtime) -> None:
    handled_in: list[int] = []
    worker_threads: list[int] = []

    def op() -> str:
        worker_threads.append(threading.get_ident())
        return "ok"

    api = rt.pipeline(
        "p",
        retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
        circuit_breaker=CircuitBreakerConfig(),
        timeout=TimeoutConfig(base_timeout=30.0),
        bulkhead=BulkheadConfig(max_workers=1),
    )
    breaker = actor_of(api.stages["circuit_breaker"].actor_ref)
    assert breaker is not None
    original = breaker.handle_outcome  # type: ignore[attr-defined]

    def spy(*args: Any) -> None:
        handled_in.append(threading.get_ident())
        original(*args)

    breaker.handle_outcome = spy  # type: ignore[attr-defined]
    assert api.call(op) == "ok"
    # the worker finished the operation and, the host being idle, the breaker saw the
    # outcome in the worker's thread, before the caller got it (rule 2)
    assert handled_in == worker_threads


def test_mailbox_counts_what_it_took_in_and_what_was_handled() -> None:
    mailbox = Mailbox("m")
    assert mailbox.all_handled()
    first, urgent = Envelope("one"), Envelope("urgent")
    mailbox.offer(first)
    mailbox.offer(urgent, urgent=True)
    assert not mailbox.all_handled()
    assert mailbox.withdraw(urgent)  # never handled, never will be: it counts as settled
    owner = object()
    mailbox.adopt(owner)
    mailbox.wait(owner)  # something is queued: returns, taking nothing
    assert mailbox.take(owner, block=False) is first
    assert not mailbox.all_handled()  # taken, not handled yet
    assert mailbox.take(owner, block=False) is None  # nothing else queued: no wait either
    mailbox.mark_handled()
    assert mailbox.all_handled()
    assert mailbox.try_put(Envelope("two"))
    assert not mailbox.all_handled()


def test_settle_from_a_lent_turn_returns_false_at_once(rt: Runtime) -> None:
    ref, host = _host(rt, *_pooled("ab"))
    settled: list[bool] = []

    def settle_here(**_kwargs: Any) -> None:
        return None

    reply: Future[Any] = Future()

    # a done-callback of a reply completed inside the turn: the caller's own thread here
    pings: list[int] = []

    def settle(_done: Future[Any]) -> None:
        sent = host.mailbox._sent
        settled.append(ref.settle(WAIT))
        pings.append(host.mailbox._sent - sent)

    reply.add_done_callback(settle)
    stage = host.stages[0]
    assert isinstance(stage, Recording)
    original = stage.handle_execute

    def answer_in_turn(message: Execute, answer: Future[Any]) -> None:
        original(message, Future())  # the operation still runs; the caller is answered here
        answer.try_set_result("answered in the turn")

    stage.handle_execute = answer_in_turn  # type: ignore[method-assign]
    assert host.run_inline(0, Envelope(Execute(settle_here), reply))
    assert reply.get(WAIT) == "answered in the turn"
    assert settled == [False]  # at once, not after the timeout: the turn is this thread's
    assert pings == [0]  # no ping left waiting for this very thread
