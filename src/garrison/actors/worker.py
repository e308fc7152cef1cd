"""The worker actor: runs operations and answers their callers directly."""

from __future__ import annotations

from typing import Any

from garrison._actor import Actor
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison.actors._run import run_operation

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
        run_operation(message, self.defer(), self._loop)
        return None
