"""The worker actor: runs operations and answers their callers directly."""

from __future__ import annotations

import concurrent.futures
import inspect
from typing import Any

from garrison._actor import Actor
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute

__all__ = ["WorkerActor"]


class WorkerActor(Actor):
    """Runs each :class:`~garrison.Execute` it receives and completes its reply.

    A plain function runs on the worker's own thread, one at a time. A coroutine function
    runs on the runtime's event loop (``loop``): the worker hands it over and is free for the
    next message at once. The operation's error is its outcome, never a crash of the worker.
    """

    def __init__(self, *, loop: EventLoopThread | None = None) -> None:
        super().__init__()
        self._loop = loop

    def on_receive(self, message: Any) -> Any:
        """Run an Execute; refuse anything else with a TypeError reply."""
        if not isinstance(message, Execute):
            return super().on_receive(message)
        reply = self.defer()
        try:
            result = message.run()
        except BaseException as error:  # the operation's failure is its outcome
            reply.try_set_exception(error)
            return None
        if inspect.iscoroutine(result):
            self._run_coroutine(result, reply)
        else:
            reply.try_set_result(result)
        return None

    def _run_coroutine(self, coro: Any, reply: Future[Any]) -> None:
        if self._loop is None:
            coro.close()
            reply.try_set_exception(
                TypeError(
                    "a coroutine operation needs an event loop: start the worker from a Runtime"
                )
            )
            return
        try:
            running = self._loop.submit(coro)
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
