"""The worker actor: runs operations and answers their callers directly."""

from __future__ import annotations

import threading
from typing import Any

from pykka._envelope import Envelope

from garrison._actor import Actor
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison.actors._run import run_operation

__all__ = ["Job", "WorkerActor"]


class Job:
    """Work told to a :class:`WorkerActor` by its owner: the worker calls ``run(loop)``.

    A bulkhead sends its workers jobs rather than Executes with reply futures: the job runs
    the operation, books it with the bulkhead and answers the caller, with no future of its
    own in between. ``run`` must give the operation its outcome and never raise;
    ``refused`` must do so when the worker is gone before running it.
    """

    __slots__ = ()

    def run(self, loop: EventLoopThread | None) -> None:
        """Run the work in the worker's thread."""
        raise NotImplementedError

    def refused(self, reason: str) -> None:
        """The worker stopped before running this."""
        raise NotImplementedError

    def crashed(self, error: BaseException) -> None:
        """The worker crashed running this (a bug of the worker's, not the operation's)."""
        raise NotImplementedError


class WorkerActor(Actor):
    """Runs each :class:`~garrison.Execute` it receives and completes its reply.

    A plain function runs on the worker's own thread, one at a time. A coroutine function
    runs on the runtime's event loop (``loop``): the worker hands it over and is free for the
    next message at once. The operation's error is its outcome, never a crash of the worker.
    """

    def __init__(self, *, loop: EventLoopThread | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._ident: int | None = None  # the worker's thread
        self._job: Job | None = None  # the job running now
        self._next: Job | None = None  # the job to run after it (see chain)

    def chain(self, job: Job) -> bool:
        """Run ``job`` right after the job running now, without the mailbox.

        Only from this worker's own thread while it runs a job (its owner booking that
        job's outcome hands it the next one), and only when nothing waits in the mailbox
        (a stop, say, comes first). False, with nothing done, otherwise: tell it the job.
        """
        if (
            self._job is None
            or self._next is not None
            or self._ident != threading.get_ident()
            or not self.actor_inbox.empty()
        ):
            return False
        self._next = job
        return True

    def _actor_loop_setup(self) -> None:
        self._ident = threading.get_ident()
        super()._actor_loop_setup()

    def _receive(self, envelope: Envelope[Any]) -> None:
        message = envelope.message
        if isinstance(message, Job) and envelope.reply_to is None:
            job: Job | None = message
            try:  # the common case, without the receive loop's bookkeeping
                while job is not None:
                    self._job = job
                    self.run_job(job)
                    job, self._next = self._next, None
            except BaseException as error:  # a bug: the worker crashes, the job gets the error
                crashed, pending = self._job, self._next
                self._next = None
                self._crash(None, error)
                if crashed is not None:
                    crashed.crashed(error)
                if pending is not None:
                    pending.refused("the worker crashed before running it")
            finally:
                self._job = None
            return
        super()._receive(envelope)

    def run_job(self, job: Job) -> None:
        """Run ``job`` (told by the worker's owner) in this worker's thread."""
        job.run(self._loop)

    def on_receive(self, message: Any) -> Any:
        """Run an Execute; refuse anything else with a TypeError reply."""
        if isinstance(message, Job):  # asked, not told: its outcome goes elsewhere anyway
            message.run(self._loop)
            return None
        if not isinstance(message, Execute):
            return super().on_receive(message)
        run_operation(message, self.defer(), self._loop)
        return None
