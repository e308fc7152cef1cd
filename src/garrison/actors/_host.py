"""A fused pipeline: several stages run by one actor, with no mailbox hop between them.

Each stage of a pipeline is an actor of its own by default design, and each hop from one to
the next costs a mailbox put and a thread wake-up (tens of microseconds on a busy machine,
more than the stage's own work). A :class:`StageHost` runs a whole chain of stages on one
thread instead, as Akka fuses stream stages:

- every stage is the same object as when it runs alone (a :class:`~garrison.actors.Stage`
  subclass, its code unchanged), constructed by the host but never started as an actor;
- a stage's inbox is a :class:`StagePort`: what is sent to it from the host's own thread (the
  next stage's Execute, an outcome coming back through a future callback) is queued on a
  local run queue and handled before the host reads its next message; what is sent from
  any other thread (a worker's completion, a timer, a handle's request) goes through the
  host's mailbox, addressed to the stage;
- each message is still handled by one stage at a time, to completion, in the order it was
  sent (the actor rules hold per stage), only without the thread switch.

**Turns.** Whoever handles a message for the stages holds the host's *turn* (a lock): the
host's own thread for what comes through its mailbox, or, when the host is idle, the thread
that brings the message. A caller sending an operation into an idle pipeline, or a worker
reporting an outcome to an idle host, runs the stages' code itself, under the turn, instead
of waking the host's thread (two thread switches less per operation). The rules stay those
of an actor: one message at a time per stage, to completion, and a message never overtakes
one sent before it by the same sender (a thread takes the turn only when every message the
mailbox ever took in has been handled). Only stages that say they may run anywhere
(:meth:`~garrison.actors.Stage.runs_inline`: the built-in ones without a Redis backend) are
run this way; a host with any other stage always uses its own thread. A stage that crashes
in a borrowed turn crashes the host as it would in the host's thread: the host's thread is
woken and goes through the usual crash, and the message that crashed gets the error.

What fusing costs: the stages share one thread and one fate. A crash of any stage (a bug:
operations' own failures never crash a stage) is a crash of the host, and the supervisor
restarts all the stages together; each keeps its state through ``snapshot``/``restore``
as it would alone (windows, an open breaker, pending deadlines), and the message being
handled, as always, gets the crash as its outcome. ``rt.pipeline(..., fused=False)`` runs
each stage as its own actor instead.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pykka
from pykka import messages
from pykka._envelope import Envelope

from garrison._actor import PING, Actor, hosted_inbox
from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._mailbox import Mailbox
from garrison._messages import Execute
from garrison._ref import Ref, actor_of
from garrison._scheduler import Scheduler
from garrison._spawn import inject_services
from garrison.actors._stage import Observed, Stage
from garrison.observability.events import emit

__all__ = ["HostedRef", "HostedStage", "StageHost", "StagePort", "ToStage"]


@dataclass(frozen=True, slots=True)
class HostedStage:
    """How a :class:`StageHost` builds one stage: ``actor_class(*args, downstream, **kwargs)``.

    ``downstream`` is the next hosted stage (the host fills it in); the host's clock,
    scheduler and loop are passed to the stage when its constructor takes them.
    """

    name: str
    actor_class: type[Stage]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class _InlineCrashed:
    """Wakes a host whose stage crashed in a borrowed turn; otherwise handled as nothing."""

    __slots__ = ()

    def refused(self, reason: str) -> None:
        """Refused by an ending host's mailbox: there is nothing left to wake."""

    def __repr__(self) -> str:
        return "InlineCrashed()"


_INLINE_CRASHED = _InlineCrashed()


class ToStage:
    """A message for one stage of a host, travelling through the host's mailbox."""

    __slots__ = ("message", "port")

    def __init__(self, port: StagePort, message: Any) -> None:
        self.port = port
        self.message = message

    def refused(self, reason: str) -> None:
        """The host is gone: give the message its outcome as the stage's own mailbox would."""
        self.port.refuse(Envelope(self.message), reason)

    def __repr__(self) -> str:
        return f"ToStage({self.port.name}, {self.message!r})"


class StagePort(Mailbox):
    """The inbox of a hosted stage: it hands what is sent to the stage to its host."""

    __slots__ = ("host", "index", "stopped")

    def __init__(self, host: StageHost, index: int, name: str) -> None:
        super().__init__(name)
        self.host = host
        self.index = index
        self.stopped = False

    def offer(self, envelope: Envelope[Any], *, urgent: bool = False) -> bool:
        """Hand ``envelope`` to the stage through its host (``urgent`` has no meaning here)."""
        if self.stopped:
            self.refuse(envelope, "the actor has stopped")
            return False
        host = self.host
        if host._ident == threading.get_ident():  # on_host_thread(), inlined: the hot path
            host.run_queue.append((self.index, envelope.message, envelope.reply_to))
            return True
        return host.mailbox.offer(Envelope(ToStage(self, envelope.message), envelope.reply_to))

    def post(self, message: Any, reply: Any) -> bool:
        """:meth:`offer` of ``Envelope(message, reply)``, without the envelope on the host's
        thread (where every stage-to-stage send of an operation is made)."""
        host = self.host
        if host._ident == threading.get_ident() and not self.stopped:
            host.run_queue.append((self.index, message, reply))
            return True
        return self.offer(Envelope(message, reply))

    def offer_behind(self, envelope: Envelope[Any]) -> bool:
        """Hand ``envelope`` to the stage behind everything queued for the host.

        A message a stage sends itself from the host's thread is otherwise handled as soon
        as the current one is done, ahead of the host's mailbox.
        """
        if self.stopped:
            self.refuse(envelope, "the actor has stopped")
            return False
        wrapped = Envelope(ToStage(self, envelope.message), envelope.reply_to)
        return self.host.mailbox.offer(wrapped)

    def try_put(self, envelope: Envelope[Any]) -> bool:
        """Hand ``envelope`` to the stage if its host takes it; False (and nothing done) if not."""
        if self.stopped:
            return False
        host = self.host
        if host._ident == threading.get_ident():
            host.run_queue.append((self.index, envelope.message, envelope.reply_to))
            return True
        if getattr(envelope.message, "handled_by_sender", False) and host.run_inline(
            self.index, envelope
        ):
            return True
        return host.mailbox.try_put(Envelope(ToStage(self, envelope.message), envelope.reply_to))

    # The host's own mailbox carries the state; a port has none of its own.
    def adopt(self, owner: object) -> None:
        pass

    def retire(self, owner: object) -> None:
        pass

    def suspend(self, limit: int) -> None:
        pass

    def release(self, owner: object, reason: str) -> None:
        pass

    def all_handled(self) -> bool:
        """True when the host has handled everything sent to it (to any of its stages)."""
        mailbox = self.host.mailbox
        return mailbox._sent == mailbox._handled  # Mailbox.all_handled, without the call

    def empty(self) -> bool:
        """True when the host has nothing queued (for any of its stages)."""
        return self.host.mailbox.empty() and not self.host.run_queue

    def qsize(self) -> int:
        """What the host has queued, for all its stages (a stage's backlog, at most)."""
        return self.host.mailbox.qsize() + len(self.host.run_queue)


class StageHost(Actor):
    """Runs a chain of stages (outermost first) on one thread; see the module docstring.

    An :class:`~garrison.Execute` sent to the host itself goes to the outermost stage.
    :meth:`ref_for` gives a stage's :class:`HostedRef`, which reaches that stage.
    """

    def __init__(
        self,
        stages: Sequence[HostedStage],
        *,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        super().__init__()
        services = {"clock": clock, "scheduler": scheduler, "loop": loop}
        services = {key: value for key, value in services.items() if value is not None}
        if not stages:
            raise ValueError("a StageHost needs at least one stage")
        self.run_queue: deque[tuple[int, Any, Any]] = deque()  # (stage, message, reply)
        self._ident: int | None = None  # the thread holding the turn, if any
        self._turn = threading.Lock()
        self._inline = False  # other threads may take the turn (the host runs, all stages allow)
        self._inline_error: BaseException | None = None
        self._crashed_item: tuple[Stage, Any, Any] | None = None  # (stage, message, reply)
        self._restored: dict[str, Any] = {}
        self.names = tuple(spec.name for spec in stages)
        built: list[Stage] = []
        downstream: Ref | None = None
        for index in reversed(range(len(stages))):  # innermost first: each needs the next
            spec = stages[index]
            port = StagePort(self, index, spec.name)
            kwargs = inject_services(spec.actor_class, spec.kwargs, services)
            if downstream is not None:
                kwargs["downstream"] = downstream
            with hosted_inbox(port):
                stage = spec.actor_class(*spec.args, **kwargs)
            built.append(stage)
            downstream = Ref(stage.actor_ref, spec.name)
        built.reverse()
        self.stages: tuple[Stage, ...] = tuple(built)

    def on_host_thread(self) -> bool:
        """True when called from the thread holding this host's turn."""
        return self._ident == threading.get_ident()

    def handling_here(self) -> bool:
        """True in the thread holding the turn (the host's, or one it lent the turn to)."""
        return self.on_host_thread()

    def run_inline(self, index: int, envelope: Envelope[Any], *, reraise: bool = False) -> bool:
        """Handle ``envelope`` for stage ``index`` in the calling thread, if the host is idle.

        Returns False, having done nothing, when the host's turn is taken, anything sent to
        the host is still unhandled (it would be overtaken), the host is not running, or a
        stage may not run outside the host's thread: then send it through the mailbox.
        Everything the stages send each other meanwhile is handled before this returns.

        A crash in the turn is the host's (its thread crashes with the error). A
        ``BaseException`` (say KeyboardInterrupt) is raised here too with ``reraise`` (the
        caller's own thread), and kept from the thread otherwise (a worker reporting an
        outcome must not die of a stage's crash).
        """
        if not self._inline:
            return False
        turn = self._turn
        if not turn.acquire(False):
            return False
        try:
            mailbox = self.mailbox
            if not self._inline or mailbox.owner is not self or not mailbox.all_handled():
                return False
            self._ident = threading.get_ident()
            try:
                self._dispatch(index, envelope.message, envelope.reply_to)
                self._drain()
            except BaseException as error:
                self._crashed_inline(error)
                if reraise and not isinstance(error, Exception):
                    raise
            finally:
                self._ident = None
        finally:
            turn.release()
        return True

    def _crashed_inline(self, error: BaseException) -> None:
        """A stage crashed in a borrowed turn: have the host's thread crash with ``error``."""
        self._inline = False
        self._inline_error = error
        if not self.mailbox.offer(Envelope(_INLINE_CRASHED)):
            # The host is already ending: nobody will crash it; answer the message here, and
            # give what the stages sent each other to the mailbox (whose close answers it).
            item = self._crashed_item
            if item is not None:
                self._crashed_item = None
                self._crash_item(*item, error)
            self._requeue_local()

    def fused_parts(self) -> list[tuple[str, str]]:
        """``(stage name, stage class name)``, innermost first (as a supervisor starts them)."""
        return [
            (name, type(stage).__name__)
            for name, stage in reversed(list(zip(self.names, self.stages, strict=True)))
        ]

    def stage_ref(self, index: int) -> pykka.ActorRef[Any]:
        """The pykka ActorRef of the stage at ``index`` in this incarnation."""
        return self.stages[index].actor_ref

    # -- lifecycle ----------------------------------------------------------------------------

    def on_start(self) -> None:
        """Name the stages after the host's place in the tree, then start them, innermost first."""
        self._ident = threading.get_ident()
        parent = self.mailbox.name.rpartition("/")[0]
        for stage, name in zip(self.stages, self.names, strict=True):
            port = stage.mailbox
            port.name = f"{parent}/{name}" if parent else name
            port.dead_letters = self.mailbox.dead_letters
            stage._thread = self._thread
        for stage in reversed(self.stages):
            stage.on_start()
            self._drain()
        self._inline = all(stage.runs_inline() for stage in self.stages)

    def on_stop(self) -> None:
        """Stop the stages, outermost first (as a supervisor stops its children).

        A stage whose ``on_stop`` fails does not keep the next ones from stopping (their
        workers and timers would outlive the runtime); the first error is raised at the end.
        """
        self._inline = False
        first_error: Exception | None = None
        try:
            for stage in self.stages:
                try:
                    stage.on_stop()
                except Exception as error:
                    first_error = first_error or error
                finally:
                    self._mark_stopped(stage, refuse=True)
                    self._drain()
        finally:
            self._ident = None
        if first_error is not None:
            raise first_error

    def _actor_loop_teardown(self) -> None:
        # A host retired while stuck ends here without on_stop: its thread's ident may be
        # reused, and a message for its stages must not land in a run queue nobody reads.
        self._inline = False
        self._ident = None
        super()._actor_loop_teardown()

    def _actor_loop_setup(self) -> None:
        with self._turn:
            try:
                super()._actor_loop_setup()
            finally:
                self._ident = None

    def _actor_loop_running(self) -> None:
        # Every message is taken and handled under the turn, and counted (run_inline lends
        # the turn only when all that was sent is handled). Taking under the turn matters: a
        # host retired while it waits for a lent turn has taken nothing its successor needs.
        mailbox = self.mailbox
        stopped = self.actor_stopped
        turn = self._turn
        me = threading.get_ident()
        while not stopped.is_set():
            with turn:
                self._ident = me
                try:
                    error = self._inline_error
                    if error is not None:
                        # A stage crashed in a lent turn: this incarnation ends with that
                        # error; what is queued (the wake-up too) is for the next one.
                        self._crash(None, error)
                        return
                    envelope = mailbox.take(self, block=False)
                    if envelope is not None:
                        try:
                            self._receive(envelope)
                        finally:
                            mailbox.mark_handled()
                        continue
                finally:
                    self._ident = None
            if mailbox.owner is not self:  # retired: a successor owns the mailbox now
                pykka.ActorRegistry.unregister(self.actor_ref)
                stopped.set()
                return
            mailbox.wait(self)

    def on_failure(self, *exc_info: Any) -> None:
        """A stage crashed: every stage fails with the host; what was queued is kept."""
        self._inline = False
        for stage in self.stages:
            with suppress(Exception):  # one stage's cleanup must not skip the others'
                stage.on_failure(*exc_info)
        # What the stages sent each other meanwhile is for their next incarnations; so is
        # what still reaches these ports (the host's mailbox outlives this incarnation).
        self._ident = None
        self._requeue_local()
        for stage in self.stages:
            self._mark_stopped(stage, refuse=False)

    def _mark_stopped(self, stage: Stage, *, refuse: bool) -> None:
        if refuse:
            port = stage.mailbox
            assert isinstance(port, StagePort)
            port.stopped = True
        stage.actor_stopped.set()

    def snapshot(self) -> dict[str, Any]:
        """Each stage's snapshot, by stage name (for a supervised restart).

        A stage whose snapshot fails keeps the one it was restored from (as a supervisor
        keeps an actor's previous snapshot); the other stages' snapshots are not lost.
        """
        states: dict[str, Any] = {}
        for name, stage in zip(self.names, self.stages, strict=True):
            take = getattr(stage, "snapshot", None)
            if not callable(take):
                continue
            try:
                states[name] = take()
            except Exception as error:
                emit(
                    "garrison.supervisor.snapshot_failed",
                    level="error",
                    actor=stage.mailbox.name,
                    error=error,
                )
                if name in self._restored:
                    states[name] = self._restored[name]
        return states

    def restore(self, state: dict[str, Any]) -> None:
        """Give each stage its predecessor's snapshot.

        A stage whose restore fails crashes the host (the first error is raised), but only
        after every other stage got its state back, so the snapshot taken for the next
        restart still holds theirs.
        """
        self._restored = state
        first_error: Exception | None = None
        for name, stage in zip(self.names, self.stages, strict=True):
            if name in state:
                try:
                    getattr(stage, "restore")(state[name])  # noqa: B009 (an optional hook)
                except Exception as error:
                    first_error = first_error or error
        if first_error is not None:
            raise first_error

    # -- messages -----------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """An Execute for the outermost stage, or a message for one stage."""
        envelope = self._current
        assert envelope is not None
        self._deferred = True  # every reply is the stages' business
        if message is _INLINE_CRASHED:
            return None  # a predecessor's wake-up, left over
        if type(message) is ToStage:
            self._dispatch(message.port.index, message.message, envelope.reply_to)
        else:
            self._dispatch(0, message, envelope.reply_to)
        self._drain()
        return None

    def _drain(self) -> None:
        run_queue = self.run_queue
        dispatch = self._dispatch
        while run_queue:
            dispatch(*run_queue.popleft())

    def _dispatch(self, index: int, message: Any, reply: Any) -> None:
        stage = self.stages[index]
        kind = type(message)
        try:
            # The two messages of every operation go straight to their handlers (what the
            # stage's on_receive would do with them, less its dispatch).
            if kind is Execute and type(reply) is Future:
                stage.handle_execute(message, reply)
                return
            if kind is Observed:
                stage._observed(message)
                return
        except BaseException:
            self._crashed_item = (stage, message, reply)
            raise
        if message is PING:
            if reply is not None:
                reply.set(None)
            return
        if kind is messages._ActorStop:
            stage_name = self.names[index]
            error = TypeError(f"stage {stage_name!r} is fused; it stops with its pipeline")
            _answer(reply, error)
            return
        stage._current = Envelope(message, reply)
        stage._deferred = False
        try:
            response = stage._handle_receive(message)
        except BaseException:
            stage._current = None
            self._crashed_item = (stage, message, reply)
            raise
        stage._current = None
        if not stage._deferred and reply is not None:
            reply.set(response)

    def _crash_item(self, stage: Stage, message: Any, reply: Any, error: BaseException) -> None:
        """Give the message that crashed a stage its outcome, as a crashing actor would."""
        if reply is not None:
            _answer(reply, error)
            return
        refused = getattr(message, "refused", None)
        if callable(refused):
            refused("its handler crashed")
        else:
            port = stage.mailbox
            port.dead_letters.record(port.name, message, "its handler crashed", error)

    def _crash(self, envelope: Envelope[Any] | None, error: BaseException) -> None:
        item = self._crashed_item
        if item is None:
            super()._crash(envelope, error)
            return
        # The host's own message passed its reply on; the stage's message gets the error,
        # after the supervisor has been told (as a crashing actor's asker would).
        super()._crash(None, error)
        self._crash_item(*item, error)

    def _requeue_local(self) -> None:
        """Put what the crashed incarnation had queued locally back in the host's mailbox.

        The next incarnation handles it; if there is none, the mailbox's close answers it.
        """
        run_queue = self.run_queue
        mailbox = self.mailbox
        while run_queue:
            index, message, reply = run_queue.popleft()
            port = self.stages[index].mailbox
            assert isinstance(port, StagePort)
            mailbox.offer(Envelope(ToStage(port, message), reply))


class HostedRef(Ref):
    """A stable Ref to one stage of a :class:`StageHost`, reached through the host's Ref.

    It follows the host across restarts (the host's Ref does); ``actor_ref`` is the stage
    object of the current incarnation.
    """

    __slots__ = ("_host_ref", "_index")

    def __init__(self, host_ref: Ref, index: int, name: str) -> None:
        super().__init__(host_ref.actor_ref, name)
        self._host_ref = host_ref
        self._index = index

    @property
    def host(self) -> Ref:
        """The Ref of the host running this stage."""
        return self._host_ref

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The stage's pykka ActorRef in the current incarnation of its host."""
        host = actor_of(self._host_ref.actor_ref)
        if isinstance(host, StageHost):
            return host.stage_ref(self._index)
        return self._host_ref.actor_ref

    @property
    def actor_class(self) -> type[pykka.Actor]:
        """The class of the stage behind this Ref."""
        return self.actor_ref.actor_class

    def is_alive(self) -> bool:
        """True while the host runs."""
        return self._host_ref.is_alive()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """A fused stage stops with its pipeline: refused with a TypeError."""
        raise TypeError(f"stage {self.name!r} is fused; it stops with its pipeline")

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the host has handled every message queued before this call."""
        return self._host_ref.settle(timeout)

    def repoint(self, actor_ref: pykka.ActorRef[Any]) -> None:
        """Nothing to do: the host's Ref is re-pointed by its supervisor."""

    def _send(self, envelope: Envelope[Any]) -> None:
        message = envelope.message
        if type(message) is Execute:
            host = actor_of(self._host_ref.actor_ref)
            if isinstance(host, StageHost) and host.run_inline(self._index, envelope, reraise=True):
                return  # the host was idle: handled in this thread
        if self._index == 0 and type(message) is not messages._ActorStop:
            # The outermost stage is the host's default recipient: no wrapper.
            self._host_ref._send(envelope)
            return
        host = actor_of(self._host_ref.actor_ref)
        if isinstance(host, StageHost):
            port = host.stages[self._index].mailbox
            assert isinstance(port, StagePort)
            self._host_ref._send(Envelope(ToStage(port, message), envelope.reply_to))
            return
        self._host_ref._send(envelope)  # the host is gone: its mailbox answers

    # The host's stable Ref (one per path, re-pointed on restarts) identifies the host: the
    # hash must not follow the incarnation, or a HostedRef is lost from sets after a restart.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, HostedRef):
            return self._host_ref is other._host_ref and self._index == other._index
        if isinstance(other, Ref):
            return False  # a stage is not its host (nor another actor); Ref's __eq__ says it is
        return NotImplemented

    def __hash__(self) -> int:
        return hash((id(self._host_ref), self._index))

    def __repr__(self) -> str:
        return f"<garrison.HostedRef {self.name!r} in {self._host_ref!r}>"


def _answer(reply: Any, error: BaseException) -> None:
    if isinstance(reply, Future):
        reply.try_set_exception(error)
    elif reply is not None:
        with suppress(Exception):  # a pykka future answered already
            reply.set_exception((type(error), error, error.__traceback__))
