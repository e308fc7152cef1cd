"""Running an operation and completing its reply: shared by workers and terminal stages."""

from __future__ import annotations

import concurrent.futures
import inspect
from typing import Any

from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute

__all__ = ["copy_outcome", "run_operation"]


def run_operation(message: Execute, reply: Future[Any], loop: EventLoopThread | None) -> None:
    """Run ``message`` and complete ``reply`` with its outcome.

    A plain function runs in the calling thread. A coroutine function runs on ``loop``; the
    call returns at once and the coroutine's outcome completes ``reply`` later. The
    operation's error is its outcome: nothing is raised here.
    """
    try:
        result = message.run()
    except BaseException as error:  # the operation's failure is its outcome
        reply.try_set_exception(error)
        return
    if inspect.iscoroutine(result):
        _run_coroutine(result, reply, loop)
    else:
        reply.try_set_result(result)


def _run_coroutine(coro: Any, reply: Future[Any], loop: EventLoopThread | None) -> None:
    if loop is None:
        coro.close()
        reply.try_set_exception(
            TypeError("a coroutine operation needs an event loop: start the actor from a Runtime")
        )
        return
    try:
        running = loop.submit(coro)
    except RuntimeError as error:
        reply.try_set_exception(error)
        return

    def complete(done: concurrent.futures.Future[Any]) -> None:
        if done.cancelled():
            reply.try_set_exception(concurrent.futures.CancelledError())
            return
        error = done.exception()
        if error is None:
            reply.try_set_result(done.result())
        else:
            reply.try_set_exception(error)

    running.add_done_callback(complete)


def copy_outcome(source: Future[Any], target: Future[Any]) -> bool:
    """Complete ``target`` with ``source``'s outcome (``source`` must be done)."""
    error = source.exception(0)
    if error is None:
        return target.try_set_result(source.get(0))
    return target.try_set_exception(error)
