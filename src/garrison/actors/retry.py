"""The retry actor: tries an operation again after a backoff, on timers, never sleeping.

:class:`RetryActor` is a thin shell around the pure
:class:`~garrison.policies.backoff.RetryPolicy`. For every :class:`~garrison.Execute` it keeps
a small record (attempt number, start time, previous backoff, last error), hands the
operation on with :meth:`~garrison.actors._stage.Stage.pass_on_observed` and, when the
outcome comes back, asks the policy what to do. A retry is a **timer message** from the
scheduler to the actor itself: while one operation waits for its next attempt the actor
handles every other message, so thousands of operations can wait at once.

What the caller gets (exactly one outcome per operation):

- the result of the first attempt that succeeds (and that ``retry_on_result`` accepts);
- the error **as it is** when it is not retried at all: not retryable (``retry_exceptions``
  does not match), a cancellation (``CancelledError``, ``KeyboardInterrupt``: never retried),
  a garrison rejection that is not retried (``QueueTimeout``), or any give-up after a single
  attempt (``max_attempts=1``, or a deadline or hint that leaves no room for even one retry);
- the last error **as it is** when the retry budget of the service is empty
  (``garrison.retry.budget_exhausted`` is logged) or when a ``retry_after`` hint is longer
  than ``max_delay`` (a ``CircuitOpen`` that says "come back in an hour" reaches the caller
  with its ``retry_after``);
- :class:`~garrison.RetriesExhausted` ``(attempts, last_error)`` when at least one retry was
  made and the attempts ran out or the next wait would end past ``config.deadline``
  (the deadline is never overslept: the actor gives up at once instead of waiting). For a
  result rejected by ``retry_on_result`` ``last_error`` is None and the rejected result is in
  the error's ``last_result`` attribute;
- an error raised by ``retry_on_result`` itself (logged as
  ``garrison.retry.result_check_failed``);
- :class:`~garrison.ActorUnavailable` (its ``__cause__`` is the last error) when the actor
  stops or crashes while the operation waits for a retry timer. An attempt that is running
  downstream when the actor stops completes the caller's reply with its own outcome, as is.

``Execute.timeout`` bounds each attempt (that is the timeout stage's business, further
down); ``config.deadline`` bounds the whole operation, all attempts and waits included,
from the start of the first attempt.

Events (structlog), per operation: ``garrison.retry.attempt_failed`` (operation, attempt,
delay, error; a retry is scheduled), ``garrison.retry.succeeded`` (after at least one retry:
attempts, elapsed), ``garrison.retry.gave_up`` (attempts, reason, error),
``garrison.retry.budget_exhausted`` and, as the seed document's "Multiple retries" warning,
``garrison.retry.multiple_retries`` (level warning) when an operation took more than two
attempts, whatever its outcome.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison._ref import Ref
from garrison._scheduler import Scheduler, TimerHandle
from garrison.actors._run import copy_outcome
from garrison.actors._stage import Stage
from garrison.errors import ActorUnavailable, RetriesExhausted
from garrison.observability.events import emit
from garrison.policies.backoff import (
    RetryBudget,
    RetryConfig,
    RetryDecision,
    RetryPolicy,
    parse_retry_after,
)

__all__ = ["RetryActor"]

# Give-ups that turn the last error into RetriesExhausted (after at least one retry).
_EXHAUSTING = frozenset(("attempts_exhausted", "deadline"))
# Give-ups of an operation that could have been retried (logged as gave_up).
_RETRY_GIVE_UPS = frozenset(
    ("attempts_exhausted", "deadline", "budget_exhausted", "retry_after_too_long")
)
_MULTIPLE_RETRIES_AFTER = 2  # the seed's "attempts > 2" warning


class _Operation:
    """One operation under retry: everything needed to run its next attempt."""

    __slots__ = (
        "attempt",
        "id",
        "last_error",
        "message",
        "previous_delay",
        "reply",
        "started_at",
        "timer",
    )

    def __init__(self, op_id: int, message: Execute, reply: Future[Any], started_at: float) -> None:
        self.id = op_id
        self.message = message
        self.reply = reply
        self.started_at = started_at
        self.attempt = 1
        self.previous_delay: float | None = None
        self.last_error: BaseException | None = None
        self.timer: TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<retry #{self.id} {self.message.name} attempt {self.attempt}>"


@dataclass(frozen=True, slots=True)
class _RetryDue:
    """The timer message: time for the next attempt of ``operation``."""

    operation: _Operation
    actor: str

    def refused(self, reason: str) -> None:
        """The actor's mailbox closed before this was handled: answer the operation.

        Normally :meth:`RetryActor.on_stop` has answered it already and this does nothing
        (and the timer never becomes a dead letter).
        """
        operation = self.operation
        error = ActorUnavailable(self.actor, reason)
        error.__cause__ = operation.last_error
        operation.reply.try_set_exception(error)


class RetryActor(Stage):
    """Retries failed operations with backoff on scheduler timers (a resilience stage).

    ``config`` is a :class:`~garrison.RetryConfig`. With a ``downstream`` Ref each attempt is
    forwarded to it; without one the actor runs the operation itself. ``service`` names the
    service in events and status. The retry budget is ``budget`` when given (pass the same
    :class:`~garrison.policies.backoff.RetryBudget` to several actors that call one service
    to share it; a budget passed in also survives restarts of the actor; actors sharing one
    update it without a lock, so under contention its counts are approximate, never wrong by
    more than the racing updates) or one built from ``config.budget``, owned by this actor.
    ``seed`` seeds the jitter. ``scheduler`` (injected by a Runtime or Supervisor) delivers
    the retry timers; without one the actor makes its own for ``clock`` and stops it when it
    stops. See the module docstring for what the caller gets in each case.
    """

    stage: ClassVar[str] = "retry"

    def __init__(
        self,
        config: RetryConfig,
        downstream: Ref | None = None,
        *,
        service: str = "service",
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
        seed: int | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        if isinstance(config, Mapping):
            config = RetryConfig.from_dict(config)
        if not isinstance(config, RetryConfig):
            raise TypeError(f"config must be a RetryConfig, got {config!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self.config = config
        self.service = service
        self.policy = RetryPolicy(config, random.Random(seed), budget)
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Operation] = {}
        self._in_flight: dict[int, _Operation] = {}
        self._operations = 0
        self._attempts = 0
        self._retries = 0
        self._succeeded = 0
        self._succeeded_after_retry = 0
        self._failed = 0
        self._failed_after_retry = 0
        self._gave_up: Counter[str] = Counter()
        self._abandoned = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def on_stop(self) -> None:
        """Answer every operation that waits for a retry timer; release an owned scheduler."""
        self._abandon_waiting("the retry actor stopped")

    def on_failure(self, *_exc_info: object) -> None:
        """Like :meth:`on_stop`: a crash must not leave a waiting operation unanswered."""
        self._abandon_waiting("the retry actor crashed")

    def _abandon_waiting(self, why: str) -> None:
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for operation in waiting:
            if operation.timer is not None:
                operation.timer.cancel()
            self._abandoned += 1
            error = ActorUnavailable(
                self.mailbox.name,
                f"{why} while {operation.message.name!r} waited for attempt "
                f"{operation.attempt + 1}",
            )
            error.__cause__ = operation.last_error
            if operation.reply.try_set_exception(error):
                emit(
                    "garrison.retry.abandoned",
                    level="warning",
                    service=self.service,
                    operation=operation.message.name,
                    attempts=operation.attempt,
                    reason=why,
                    error=operation.last_error,
                )
        self.release_scheduler()

    # -- messages -------------------------------------------------------------------------------

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Start the first attempt of ``message``."""
        operation = _Operation(next(self._ids), message, reply, self.clock.monotonic())
        self._operations += 1
        self._attempt(operation)

    def handle_other(self, message: Any) -> Any:
        """Retry timers; anything else is refused (TypeError)."""
        if isinstance(message, _RetryDue):
            self._retry_due(message.operation)
            return None
        return super().handle_other(message)

    def _attempt(self, operation: _Operation) -> None:
        self._attempts += 1
        meta = operation.reply.meta
        if meta is not None:
            meta["attempts"] = operation.attempt
        self._in_flight[operation.id] = operation
        self.pass_on_observed(
            operation.message,
            operation.reply,
            context=operation,
            answer_success=self.config.retry_on_result is None,
        )

    def _retry_due(self, operation: _Operation) -> None:
        operation.timer = None
        self._waiting.pop(operation.id, None)
        if operation.reply.done():
            return  # answered already (abandoned when an earlier incarnation stopped)
        operation.attempt += 1
        self._attempt(operation)

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        """Decide, with the policy, whether the attempt that just ended is retried."""
        if not isinstance(context, _Operation):
            copy_outcome(outcome, reply)
            return
        operation = context
        self._in_flight.pop(operation.id, None)
        error = outcome.exception(0)
        if reply.done() and error is not None:
            return  # nobody can receive another outcome
        now = self.clock.monotonic()
        if error is None:
            self._on_result(operation, outcome.get(0), now)
        else:
            self._on_error(operation, error, now)

    def _on_result(self, operation: _Operation, result: Any, now: float) -> None:
        if self.config.retry_on_result is None:
            self.policy.on_success()
            self._succeed(operation, result, now)
            return
        try:
            decision = self.policy.on_result(
                operation.attempt,
                result,
                now,
                operation.started_at,
                previous_delay=operation.previous_delay,
            )
        except Exception as check_error:
            emit(
                "garrison.retry.result_check_failed",
                level="error",
                service=self.service,
                operation=operation.message.name,
                attempt=operation.attempt,
                error=check_error,
            )
            self._finish_failed(operation, check_error, "result_check_failed", now)
            return
        if decision.reason == "success":
            self._succeed(operation, result, now)
        elif decision.retry:
            self._schedule(operation, decision, None, now, rejected_result=result)
        else:
            self._give_up_on_result(operation, result, decision, now)

    def _on_error(self, operation: _Operation, error: BaseException, now: float) -> None:
        decision = self.policy.on_error(
            operation.attempt,
            error,
            now,
            operation.started_at,
            previous_delay=operation.previous_delay,
            retry_after=_header_hint(error),
        )
        if decision.retry:
            self._schedule(operation, decision, error, now)
            return
        reason = decision.reason
        outcome: BaseException = error
        if reason in _EXHAUSTING and operation.attempt > 1:
            outcome = RetriesExhausted(operation.attempt, error)
        if reason == "budget_exhausted":
            budget = self.policy.budget
            emit(
                "garrison.retry.budget_exhausted",
                level="warning",
                service=self.service,
                operation=operation.message.name,
                attempts=operation.attempt,
                error=error,
                tokens=budget.tokens if budget is not None else None,
            )
        self._finish_failed(operation, outcome, reason, now, last_error=error)

    # -- outcomes -------------------------------------------------------------------------------

    def _schedule(
        self,
        operation: _Operation,
        decision: RetryDecision,
        error: BaseException | None,
        now: float,
        rejected_result: Any = None,
    ) -> None:
        operation.previous_delay = decision.backoff
        operation.last_error = error
        self._retries += 1
        fields: dict[str, Any] = {"error": error}
        if error is None:
            fields = {"rejected_result": type(rejected_result).__name__}
        emit(
            "garrison.retry.attempt_failed",
            service=self.service,
            operation=operation.message.name,
            attempt=operation.attempt,
            delay=round(decision.delay, 6),
            elapsed=round(now - operation.started_at, 6),
            **fields,
        )
        try:
            operation.timer = self.schedule(decision.delay, _RetryDue(operation, self.mailbox.name))
        except RuntimeError as stopped:  # the runtime is shutting down: no more timers
            unavailable = ActorUnavailable(self.mailbox.name, str(stopped))
            unavailable.__cause__ = error
            self._abandoned += 1
            operation.reply.try_set_exception(unavailable)
            return
        self._waiting[operation.id] = operation

    def _succeed(self, operation: _Operation, result: Any, now: float) -> None:
        self._succeeded += 1
        attempts = operation.attempt
        if attempts > 1:
            self._succeeded_after_retry += 1
            emit(
                "garrison.retry.succeeded",
                service=self.service,
                operation=operation.message.name,
                attempts=attempts,
                elapsed=round(now - operation.started_at, 6),
            )
            self._warn_multiple(operation, "success")
        operation.reply.try_set_result(result)

    def _give_up_on_result(
        self, operation: _Operation, result: Any, decision: RetryDecision, now: float
    ) -> None:
        if operation.attempt > 1 and decision.reason in _EXHAUSTING:
            error = RetriesExhausted(operation.attempt, None, last_result=result)
            self._finish_failed(operation, error, decision.reason, now, last_error=None)
            return
        # Never retried, or the budget refused: the result goes to the caller as it is.
        if decision.reason in _RETRY_GIVE_UPS:
            self._log_gave_up(operation, decision.reason, None, now)
        self._succeeded += 1
        if operation.attempt > 1:
            self._succeeded_after_retry += 1
        operation.reply.try_set_result(result)

    def _finish_failed(
        self,
        operation: _Operation,
        outcome: BaseException,
        reason: str,
        now: float,
        *,
        last_error: BaseException | None = None,
    ) -> None:
        self._failed += 1
        if operation.attempt > 1:
            self._failed_after_retry += 1
        self._gave_up[reason] += 1
        if reason in _RETRY_GIVE_UPS or operation.attempt > 1:
            self._log_gave_up(
                operation, reason, last_error if last_error is not None else outcome, now
            )
        operation.reply.try_set_exception(outcome)

    def _log_gave_up(
        self, operation: _Operation, reason: str, error: BaseException | None, now: float
    ) -> None:
        # A first attempt refused with a long retry_after (an open breaker, say) is routine:
        # the rejection itself was logged where it happened.
        routine = operation.attempt == 1 and reason == "retry_after_too_long"
        emit(
            "garrison.retry.gave_up",
            level="info" if routine else "warning",
            service=self.service,
            operation=operation.message.name,
            attempts=operation.attempt,
            reason=reason,
            error=error,
            elapsed=round(now - operation.started_at, 6),
        )
        self._warn_multiple(operation, "failure")

    def _warn_multiple(self, operation: _Operation, outcome: str) -> None:
        if operation.attempt > _MULTIPLE_RETRIES_AFTER:
            emit(
                "garrison.retry.multiple_retries",
                level="warning",
                service=self.service,
                operation=operation.message.name,
                attempts=operation.attempt,
                outcome=outcome,
            )

    # -- status ---------------------------------------------------------------------------------

    def runs_inline(self) -> bool:
        """True when it has a downstream: it never runs operations itself then, and never
        blocks (see :meth:`Stage.runs_inline`)."""
        return self.downstream is not None

    def status(self) -> dict[str, Any]:
        """Counters, what is waiting or running now, the budget and the main settings."""
        policy = self.policy.status()
        budget = policy.pop("budget")
        return {
            **super().status(),
            "service": self.service,
            "operations": self._operations,
            "attempts": self._attempts,
            "retries_scheduled": self._retries,
            "waiting": len(self._waiting),
            "in_flight": len(self._in_flight),
            "succeeded": self._succeeded,
            "succeeded_after_retry": self._succeeded_after_retry,
            "failed": self._failed,
            "failed_after_retry": self._failed_after_retry,
            "gave_up": dict(self._gave_up),
            "abandoned": self._abandoned,
            "budget": budget,
            "config": policy,
        }


def _header_hint(error: BaseException) -> float | None:
    """A ``Retry-After`` header on ``error.response`` (httpx/requests style), if any.

    A numeric ``retry_after`` attribute (CircuitOpen, RateLimited, garrison's HTTP errors)
    is read by the policy itself; this covers errors that only carry the response.
    """
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool):
        return None
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("Retry-After")
    except Exception:
        return None
    if value is None:
        return None
    return parse_retry_after(value, wall_now=time.time())
