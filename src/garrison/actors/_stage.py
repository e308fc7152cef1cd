"""The base of every resilience stage: admit, reject or forward an Execute; observe outcomes.

A stage never waits on the next one (DESIGN.md rule 1). It either

- completes the caller's reply itself (a rejection),
- hands the Execute on with the caller's reply (:meth:`Stage.pass_on`): the next stage, or
  whoever finally runs the operation, answers the caller directly, or
- hands it on with a reply of its own (:meth:`Stage.pass_on_observed`) when it must see the
  outcome first: the outcome comes back to the stage as a message, the stage updates its
  state, and only then completes the caller's reply (rule 2: a caller who waits for one call
  and then makes the next sees the state the first call produced).

With no downstream a stage runs the operation itself: a coroutine on the runtime's loop, a
plain function on the stage's own thread (so a stage alone serialises synchronous work;
pipelines put a bulkhead of workers behind the stages for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pykka._envelope import Envelope

from garrison._actor import Actor
from garrison._clock import Clock, SystemClock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute, GetStatus
from garrison._ref import Ref
from garrison._scheduler import Scheduler, TimerHandle, make_scheduler
from garrison.actors._run import copy_outcome, run_operation

__all__ = ["Observed", "Stage"]


@dataclass(frozen=True, slots=True)
class Observed:
    """The outcome of an operation a stage handed on with a reply of its own."""

    context: Any
    outcome: Future[Any]
    reply: Future[Any]

    handled_by_sender: ClassVar[bool] = True
    """A fused host may have the thread that reports the outcome handle it (see _host)."""

    def refused(self, reason: str) -> None:
        """The stage stopped before handling this: the caller gets the outcome as it is."""
        copy_outcome(self.outcome, self.reply)


class Stage(Actor):
    """Base class of the resilience actors. Subclasses implement :meth:`handle_execute`."""

    stage: ClassVar[str] = "stage"

    def __init__(
        self,
        downstream: Ref | None = None,
        *,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        super().__init__()
        if downstream is not None and not isinstance(downstream, Ref):
            raise TypeError(f"downstream must be a garrison.Ref, got {downstream!r}")
        self.downstream = downstream
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.loop = loop
        self._owns_scheduler = scheduler is None
        self.scheduler: Scheduler = (
            scheduler if scheduler is not None else make_scheduler(self.clock)
        )
        self._self_ref: Ref | None = None

    # -- timers -------------------------------------------------------------------------------

    @property
    def self_ref(self) -> Ref:
        """A Ref to this incarnation of the stage (timers are addressed to it)."""
        if self._self_ref is None:
            self._self_ref = Ref(self.actor_ref, self.mailbox.name)
        return self._self_ref

    def schedule(self, delay: float, message: Any) -> TimerHandle:
        """Deliver ``message`` to this stage after ``delay`` seconds of its clock."""
        return self.scheduler.schedule(delay, self.self_ref, message)

    def release_scheduler(self) -> None:
        """Stop the scheduler if this stage made its own (no runtime gave it one)."""
        if self._owns_scheduler:
            self.scheduler.stop()

    # -- dispatch -----------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Route Executes, observed outcomes and status requests; refuse anything else."""
        if isinstance(message, Execute):
            self.handle_execute(message, self.defer())
            return None
        if isinstance(message, Observed):
            self._observed(message)
            return None
        if isinstance(message, GetStatus):
            return self.status()
        return self.handle_other(message)

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Admit, reject or forward ``message``; ``reply`` must get exactly one outcome."""
        self.pass_on(message, reply)

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        """React to the outcome of an operation handed on with :meth:`pass_on_observed`.

        The default passes the outcome on to the caller unchanged.
        """
        copy_outcome(outcome, reply)

    def handle_other(self, message: Any) -> Any:
        """Messages other than Execute and GetStatus; the default refuses them (TypeError)."""
        return super().on_receive(message)

    def status(self) -> dict[str, Any]:
        """This stage's status, as a plain dict."""
        return {"stage": self.stage}

    def runs_inline(self) -> bool:
        """True if, fused, this stage may handle messages in any thread that holds its
        host's turn (a caller's, a worker's), not only in the host's own thread.

        Only for stages whose handlers never block and never care which thread they run in;
        the default is False. The built-in stages say True unless they talk to Redis.
        """
        return False

    # -- passing operations on ----------------------------------------------------------------

    def pass_on(self, message: Execute, reply: Future[Any]) -> None:
        """Hand ``message`` to the downstream (or run it) with ``reply`` as its reply."""
        if self.downstream is not None:
            self.downstream.forward(message, reply)
        else:
            run_operation(message, reply, self.loop)

    def pass_on_observed(
        self,
        message: Execute,
        reply: Future[Any],
        context: Any,
        *,
        answer_success: bool = False,
    ) -> None:
        """Hand ``message`` on and have its outcome come back to :meth:`handle_outcome`.

        With ``answer_success``, a successful outcome goes to the caller at once, from the
        thread that produced it, and :meth:`handle_outcome` sees it afterwards (for
        bookkeeping): one mailbox hop less, for stages whose state no caller needs to see
        updated before its answer (retry, fallback without a cache). If this stage is gone
        by the time the outcome arrives, the outcome goes to the caller as it is: it is
        never lost.
        """
        inner: Future[Any] = Future()
        inner.meta = reply.meta
        mailbox = self.mailbox

        def report(done: Future[Any]) -> None:
            if answer_success and done.exception(0) is None:
                copy_outcome(done, reply)
            if not mailbox.try_put(Envelope(Observed(context, done, reply))):
                copy_outcome(done, reply)

        inner.add_done_callback(report)
        self.pass_on(message, inner)

    def _observed(self, notice: Observed) -> None:
        try:
            self.handle_outcome(notice.context, notice.outcome, notice.reply)
        except BaseException as error:
            # A bug in this stage must not leave the caller without an outcome.
            notice.reply.try_set_exception(error)
            raise
