"""garrison's future: one outcome, settable from any thread, awaitable without blocking.

A :class:`Future` is completed exactly once. The first completion wins and every later one is
ignored (``try_set_result`` / ``try_set_exception`` say which happened), so two parties racing
to answer an operation (a worker and a timeout supervisor, an actor's teardown and a Ref)
can never produce two outcomes.

It subclasses :class:`pykka.Future` so it can stand in a pykka envelope as ``reply_to``:
plain pykka actors complete it through ``set`` / ``set_exception`` like their own futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from garrison.errors import AskTimeout
from garrison.observability.events import emit

if TYPE_CHECKING:
    from pykka._future import GetHookFunc
    from pykka._types import OptExcInfo

__all__ = ["Future"]

T = TypeVar("T")

_PENDING = 0
_OK = 1
_FAILED = 2


class Future(pykka.Future[T], Generic[T]):
    """The outcome of one operation or ask, completed exactly once.

    ``get(timeout)`` blocks for it (raising the error if the outcome is one),
    ``done()`` polls, ``add_done_callback(fn)`` is called once with the future, and
    ``await fut`` waits inside asyncio without blocking the event loop.
    """

    __slots__ = ("_callbacks", "_error", "_lock", "_state", "_tb", "_value", "_waiter", "meta")

    # pykka.Future's own state, never used here (get hooks are not supported): class-level,
    # so that __init__ (made once per stage per operation) need not call pykka's.
    _get_hook: Any = None
    _get_hook_result: Any = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._tb: Any = None
        self.meta: dict[str, Any] | None = None
        """Facts stages record about the operation (attempts, fallback, circuit state) when
        the caller asked for them; shared by every future of one operation, else None."""
        # Waiters block on a lock that is created held and released on completion (cheaper
        # than an Event); each waiter that gets it releases it again for the next.
        self._waiter: threading.Lock | None = None
        self._callbacks: list[Callable[[Future[T]], object]] | None = None

    def __repr__(self) -> str:
        state = {_PENDING: "pending", _OK: "done", _FAILED: "failed"}[self._state]
        return f"<garrison.Future {state}>"

    # -- completing -------------------------------------------------------------------------

    def try_set_result(self, value: T) -> bool:
        """Complete with ``value``; return False (and change nothing) if already complete."""
        return self._complete(_OK, value, None)

    def try_set_exception(self, error: BaseException) -> bool:
        """Complete with ``error``; return False (and change nothing) if already complete."""
        return self._complete(_FAILED, None, error)

    def set(self, value: T | None = None) -> None:
        """Complete with ``value`` (pykka's API); a second completion is ignored."""
        self._complete(_OK, value, None)

    def set_exception(self, exc_info: OptExcInfo | BaseException | None = None) -> None:
        """Complete with an error (pykka's API: an ``exc_info`` triple, or the current one).

        An exception instance is accepted too. A second completion is ignored.
        """
        if isinstance(exc_info, BaseException):
            error: BaseException | None = exc_info
        else:
            info = exc_info if exc_info is not None else sys.exc_info()
            error = info[1]
            if error is None and info[0] is not None:
                error = info[0]()
        if error is None:
            error = RuntimeError("set_exception() called with no exception")
        self._complete(_FAILED, None, error)

    def set_get_hook(self, func: GetHookFunc[T]) -> None:
        """Not supported: garrison futures hold values, not deferred computations."""
        raise NotImplementedError("garrison futures do not support get hooks")

    def _complete(self, state: int, value: Any, error: BaseException | None) -> bool:
        with self._lock:
            if self._state != _PENDING:
                return False
            self._value = value
            self._error = error
            self._tb = error.__traceback__ if error is not None else None
            self._state = state
            waiter = self._waiter
            callbacks = self._callbacks
            self._callbacks = None
        # Callbacks first (a stage's bookkeeping, the monitor's metric), then the waiting
        # caller: whoever wakes up on an outcome sees what its callbacks did. A callback's
        # BaseException still wakes the caller (and the other callbacks run).
        try:
            if callbacks:
                for callback in callbacks:
                    self._run_callback(callback)
        finally:
            if waiter is not None:
                waiter.release()
        return True

    def _run_callback(self, callback: Callable[[Future[T]], object]) -> None:
        try:
            callback(self)
        except Exception as exc:  # a callback's bug must not break the completing actor
            emit(
                "garrison.future.callback_failed", level="error", callback=repr(callback), error=exc
            )

    # -- reading ----------------------------------------------------------------------------

    def done(self) -> bool:
        """True once the future has an outcome."""
        return self._state != _PENDING

    def get(self, timeout: float | None = None) -> T:
        """Wait for the outcome and return it, or raise the error it holds.

        Raises :class:`garrison.errors.AskTimeout` when ``timeout`` seconds pass first
        (the operation itself goes on; only this wait ends).
        """
        if self._state == _PENDING and not self._wait(timeout):
            raise AskTimeout(timeout if timeout is not None else 0.0)
        if self._state == _FAILED:
            assert self._error is not None
            raise self._error.with_traceback(self._tb)
        return self._value  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the outcome and return its error, or None if it is a value."""
        if self._state == _PENDING and not self._wait(timeout):
            raise AskTimeout(timeout if timeout is not None else 0.0)
        return self._error

    def _wait(self, timeout: float | None) -> bool:
        with self._lock:
            if self._state != _PENDING:
                return True
            if self._waiter is None:
                self._waiter = threading.Lock()
                self._waiter.acquire()
            waiter = self._waiter
        if waiter.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            waiter.release()
            return True
        return self._state != _PENDING

    def add_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        """Call ``callback(future)`` once the future completes (at once if it has).

        The callback runs in the thread that completes the future, before a caller waiting
        in ``get`` is woken (it sees what the callbacks did); keep it short and
        never block in it. Its exceptions are logged, not raised.
        """
        with self._lock:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        self._run_callback(callback)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state == _PENDING:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: Future[T]) -> None:
                if waiter.done() or loop.is_closed():
                    return
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, waiter)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        return self.get(0)

    __iter__ = __await__


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
