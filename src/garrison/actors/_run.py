"""Running an operation and completing its reply: shared by workers and terminal stages."""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
from types import FunctionType
from typing import Any

from garrison._future import _PENDING, Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute

__all__ = [
    "copy_outcome",
    "is_coroutine_function",
    "is_coroutine_operation",
    "run_coroutine",
    "run_operation",
]


def run_operation(
    message: Execute, reply: Future[Any], loop: EventLoopThread | None
) -> concurrent.futures.Future[Any] | None:
    """Run ``message`` and complete ``reply`` with its outcome.

    A plain function runs in the calling thread. A coroutine function runs on ``loop``; the
    call returns at once (with the running coroutine's future, which may be cancelled) and
    the coroutine's outcome completes ``reply`` later. The operation's error is its outcome:
    nothing is raised here.
    """
    try:
        result = message.run()
    except BaseException as error:  # the operation's failure is its outcome
        reply.try_set_exception(error)
        return None
    if inspect.iscoroutine(result):
        return run_coroutine(result, reply, loop)
    reply.try_set_result(result)
    return None


def is_coroutine_operation(message: Execute) -> bool:
    """True if ``message.fn`` is a coroutine function (also through functools.partial)."""
    fn: Any = message.fn
    if type(fn) is FunctionType:
        # The common case, answered without inspect's unwrapping: a plain function is a
        # coroutine function by its code flag, unless it carries a marker attribute
        # (``inspect.markcoroutinefunction``), which only a function with a __dict__ can.
        if fn.__code__.co_flags & inspect.CO_COROUTINE:
            return True
        if not fn.__dict__:
            return False
    return is_coroutine_function(fn)


def is_coroutine_function(fn: Any) -> bool:
    """True if calling ``fn`` makes a coroutine (through functools.partial, or a class
    whose ``__call__`` is a coroutine function)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def run_coroutine(
    coro: Any, reply: Future[Any], loop: EventLoopThread | None
) -> concurrent.futures.Future[Any] | None:
    """Run the coroutine object ``coro`` on ``loop``; its outcome completes ``reply``."""
    if loop is None:
        coro.close()
        reply.try_set_exception(
            TypeError("a coroutine operation needs an event loop: start the actor from a Runtime")
        )
        return None
    try:
        running = loop.submit(_contained(coro))
    except RuntimeError as error:  # the loop has stopped (it closed the wrapper, not coro)
        coro.close()
        reply.try_set_exception(error)
        return None

    def complete(done: concurrent.futures.Future[Any]) -> None:
        if done.cancelled():
            reply.try_set_exception(concurrent.futures.CancelledError())
            return
        error = done.exception()
        if error is not None:
            reply.try_set_exception(error)
            return
        result = done.result()
        if type(result) is _Escaped:
            reply.try_set_exception(result.error)
        else:
            reply.try_set_result(result)

    running.add_done_callback(complete)
    return running


class _Escaped:
    """A KeyboardInterrupt or SystemExit a coroutine operation raised: its outcome."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _contained(coro: Any) -> Any:
    # asyncio lets KeyboardInterrupt and SystemExit out of a task, and they would end the
    # loop's thread (every later coroutine operation would hang): the caller gets them.
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as error:
        return _Escaped(error)


def copy_outcome(source: Future[Any], target: Future[Any]) -> bool:
    """Complete ``target`` with ``source``'s outcome (``source`` must be done)."""
    # Read and completed directly: this runs once per stage per operation.
    state = source._state
    if state == _PENDING:
        raise RuntimeError("copy_outcome() needs a completed source future")
    return target._complete(state, source._value, source._error)
