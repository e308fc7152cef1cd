"""The timeout supervisor: answers ``OperationTimeout`` on time, whatever the operation does.

For every :class:`~garrison.Execute` the :class:`TimeoutSupervisor` arms a timer (on the
injected clock) for ``Execute.timeout`` if the operation has one, else for the current
timeout of its :class:`~garrison.policies.timeouts.AdaptiveTimeoutPolicy` (fixed
``base_timeout``, or the seed's adaptive ``mean + k * stdev``). It hands the operation on
and then:

- the outcome comes first: the timer is cancelled, a success teaches the adaptive policy its
  duration, and the caller gets the outcome;
- the timer comes first: the caller gets :class:`~garrison.errors.OperationTimeout` at once
  and the downstream gets :class:`~garrison.actors.bulkhead.Abandon` for it: a coroutine is
  cancelled for real, a worker stuck in a synchronous call is retired and replaced (see the
  bulkhead). The late outcome is dropped.

Without a downstream the supervisor starts a private :class:`BulkheadActor` (``workers``
workers, ``queue`` waiting at most) to run operations on, since a stage cannot time out a
call running on its own thread.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

from pykka._envelope import Envelope

from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison._ref import Ref
from garrison._scheduler import Scheduler, TimerHandle
from garrison._spawn import start_actor, stop_and_join
from garrison.actors._run import copy_outcome
from garrison.actors._stage import Stage
from garrison.actors.bulkhead import Abandon, BulkheadActor, BulkheadConfig
from garrison.errors import OperationTimeout
from garrison.observability.events import emit
from garrison.policies.timeouts import AdaptiveTimeoutPolicy, TimeoutConfig

__all__ = ["TimeoutSupervisor"]


@dataclass(frozen=True, slots=True)
class _Expired:
    token: int


@dataclass(frozen=True, slots=True)
class _Finished:
    token: int
    inner: Future[Any]
    reply: Future[Any]

    handled_by_sender: ClassVar[bool] = True  # a fused host may handle it in the reporter's turn

    def refused(self, reason: str) -> None:
        """The supervisor is gone: the caller gets the outcome as it is."""
        copy_outcome(self.inner, self.reply)


class _Pending:
    __slots__ = ("inner", "message", "reply", "started", "timeout", "timer")

    def __init__(
        self,
        message: Execute,
        reply: Future[Any],
        inner: Future[Any],
        started: float,
        timeout: float,
    ) -> None:
        self.message = message
        self.reply = reply
        self.inner = inner
        self.started = started
        self.timeout = timeout
        self.timer: TimerHandle | None = None


class TimeoutSupervisor(Stage):
    """Bounds every operation by a fixed or adaptive timeout; see the module docstring."""

    stage = "timeout"

    def __init__(
        self,
        config: TimeoutConfig | None = None,
        downstream: Ref | None = None,
        *,
        name: str | None = None,
        workers: int = 10,
        queue: int = 1000,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        config = config if config is not None else TimeoutConfig()
        if not isinstance(config, TimeoutConfig):
            raise TypeError(f"config must be a TimeoutConfig, got {config!r}")
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.config = config
        self.name = name if name is not None else ""
        self.policy = AdaptiveTimeoutPolicy(config)
        self._workers = workers
        self._queue = queue
        self._private_pool: Ref | None = None
        self._pending: dict[int, _Pending] = {}
        self._tokens = itertools.count(1)
        self.completed = 0
        self.timeouts = 0

    def on_start(self) -> None:
        """Start a private worker pool when there is no downstream; re-arm restored timers."""
        if self.downstream is None:
            path = f"{self.mailbox.name}/pool"
            pool = start_actor(
                BulkheadActor,
                (BulkheadConfig(max_workers=self._workers, max_queue=self._queue),),
                {"name": path, "clock": self.clock, "scheduler": self.scheduler, "loop": self.loop},
                path,
                self.mailbox.dead_letters,
            )
            self._private_pool = Ref(pool, path)
        now = self.clock.monotonic()
        for token, pending in self._pending.items():
            # Operations a crashed predecessor handed on keep their deadlines.
            remaining = pending.started + pending.timeout - now
            pending.timer = self.schedule(max(remaining, 0.0), _Expired(token))

    def on_stop(self) -> None:
        """Stop the private pool (pending operations still get their outcomes)."""
        self._release(forget=True)

    def on_failure(self, *_exc: Any) -> None:
        """A crash: pending operations keep their outcomes and, after a restart, deadlines."""
        self._release(forget=False)

    def _release(self, *, forget: bool) -> None:
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
            # Whoever finishes first answers: the operation's own outcome still arrives.
            pending.inner.add_done_callback(_relay(pending.reply))
        if forget:
            self._pending.clear()
        if self._private_pool is not None:
            stop_and_join(self._private_pool, 30.0)
            self._private_pool = None
        self.release_scheduler()

    # -- operations ---------------------------------------------------------------------------

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Arm the timer and hand the operation on."""
        target = self.downstream if self.downstream is not None else self._private_pool
        assert target is not None
        timeout = message.timeout if message.timeout is not None else self.policy.current()
        token = next(self._tokens)
        inner: Future[Any] = Future()
        inner.meta = reply.meta
        pending = _Pending(message, reply, inner, self.clock.monotonic(), timeout)
        self._pending[token] = pending
        mailbox = self.mailbox

        def report(done: Future[Any]) -> None:
            if not mailbox.try_put(Envelope(_Finished(token, done, reply))):
                copy_outcome(done, reply)

        pending.timer = self.schedule(timeout, _Expired(token))
        inner.add_done_callback(report)
        target.forward(message, inner)

    def _finished(self, notice: _Finished) -> None:
        pending = self._pending.pop(notice.token, None)
        if pending is None:
            # Timed out already, or started by a previous incarnation: first answer wins.
            copy_outcome(notice.inner, notice.reply)
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self.completed += 1
        if notice.inner.exception(0) is None:
            self.policy.record(self.clock.monotonic() - pending.started)
        copy_outcome(notice.inner, notice.reply)

    def _expired(self, token: int) -> None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return
        self.timeouts += 1
        pending.reply.try_set_exception(
            OperationTimeout(pending.timeout, operation=pending.message.name)
        )
        target = self.downstream if self.downstream is not None else self._private_pool
        if target is not None:
            target.tell(Abandon(pending.inner))
        emit(
            "garrison.timeout.expired",
            level="warning",
            timeout_stage=self.name,
            operation=pending.message.name,
            timeout=pending.timeout,
        )

    def handle_other(self, message: Any) -> Any:
        """Timer expiries and operation completions."""
        if isinstance(message, _Finished):
            self._finished(message)
            return None
        if isinstance(message, _Expired):
            self._expired(message.token)
            return None
        return super().handle_other(message)

    def runs_inline(self) -> bool:
        """True when it has a downstream: it never runs operations itself then, and never
        blocks (see :meth:`Stage.runs_inline`)."""
        return self.downstream is not None

    def status(self) -> dict[str, Any]:
        """The current timeout, the adaptive statistics and counters."""
        return {
            "stage": self.stage,
            "name": self.name,
            **self.policy.status(),
            "pending": len(self._pending),
            "completed": self.completed,
            "timeouts": self.timeouts,
        }

    def snapshot(self) -> dict[str, Any]:
        """Response times and the operations still in flight, for a supervised restart."""
        return {
            "samples": list(self.policy._samples),
            "pending": dict(self._pending),
            "next_token": next(self._tokens),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Relearn a predecessor's response times; take over its operations in flight."""
        for duration in state["samples"]:
            self.policy.record(duration)
        self._pending = dict(state["pending"])
        self._tokens = itertools.count(state["next_token"])


def _relay(reply: Future[Any]) -> Any:
    def relay(done: Future[Any]) -> None:
        copy_outcome(done, reply)

    return relay
