"""The fallback actor: answers a failed operation with a substitute instead of the error.

:class:`FallbackActor` is the outermost stage of a pipeline and the usual
``route_failures_to`` child of a supervisor. It hands each :class:`~garrison.Execute` on with
:meth:`~garrison.actors._stage.Stage.pass_on_observed`; a success goes to the caller (and,
with ``cache_last_success=True``, is remembered under the operation's ``name``); a failure
is replaced, in this order, by

1. ``"cache"``: the last successful result of an operation with the same ``Execute.name``
   (only with ``cache_last_success=True``; a bounded LRU of ``cache_size`` names). The key is
   the *name only*, not the arguments: give operations whose results depend on their
   arguments distinct names (``name=f"fetch_user:{user_id}"``) or they will share one entry;
2. ``"value"``: the static ``value`` (any object, ``None`` included; a callable passed as
   ``value`` is returned as it is, never called);
3. ``"callable"``: ``fallback(error, message)``; it may be a coroutine function (it then runs
   on the runtime's event loop). If it raises, the caller gets *that* error, chained from the
   original (``__cause__`` is the operation's error), and ``garrison.fallback.failed`` is
   logged;
4. nothing: the original error is re-raised.

``value`` and ``fallback`` exclude each other; either may be combined with
``cache_last_success`` (the cache is consulted first). At least one of the three is required.
Cancellations (``CancelledError``, ``KeyboardInterrupt``, anything that is not an
``Exception``) are never replaced: somebody asked the work to stop.

Failures routed from supervisors arrive as :class:`~garrison.OperationFailed` (a told Execute
that a crash left without an outcome). Nobody waits for those: the actor computes the
fallback all the same (a fallback callable may record or re-queue the operation), logs
``garrison.fallback.routed`` with the outcome and counts it in its status.

Events: ``garrison.fallback.used`` (operation, error, source), ``garrison.fallback.failed``
(the callable raised), ``garrison.fallback.reraised`` (nothing to substitute) and
``garrison.fallback.routed``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, Final

from pykka._envelope import Envelope

from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute, OperationFailed
from garrison._ref import Ref
from garrison.actors._run import is_coroutine_function, run_operation
from garrison.actors._stage import Stage
from garrison.errors import ActorUnavailable, ConfigError
from garrison.observability.events import emit

__all__ = ["NO_VALUE", "FallbackActor", "FallbackFunc"]

FallbackFunc = Callable[[BaseException, Execute], Any]
"""A fallback callable: ``(error, message) -> substitute`` (sync or a coroutine function)."""


class _NoValue:
    """The type of :data:`NO_VALUE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Final = _NoValue()
"""Marks "no static fallback value" (``None`` is a legitimate value)."""


class _CallFallback:
    """Run the fallback callable for an operation, in the stage's own thread."""

    __slots__ = ("error", "message", "reply")

    def __init__(self, error: BaseException, message: Execute, reply: Future[Any]) -> None:
        self.error = error
        self.message = message
        self.reply = reply

    def refused(self, reason: str) -> None:
        """The stage is gone: the caller gets the operation's error."""
        self.reply.try_set_exception(self.error)


class FallbackActor(Stage):
    """Replaces failed outcomes with a cached result, a value or a callable's answer.

    See the module docstring for the order of sources, what is never replaced, and routed
    failures. ``GetStatus`` answers with the counts of fallbacks used by source, re-raised
    errors, failed fallback callables, routed failures and the cache's size.
    """

    stage: ClassVar[str] = "fallback"

    def __init__(
        self,
        value: Any = NO_VALUE,
        downstream: Ref | None = None,
        *,
        fallback: FallbackFunc | None = None,
        cache_last_success: bool = False,
        cache_size: int = 1024,
        clock: Clock | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        super().__init__(downstream, clock=clock, loop=loop)
        if fallback is not None and not callable(fallback):
            raise ConfigError("fallback", f"must be a callable (error, message), got {fallback!r}")
        if not isinstance(cache_last_success, bool):
            raise ConfigError(
                "cache_last_success", f"must be true or false, got {cache_last_success!r}"
            )
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError("cache_size", f"must be an integer >= 1, got {cache_size!r}")
        if value is not NO_VALUE and fallback is not None:
            raise ConfigError("fallback", "give either a fallback value or a callable, not both")
        if value is NO_VALUE and fallback is None and not cache_last_success:
            raise ConfigError(
                "value",
                "a FallbackActor needs a value, a fallback callable or cache_last_success=True",
            )
        self.value = value
        self.fallback = fallback
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] | None = OrderedDict() if cache_last_success else None
        self._used: Counter[str] = Counter()
        self._successes = 0
        self._reraised = 0
        self._passed_through = 0
        self._routed: Counter[str] = Counter()
        self._failed_lock = threading.Lock()
        self._callable_failed = 0

    @property
    def mode(self) -> str:
        """``"cache+value"``, ``"cache+callable"``, ``"cache"``, ``"value"`` or ``"callable"``."""
        if self.value is not NO_VALUE:
            primary = "value"
        else:
            primary = "callable" if self.fallback is not None else ""
        if self._cache is None:
            return primary
        return f"cache+{primary}" if primary else "cache"

    # -- messages -------------------------------------------------------------------------------

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Hand the operation on and see its outcome."""
        self.pass_on_observed(message, reply, context=message, answer_success=self._cache is None)

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        """Remember a success, or answer a failure with a substitute."""
        message: Execute = context
        error = outcome.exception(0)
        if error is None:
            result = outcome.get(0)
            self._successes += 1
            cache = self._cache
            if cache is not None:
                cache[message.name] = result
                cache.move_to_end(message.name)
                if len(cache) > self.cache_size:
                    cache.popitem(last=False)
            reply.try_set_result(result)
            return
        source = self._substitute(error, message, reply)
        if source == "none":
            emit(
                "garrison.fallback.reraised",
                operation=message.name,
                error=error,
            )
        elif source != "passed_through":
            emit(
                "garrison.fallback.used",
                level="warning",
                operation=message.name,
                error=error,
                source=source,
            )

    def handle_other(self, message: Any) -> Any:
        """Routed failures (:class:`~garrison.OperationFailed`); anything else is refused."""
        if isinstance(message, OperationFailed):
            self._routed_failure(message)
            return None
        if isinstance(message, _CallFallback):
            self._call_fallback(message.error, message.message, message.reply)
            return None
        return super().handle_other(message)

    def _routed_failure(self, failed: OperationFailed) -> None:
        operation = failed.operation
        error = failed.error
        if error is None:
            error = ActorUnavailable(failed.source, failed.reason)
        done: Future[Any] = Future()
        source = self._substitute(error, operation, done)
        self._routed[source] += 1

        def log(outcome: Future[Any]) -> None:
            problem = outcome.exception(0)
            if source in ("none", "passed_through"):
                result = "no_fallback"
            else:
                result = "failed" if problem is not None else "substituted"
            fields: dict[str, Any] = {}
            if problem is None:
                fields["value_type"] = type(outcome.get(0)).__name__
            emit(
                "garrison.fallback.routed",
                level="warning",
                operation=operation.name,
                origin=failed.source,
                reason=failed.reason,
                error=error,
                source=source,
                outcome=result,
                **fields,
            )

        done.add_done_callback(log)

    # -- substitution ---------------------------------------------------------------------------

    def _substitute(self, error: BaseException, message: Execute, reply: Future[Any]) -> str:
        """Complete ``reply`` with the fallback for ``error``; return the source used."""
        if not isinstance(error, Exception) or isinstance(error, concurrent.futures.CancelledError):
            self._passed_through += 1
            reply.try_set_exception(error)
            return "passed_through"
        cache = self._cache
        meta = reply.meta
        if cache is not None and message.name in cache:
            cache.move_to_end(message.name)
            self._used["cache"] += 1
            if meta is not None:
                meta["fallback"] = "cache"
            reply.try_set_result(cache[message.name])
            return "cache"
        if self.value is not NO_VALUE:
            self._used["value"] += 1
            if meta is not None:
                meta["fallback"] = "value"
            reply.try_set_result(self.value)
            return "value"
        if self.fallback is not None:
            self._used["callable"] += 1
            if meta is not None:
                meta["fallback"] = "callable"
            fallback = self.fallback
            if self._thread is threading.current_thread() or is_coroutine_function(fallback):
                self._call_fallback(error, message, reply)
            else:  # a lent turn (a caller's or a worker's thread): not user code's place
                self.mailbox.offer_behind(Envelope(_CallFallback(error, message, reply)))
            return "callable"
        self._reraised += 1
        reply.try_set_exception(error)
        return "none"

    def _call_fallback(self, error: BaseException, message: Execute, reply: Future[Any]) -> None:
        """Run ``fallback(error, message)`` (a coroutine on the loop) and answer ``reply``."""
        fallback = self.fallback
        assert fallback is not None
        answer: Future[Any] = Future()

        def deliver(done: Future[Any]) -> None:
            problem = done.exception(0)
            if problem is None:
                reply.try_set_result(done.get(0))
                return
            if problem is not error and problem.__cause__ is None:
                problem.__cause__ = error
            with self._failed_lock:
                self._callable_failed += 1
            emit(
                "garrison.fallback.failed",
                level="error",
                operation=message.name,
                error=error,
                fallback_error=problem,
            )
            reply.try_set_exception(problem)

        answer.add_done_callback(deliver)
        run_operation(
            Execute(fallback, args=(error, message), name=f"fallback:{message.name}"),
            answer,
            self.loop,
        )

    # -- status ---------------------------------------------------------------------------------

    def runs_inline(self) -> bool:
        """True when it has a downstream: it never runs operations itself then (see
        :meth:`Stage.runs_inline`). A synchronous fallback callable (user code, which may
        block) still runs only in this stage's own thread: a substitution met in a lent
        turn is sent there first."""
        return self.downstream is not None

    def status(self) -> dict[str, Any]:
        """Fallbacks used by source, re-raised errors, routed failures and the cache's size."""
        with self._failed_lock:
            failed = self._callable_failed
        return {
            **super().status(),
            "mode": self.mode,
            "successes": self._successes,
            "used": {
                "cache": self._used["cache"],
                "value": self._used["value"],
                "callable": self._used["callable"],
            },
            "callable_failed": failed,
            "reraised": self._reraised,
            "passed_through": self._passed_through,
            "routed": sum(self._routed.values()),
            "routed_by_source": dict(self._routed),
            "cache_size": len(self._cache) if self._cache is not None else 0,
            "cache_capacity": self.cache_size if self._cache is not None else 0,
        }
