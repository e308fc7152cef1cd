"""The bulkhead actor: a pool of worker actors that bounds how much runs at once.

One :class:`BulkheadActor` per kind of operation (``database``, ``api_calls``,
``file_ops``...) owns ``max_workers`` worker actors. At most ``max_concurrent`` operations run
at once; up to ``max_queue`` more wait (in priority order) at most ``max_wait`` seconds each;
anything beyond is refused with :class:`~garrison.errors.BulkheadFull` at once. Each bulkhead
has its own workers and queue, so one saturated bulkhead never slows another.

- A plain function runs on a free worker (one operation per worker at a time).
- A coroutine function runs on the runtime's event loop and counts against
  ``max_concurrent`` the same way, without holding a worker.
- With a ``downstream``, admitted operations are forwarded there instead (a concurrency
  limit in front of another actor).

**Abandoning stuck work.** The timeout stage sends :class:`Abandon` for an operation whose
caller it has already answered with ``OperationTimeout``. A coroutine is cancelled for real.
A synchronous function cannot be killed: its worker is retired (it ends once the call
returns), a replacement worker is started so the pool keeps its capacity, and
``garrison.bulkhead.worker_abandoned`` is logged. Up to ``max_abandoned`` retired workers may
be stuck at once; past that, new work is refused with ``BulkheadFull`` (until they come back)
rather than threads piling up.

**Where the work happens.** The bulkhead's state sits behind a small lock, so completions
are booked in the thread that completes the operation (the worker's): the slot is free and
the next waiting operation started before the caller gets its outcome, with no message to
the bulkhead in between. A worker is sent a job, not an Execute with a future: it runs the
operation, books it and answers the caller. :meth:`BulkheadActor.try_admit` lets a caller
start, queue or refuse an operation from its own thread (pipelines whose outermost stage is
the bulkhead do), so an operation costs a caller -> worker -> caller round trip, as with a
thread pool. Everything else (timers, abandonment, worker exits) is handled by the actor,
under the same lock. A bug in the completion bookkeeping crashes the
actor (in its own thread, so its supervisor sees it) after the caller got the outcome.

A worker that crashes (a bug in the worker, not an operation's error) is replaced; its
operation's caller gets the error. When the bulkhead stops, waiting operations fail with
:class:`~garrison.errors.ActorUnavailable` and running ones finish (or are abandoned after
``shutdown_timeout``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import CoroutineType
from typing import Any

import pykka
from pykka._envelope import Envelope

from garrison._actor import SafeLoop
from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison._ref import Ref, actor_of
from garrison._scheduler import Scheduler, TimerHandle
from garrison._spawn import start_actor, stop_and_join
from garrison._validate import require_int
from garrison.actors._run import is_coroutine_operation, run_coroutine, run_operation
from garrison.actors._stage import Stage
from garrison.actors.worker import Job, WorkerActor
from garrison.errors import ActorUnavailable, BulkheadFull, ConfigError
from garrison.observability.events import emit

__all__ = ["Abandon", "BulkheadActor", "BulkheadConfig"]

_Outcome = tuple[Future[Any], Any, BaseException | None]
"""An operation's reply, and its value or error."""


def _waiting(queue: list[tuple[int, int, _Queued]]) -> bool:
    """True if ``queue`` holds an operation still waiting (dropping those taken out at its
    head: expired or abandoned entries stay in a heap until they reach it)."""
    while queue and queue[0][2].done:
        heapq.heappop(queue)
    return bool(queue)


def _answer(reply: Future[Any], value: Any, error: BaseException | None) -> None:
    if error is None:
        reply.try_set_result(value)
    else:
        reply.try_set_exception(error)


@dataclass(frozen=True, slots=True)
class BulkheadConfig:
    """Settings of a bulkhead (validated; :class:`ConfigError` names the bad key).

    ``max_workers`` worker actors; at most ``max_concurrent`` operations at once (default:
    ``max_workers``); ``max_queue`` waiting at most ``max_wait`` seconds each (``None``: until
    a slot frees); ``max_abandoned`` workers stuck in timed-out calls at most (default:
    ``max_workers``); ``shutdown_timeout`` per worker when the bulkhead stops.
    """

    max_workers: int = 10
    max_concurrent: int | None = None
    max_queue: int = 0
    max_wait: float | None = None
    max_abandoned: int | None = None
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        workers = require_int("max_workers", self.max_workers, minimum=1)
        if self.max_concurrent is not None:
            require_int("max_concurrent", self.max_concurrent, minimum=1)
        require_int("max_queue", self.max_queue, minimum=0)
        if self.max_wait is not None:
            wait = self.max_wait
            if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait > 0:
                raise ConfigError("max_wait", f"must be a number > 0, got {wait!r}")
            put(self, "max_wait", float(wait))
        if self.max_abandoned is not None:
            require_int("max_abandoned", self.max_abandoned, minimum=0)
        timeout = self.shutdown_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise ConfigError("shutdown_timeout", f"must be a number > 0, got {timeout!r}")
        put(self, "max_workers", workers)

    @property
    def concurrency(self) -> int:
        """``max_concurrent``, or ``max_workers`` when it is not set."""
        return self.max_concurrent if self.max_concurrent is not None else self.max_workers

    @property
    def abandon_cap(self) -> int:
        """``max_abandoned``, or ``max_workers`` when it is not set."""
        return self.max_abandoned if self.max_abandoned is not None else self.max_workers

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BulkheadConfig:
        """Build a config from a mapping (a config-file section), rejecting unknown keys."""
        if not isinstance(data, Mapping):
            raise ConfigError("bulkhead", f"must be a mapping of settings, got {data!r}")
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise ConfigError(str(key), f"unknown setting; known: {', '.join(sorted(known))}")
        return cls(**dict(data))


@dataclass(frozen=True, slots=True)
class Abandon:
    """The caller of the operation answered by ``reply`` gave up on it (it timed out).

    A queued operation is dropped; a running coroutine is cancelled; a worker stuck in a
    synchronous call is retired and replaced.
    """

    reply: Future[Any]


@dataclass(frozen=True, slots=True)
class _BookkeepingFailed:
    """Completion bookkeeping raised in another thread: crash the actor in its own."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class _WaitExpired:
    reply: Future[Any]


@dataclass(frozen=True, slots=True)
class _WorkerEnded:
    worker: _Worker
    error: BaseException | None


class _Worker:
    __slots__ = ("actor", "dead", "inbox", "ref", "retired")

    def __init__(self, ref: Ref, actor: WorkerActor) -> None:
        self.ref = ref
        self.actor = actor
        self.inbox = actor.mailbox  # a worker is never restarted: its jobs go straight here
        self.retired = False
        self.dead = False


class _Running:
    __slots__ = ("abandoned", "job", "message", "running", "worker")

    def __init__(self, message: Execute) -> None:
        self.message = message
        self.job: _Job | None = None  # on a worker
        self.worker: _Worker | None = None
        self.running: concurrent.futures.Future[Any] | None = None  # a coroutine on the loop
        self.abandoned = False


class _Job(Job):
    """An operation for one of a bulkhead's workers: run, book, answer (in the worker)."""

    __slots__ = ("bulkhead", "finished", "message", "reply", "worker")

    def __init__(
        self, bulkhead: BulkheadActor, message: Execute, reply: Future[Any], worker: _Worker
    ) -> None:
        self.bulkhead = bulkhead
        self.message = message
        self.reply = reply
        self.worker = worker
        self.finished = False

    def run(self, loop: EventLoopThread | None) -> None:
        """Run the operation; the bulkhead books it before its caller gets the outcome."""
        try:
            result = self.message.run()
        except BaseException as error:  # the operation's failure is its outcome
            self.finished = True
            self.bulkhead._finished(self.reply, None, error)
            return
        if isinstance(result, CoroutineType):  # a plain function returned one: on the loop
            self.finished = True
            self.bulkhead._to_loop(self.reply, result)
            return
        self.finished = True
        self.bulkhead._finished(self.reply, result, None)

    def refused(self, reason: str) -> None:
        """The worker ended before running it: the caller gets ActorUnavailable."""
        self.crashed(ActorUnavailable(self.worker.ref.name, reason))

    def crashed(self, error: BaseException) -> None:
        """The worker failed to run it: the caller gets ``error`` (once, whatever happens).

        The worker is gone: it must not be given the next waiting operation.
        """
        self.worker.dead = True
        if not self.finished:
            self.finished = True
            self.bulkhead._finished(self.reply, None, error)


class _Queued:
    __slots__ = ("done", "message", "needs_worker", "reply", "timer")

    def __init__(self, message: Execute, reply: Future[Any], needs_worker: bool) -> None:
        self.message = message
        self.reply = reply
        self.needs_worker = needs_worker
        self.timer: TimerHandle | None = None
        self.done = False


class BulkheadActor(Stage):
    """A pool of workers with bounded concurrency and a bounded waiting room."""

    stage = "bulkhead"

    def __init__(
        self,
        config: BulkheadConfig | None = None,
        downstream: Ref | None = None,
        *,
        name: str | None = None,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        config = config if config is not None else BulkheadConfig()
        if not isinstance(config, BulkheadConfig):
            raise TypeError(f"config must be a BulkheadConfig, got {config!r}")
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.config = config
        self._concurrency = config.concurrency  # read on every operation: kept at hand
        self._abandon_cap = config.abandon_cap
        self._max_queue = config.max_queue
        self.name = name if name is not None else ""
        self._workers: list[_Worker] = []
        self._idle: deque[_Worker] = deque()
        self._running: dict[Future[Any], _Running] = {}
        # Waiting operations, (priority, arrival, entry) heaps ordered by tuple comparison
        # (in C): those that need a worker, and those that need only a slot (coroutines, or
        # everything with a downstream), so that one kind never holds up the other.
        self._for_worker: list[tuple[int, int, _Queued]] = []
        self._for_slot: list[tuple[int, int, _Queued]] = []
        self._started = False  # on_start has made the pool: callers may admit from now
        self._queued: dict[Future[Any], _Queued] = {}
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._in_flight = 0
        self._stuck = 0
        self.completed = 0
        self.rejected = 0
        self.abandoned = 0
        self.wait_timeouts = 0
        self._lock = threading.RLock()
        self._closed = False
        self._launches: deque[tuple[_Worker, _Job]] = deque()
        # Replies of operations try_admit turned away (their callers send them to the actor)
        # and the actor has not handled yet: none may be overtaken by a later try_admit.
        self._detoured: set[Future[Any]] = set()
        self._booking = threading.local()  # completions met while this thread books one
        # Workers told to stop without being waited for (a crash, here or in a crashed
        # predecessor): waited for when this bulkhead stops, as its own workers are.
        self._ending: list[_Worker] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the worker pool."""
        if not self.name:
            self.name = self.mailbox.name.rsplit("/", 1)[-1]
        with self._lock:
            if self.downstream is None:
                for _ in range(self.config.max_workers):
                    self._add_worker()
            self._started = True
            self._start_waiting()  # queued by a predecessor's messages, say
        self._launch()

    def _add_worker(self) -> None:
        path = f"{self.mailbox.name}/worker-{next(self._names)}"
        actor_ref = start_actor(
            WorkerActor, (), {"loop": self.loop}, path, self.mailbox.dead_letters
        )
        actor = actor_of(actor_ref)
        assert isinstance(actor, WorkerActor)
        worker = _Worker(Ref(actor_ref, path), actor)
        own_mailbox = self.mailbox

        def ended(_actor: SafeLoop, error: BaseException | None) -> None:
            own_mailbox.try_put(Envelope(_WorkerEnded(worker, error)))

        actor._exit_listener = ended
        self._workers.append(worker)
        self._idle.append(worker)

    def on_stop(self) -> None:
        """Fail waiting operations, then stop the workers (running calls finish first)."""
        self._shutdown("the bulkhead stopped", join=True)

    def on_failure(self, *_exc: Any) -> None:
        """Fail waiting operations and tell the workers to stop, without waiting for them.

        A worker in a call stops when the call returns (its caller still gets the outcome);
        the restart does not wait for it.
        """
        self._shutdown("the bulkhead crashed", join=False)

    def _shutdown(self, reason: str, *, join: bool) -> None:
        # Running operations still answer their callers (their completion does that).
        with self._lock:
            self._closed = True
            waiting = [entry for _, _, entry in self._for_worker + self._for_slot if not entry.done]
            for entry in waiting:
                entry.done = True
                if entry.timer is not None:
                    entry.timer.cancel()
            self._for_worker.clear()
            self._for_slot.clear()
            self._queued.clear()
            workers, self._workers = self._workers, []
            self._idle.clear()
            # Workers not in a call (idle, or unwinding from one that has finished) stop at
            # once: waiting for them costs nothing even when the bulkhead crashed.
            busy = {
                id(record.worker)
                for record in self._running.values()
                if record.worker is not None and record.job is not None and not record.job.finished
            }
        for entry in waiting:
            entry.reply.try_set_exception(ActorUnavailable(self.mailbox.name, reason))
        for worker in workers:
            worker.actor._exit_listener = None
            if worker.retired:
                continue  # stuck in a call nobody waits for: it ends when the call returns
            if not join and id(worker) in busy:
                worker.ref.tell(pykka.messages._ActorStop())
                self._ending.append(worker)
                continue
            if not stop_and_join(worker.ref, self.config.shutdown_timeout):
                emit(
                    "garrison.bulkhead.worker_abandoned",
                    level="warning",
                    bulkhead=self.name,
                    worker=worker.ref.name,
                    reason="it did not stop within shutdown_timeout",
                )
        if join:
            self._join_ending()
        self.release_scheduler()

    def _join_ending(self) -> None:
        ending, self._ending = self._ending, []
        for worker in ending:
            thread = worker.actor._thread
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(self.config.shutdown_timeout)
            if thread.is_alive():
                emit(
                    "garrison.bulkhead.worker_abandoned",
                    level="warning",
                    bulkhead=self.name,
                    worker=worker.ref.name,
                    reason="a crashed bulkhead's worker did not stop within shutdown_timeout",
                )

    def snapshot(self) -> dict[str, Any]:
        """The workers still ending after a crash (the next incarnation waits for them)."""
        alive = [
            w for w in self._ending if w.actor._thread is not None and w.actor._thread.is_alive()
        ]
        return {"ending": alive}

    def restore(self, state: dict[str, Any]) -> None:
        """Take over a crashed predecessor's ending workers, to wait for them when stopping."""
        self._ending.extend(state.get("ending", ()))

    # -- admission ----------------------------------------------------------------------------

    def try_admit(self, message: Execute, reply: Future[Any]) -> bool:
        """Admit ``message`` from the calling thread: start it, queue it or refuse it.

        Returns False, having done nothing, when the caller must send it to the actor
        instead: the bulkhead has closed, or messages sent to it earlier (operations turned
        away before, anything in its mailbox) are still on their way (none may be overtaken:
        per-sender order). Safe from any thread; for a fused bulkhead, whose mailbox counts
        what it handled.
        """
        # Once all this sender sent before is handled, it stays handled: one look will do.
        if self._detoured or not self.actor_inbox.all_handled():  # type: ignore[attr-defined]
            if not self._closed:  # closed: the actor refuses it, nothing to keep order with
                self._detoured.add(reply)
            return False
        with self._lock:
            if self._closed:
                return False
            if self._detoured or not self._started:
                self._detoured.add(reply)
                return False
            if (
                self._idle
                and self._in_flight < self._concurrency
                and self.downstream is None
                and self._stuck <= self._abandon_cap
                and not _waiting(self._for_worker)
                and not is_coroutine_operation(message)
            ):
                self._start_job(message, reply)  # the common case, in short
                why = ""
            else:
                why = self._admit(message, reply)
        if why:
            self._refuse(reply, why)
        elif self._launches:
            self._launch()
        return True

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Run ``message`` now, queue it, or refuse it with BulkheadFull."""
        with self._lock:
            self._detoured.discard(reply)
            why = self._admit(message, reply)
        if why:
            self._refuse(reply, why)
        else:
            self._launch()

    def _admit(self, message: Execute, reply: Future[Any]) -> str:
        """Start or queue ``message`` (under the lock); return why it is refused, or ""."""
        if self._stuck > self._abandon_cap and self.downstream is None:
            return "too many workers are stuck in abandoned calls"
        needs_worker = self.downstream is None and not is_coroutine_operation(message)
        waiting = self._for_worker if needs_worker else self._for_slot
        if not _waiting(waiting) and self._can_start(needs_worker):  # never ahead of its kind
            self._start(message, reply, needs_worker)
            return ""
        if len(self._queued) >= self._max_queue:
            return "no slot is free and the queue is full"
        entry = _Queued(message, reply, needs_worker)
        heapq.heappush(waiting, (int(message.priority), next(self._seq), entry))
        self._queued[reply] = entry
        if self.config.max_wait is not None:
            entry.timer = self.schedule(self.config.max_wait, _WaitExpired(reply))
        return ""

    def _can_start(self, needs_worker: bool) -> bool:
        if self._in_flight >= self._concurrency:
            return False
        return bool(self._idle) or not needs_worker

    def _refuse(self, reply: Future[Any], why: str) -> None:
        with self._lock:  # callers refuse from their own threads too
            self.rejected += 1
        reply.try_set_exception(
            BulkheadFull(self.name, self.config.concurrency, self.config.max_queue)
        )
        emit("garrison.bulkhead.rejected", level="debug", bulkhead=self.name, reason=why)

    def _start(self, message: Execute, reply: Future[Any], needs_worker: bool) -> None:
        if needs_worker:
            self._start_job(message, reply)
            return
        self._in_flight += 1
        record = _Running(message)
        self._running[reply] = record
        inner: Future[Any] = Future()
        inner.meta = reply.meta
        inner.add_done_callback(functools.partial(self._completed, reply))
        if self.downstream is not None:
            self.downstream.forward(message, inner)
        else:
            record.running = run_operation(message, inner, self.loop)

    def _start_job(self, message: Execute, reply: Future[Any]) -> None:
        """Give ``message`` to an idle worker (under the lock; an idle worker must exist)."""
        self._in_flight += 1
        record = _Running(message)
        self._running[reply] = record
        worker = self._idle.pop()  # the last to finish: its thread is likely still awake
        record.worker = worker
        record.job = job = _Job(self, message, reply, worker)
        # Sent once the lock is released (by whichever thread gets there first).
        self._launches.append((worker, job))

    def _launch(self) -> None:
        """Hand the operations started under the lock to their workers."""
        launches = self._launches
        while launches:
            try:
                worker, job = launches.popleft()
            except IndexError:  # another thread took the last one
                return
            # The worker booking its own last job runs the next one straight after it.
            if not worker.actor.chain(job):
                worker.inbox.offer(Envelope(job))

    def _start_waiting(self) -> None:
        """Start waiting operations while they can start, best (priority, arrival) first."""
        for_worker, for_slot = self._for_worker, self._for_slot
        queues = (for_worker, for_slot)
        while self._in_flight < self._concurrency:
            if not for_slot:  # the common case: only operations that wait for a worker
                if not self._idle or not _waiting(for_worker):
                    return
                head = heapq.heappop(for_worker)[2]
                self._take_from_queue(head)
                self._start_job(head.message, head.reply)
                continue
            best: list[tuple[int, int, _Queued]] | None = None
            for queue in queues:
                startable = _waiting(queue) and self._can_start(queue is self._for_worker)
                if startable and (best is None or queue[0] < best[0]):
                    best = queue
            if best is None:
                return
            head = heapq.heappop(best)[2]
            self._take_from_queue(head)
            self._start(head.message, head.reply, head.needs_worker)

    def _take_from_queue(self, entry: _Queued) -> None:
        entry.done = True
        self._queued.pop(entry.reply, None)
        if entry.timer is not None:
            entry.timer.cancel()

    def _take_out_of_line(self, entry: _Queued) -> None:
        """Take ``entry`` from anywhere in its heap (it expired, or was abandoned)."""
        self._take_from_queue(entry)
        # Such entries stay in their heap until they reach its head: drop them once they
        # outnumber the waiting ones.
        if len(self._for_worker) + len(self._for_slot) > 2 * len(self._queued) + 32:
            for queue in (self._for_worker, self._for_slot):
                queue[:] = [item for item in queue if not item[2].done]
                heapq.heapify(queue)

    # -- completion, timeouts, abandonment ----------------------------------------------------

    def _to_loop(self, reply: Future[Any], coro: Any) -> None:
        """A job's plain function returned a coroutine: its worker is free again, and the
        coroutine runs on the loop like a coroutine operation (cancelled if abandoned)."""
        with self._lock:
            record = self._running.get(reply)
            if record is not None and not record.abandoned:
                # Closed (stopping): a running operation still finishes, on the loop.
                worker = record.worker
                record.worker = record.job = None
                if worker is not None and not (worker.retired or worker.dead or self._closed):
                    self._idle.append(worker)
                    if self._queued:
                        self._start_waiting()
                inner: Future[Any] = Future()
                inner.meta = reply.meta
                inner.add_done_callback(functools.partial(self._completed, reply))
                record.running = run_coroutine(coro, inner, self.loop)
                coro = None
        if self._launches:
            self._launch()
        if coro is not None:  # abandoned: its caller has been answered already
            coro.close()
            self._finished(reply, None, concurrent.futures.CancelledError())

    def _completed(self, reply: Future[Any], inner: Future[Any]) -> None:
        """An operation run downstream or on the loop finished: book it, then answer."""
        self._finished(reply, inner._value, inner._error)

    def _finished(self, reply: Future[Any], value: Any, error: BaseException | None) -> None:
        """An operation finished (in the thread that finished it): book it, then answer.

        An operation that finishes as it starts (a coroutine function that cannot be called,
        say) does so while this thread books another: it is booked after that one, not inside
        it, so a queue of such operations never nests bookings (nor overflows the stack).
        """
        booking = self._booking
        later: deque[_Outcome] | None = getattr(booking, "later", None)
        if later is not None:
            later.append((reply, value, error))
            return
        booking.later = later = deque()
        try:
            self._book(reply, value, error)
            while later:
                self._book(*later.popleft())
        finally:
            booking.later = None
            for outcome in later:  # a bookkeeping error escaped: still answer
                _answer(*outcome)

    def _book(self, reply: Future[Any], value: Any, error: BaseException | None) -> None:
        """Free the operation's slot (starting the next waiting one), then answer it."""
        try:
            self._complete(reply)
            if self._launches:
                self._launch()
        except BaseException as failure:
            # The caller still gets its outcome; the actor crashes in its own thread.
            _answer(reply, value, error)
            if not self.mailbox.try_put(Envelope(_BookkeepingFailed(failure))):
                raise
            return
        if error is None:
            reply.try_set_result(value)
        else:
            reply.try_set_exception(error)

    def _complete(self, reply: Future[Any]) -> None:
        with self._lock:
            record = self._running.pop(reply, None)
            if record is None or self._closed:
                return
            if not record.abandoned:
                self._in_flight -= 1
                worker = record.worker
                if worker is not None and not (worker.retired or worker.dead):
                    self._idle.append(worker)
            self.completed += 1
            if self._queued:
                self._start_waiting()

    def _wait_expired(self, reply: Future[Any]) -> None:
        with self._lock:
            entry = self._queued.get(reply)
            if entry is None or entry.done:
                return
            self._take_out_of_line(entry)
            self.wait_timeouts += 1
        self._refuse(reply, f"no slot freed within max_wait ({self.config.max_wait:g}s)")

    def _abandon(self, reply: Future[Any]) -> None:
        with self._lock:
            self._abandon_locked(reply)
        self._launch()

    def _abandon_locked(self, reply: Future[Any]) -> None:
        entry = self._queued.get(reply)
        if entry is not None:
            self._take_out_of_line(entry)
            return
        record = self._running.get(reply)
        if record is None or record.abandoned:
            return
        if record.running is not None:
            record.running.cancel()  # a coroutine: cancelled for real
            return
        worker = record.worker
        if worker is None:
            return  # forwarded downstream: nothing of ours to free
        record.abandoned = True
        self._in_flight -= 1
        worker.retired = True
        self._stuck += 1
        self.abandoned += 1
        worker.ref.tell(pykka.messages._ActorStop())  # handled after the stuck call returns
        emit(
            "garrison.bulkhead.worker_abandoned",
            level="warning",
            bulkhead=self.name,
            worker=worker.ref.name,
            operation=record.message.name,
            stuck=self._stuck,
            max_abandoned=self.config.abandon_cap,
        )
        if self._stuck <= self.config.abandon_cap:
            self._add_worker()  # past the cap the pool shrinks instead: threads never pile up
        self._start_waiting()

    def _worker_ended(self, worker: _Worker, error: BaseException | None) -> None:
        with self._lock:
            self._worker_ended_locked(worker, error)
        self._launch()

    def _worker_ended_locked(self, worker: _Worker, error: BaseException | None) -> None:
        worker.dead = True  # a late completion must not put it back among the idle
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        if worker.retired:
            self._stuck -= 1
            live = sum(1 for w in self._workers if not w.retired)
            if live < self.config.max_workers and not self._closed:
                self._add_worker()  # one not replaced while past the cap comes back now
            self._start_waiting()
            return
        if worker in self._idle:
            self._idle.remove(worker)
        emit(
            "garrison.bulkhead.worker_replaced",
            level="warning",
            bulkhead=self.name,
            worker=worker.ref.name,
            error=error,
        )
        self._add_worker()
        self._start_waiting()

    # -- messages and status ------------------------------------------------------------------

    def handle_other(self, message: Any) -> Any:
        """Completions, wait timers, abandonment and worker exits."""
        if isinstance(message, _BookkeepingFailed):
            raise message.error
        if isinstance(message, _WaitExpired):
            self._wait_expired(message.reply)
        elif isinstance(message, Abandon):
            self._abandon(message.reply)
        elif isinstance(message, _WorkerEnded):
            self._worker_ended(message.worker, message.error)
        else:
            return super().handle_other(message)
        return None

    def runs_inline(self) -> bool:
        """True: its handlers never block; workers run the operations (see
        :meth:`Stage.runs_inline`)."""
        return True

    def status(self) -> dict[str, Any]:
        """Occupancy, queue, counters and stuck workers."""
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "max_workers": self.config.max_workers,
            "max_concurrent": self.config.concurrency,
            "max_queue": self.config.max_queue,
            "in_use": self._in_flight,
            "idle_workers": len(self._idle),
            "queued": len(self._queued),
            "completed": self.completed,
            "rejected": self.rejected,
            "wait_timeouts": self.wait_timeouts,
            "abandoned": self.abandoned,
            "stuck_workers": self._stuck,
        }
