"""An adversarial review of WorkerActor.chain, the bulkhead's two waiting heaps, _to_loop and
the pipeline's cached front bulkhead.

Each test names the guarantee it guards: a chained job runs once, right after the job that
chained it and never ahead of a message already in the worker's mailbox; a crash answers the
running and the chained job; the books balance; a restarted or stopped host is never reached
through a stale bulkhead. Some reproduce bugs the review found (fixed since).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from _helpers.bulkhead import Gate, books_balance, bulkhead_of, fused
from _helpers.tiny_switch import tiny_switch
from garrison import (
    ActorUnavailable,
    BulkheadFull,
    Future,
    OperationTimeout,
    Runtime,
    TimeoutConfig,
)
from garrison._actor import PING
from garrison._ref import Ref, actor_of
from garrison.actors.bulkhead import Abandon, BulkheadActor, BulkheadConfig
from garrison.actors.worker import Job, WorkerActor
from garrison.testing import ManualClock

WAIT = 5.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


# -- helpers ----------------------------------------------------------------------------------


class Recorder:
    """What the test jobs did, in order, and in which thread."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.threads: dict[str, int] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


class RecordedJob(Job):
    """A job that records its outcome; ``action`` runs inside ``run`` (to chain, say)."""

    __slots__ = ("action", "name", "recorder")

    def __init__(
        self, recorder: Recorder, name: str, action: Callable[[], None] | None = None
    ) -> None:
        self.recorder = recorder
        self.name = name
        self.action = action

    def run(self, loop: Any) -> None:
        self.recorder.threads[self.name] = threading.get_ident()
        self.recorder.add(f"run {self.name}")
        if self.action is not None:
            self.action()
        if self.name.endswith("last"):
            self.recorder.done.set()

    def refused(self, reason: str) -> None:
        self.recorder.add(f"refused {self.name}")
        self.recorder.done.set()

    def crashed(self, error: BaseException) -> None:
        self.recorder.add(f"crashed {self.name}: {error}")


def worker_of(rt: Runtime, name: str = "w") -> tuple[Ref, WorkerActor]:
    ref = rt.spawn(WorkerActor, name=name)
    actor = actor_of(ref.actor_ref)
    assert isinstance(actor, WorkerActor)
    assert ref.settle(WAIT)
    return ref, actor


def worker_threads(bulkhead: BulkheadActor) -> set[int]:
    idents = {w.actor._ident for w in bulkhead._workers}
    assert None not in idents
    return {i for i in idents if i is not None}


# -- WorkerActor.chain on its own ---------------------------------------------------------------


def test_a_job_chained_from_the_running_job_runs_next_in_the_same_thread_once(
    rt: Runtime,
) -> None:
    ref, worker = worker_of(rt)
    rec = Recorder()
    answers: list[bool] = []
    second = RecordedJob(rec, "second last")
    first = RecordedJob(rec, "first", lambda: answers.extend([worker.chain(second)]))
    sent = worker.mailbox._sent
    ref.tell(first)
    assert rec.done.wait(WAIT)
    assert ref.settle(WAIT)
    assert answers == [True]
    assert rec.events == ["run first", "run second last"]
    assert rec.threads["first"] == rec.threads["second last"] == worker._ident
    assert worker.mailbox._sent == sent + 2  # the job and the settle's ping: not the chained one
    assert worker._job is None
    assert worker._next is None


def test_chain_refuses_outside_a_job_from_other_threads_and_a_second_time(
    rt: Runtime,
) -> None:
    ref, worker = worker_of(rt)
    rec = Recorder()
    assert not worker.chain(RecordedJob(rec, "no job runs"))  # idle: nothing to chain after
    answers: list[bool] = []
    release = threading.Event()

    def from_elsewhere() -> None:
        other: list[bool] = []
        thread = threading.Thread(target=lambda: other.append(worker.chain(RecordedJob(rec, "x"))))
        thread.start()
        thread.join(WAIT)
        answers.extend(other)
        answers.append(worker.chain(RecordedJob(rec, "chained last")))
        answers.append(worker.chain(RecordedJob(rec, "second chain")))
        release.set()

    ref.tell(RecordedJob(rec, "first", from_elsewhere))
    assert rec.done.wait(WAIT)
    assert release.is_set()
    assert ref.settle(WAIT)
    assert answers == [False, True, False]
    assert rec.events == ["run first", "run chained last"]


@pytest.mark.parametrize("queued", ["ping", "job", "stop"])
def test_a_job_is_not_chained_ahead_of_anything_in_the_mailbox(rt: Runtime, queued: str) -> None:
    ref, worker = worker_of(rt)
    rec = Recorder()
    answers: list[bool] = []
    ping: Future[Any] = Future()

    def queue_then_chain() -> None:
        if queued == "ping":
            ref._send(pykka._envelope.Envelope(PING, reply_to=ping))
        elif queued == "job":
            ref.tell(RecordedJob(rec, "told"))
        else:
            ref.tell(pykka.messages._ActorStop())
        answers.append(worker.chain(RecordedJob(rec, "chained last")))

    ref.tell(RecordedJob(rec, "first", queue_then_chain))
    if queued == "stop":
        assert ref.actor_ref.actor_stopped.wait(WAIT)
        assert answers == [False]
        assert rec.events == ["run first"]  # the caller told it itself when chain said no
        return
    assert ref.settle(WAIT)
    assert answers == [False]
    expected = ["run first", "run told"] if queued == "job" else ["run first"]
    assert rec.events == expected


def test_a_crash_after_chaining_answers_the_running_and_the_chained_job(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, worker = worker_of(rt)
    rec = Recorder()
    second = RecordedJob(rec, "second")
    original = WorkerActor.run_job

    def run_job(self: WorkerActor, job: Job) -> None:
        original(self, job)
        if isinstance(job, RecordedJob) and job.name == "first":
            raise RuntimeError("worker bug after the job")

    monkeypatch.setattr(WorkerActor, "run_job", run_job)
    ref.tell(RecordedJob(rec, "first", lambda: rec.add(f"chained {worker.chain(second)}")))
    assert rec.done.wait(WAIT)
    assert ref.actor_ref.actor_stopped.wait(WAIT)
    assert rec.events == [
        "run first",
        "chained True",
        "crashed first: worker bug after the job",
        "refused second",
    ]
    assert worker._next is None
    assert worker._job is None


# -- chaining in the bulkhead -------------------------------------------------------------------


def test_waiting_operations_run_chained_on_the_freed_worker_in_priority_order(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=4)
    gate = Gate()
    order: list[str] = []
    first = api.submit(gate.fn("first"))
    gate.wait_started()
    (worker,) = bulkhead._workers
    sent = worker.inbox._sent
    waiting = [
        api.options(priority=p).submit(lambda n=n: order.append(n) or threading.get_ident())
        for n, p in (("low", "low"), ("normal", "normal"), ("high", "high"), ("normal 2", "normal"))
    ]
    assert bulkhead.status()["queued"] == 4
    gate.release.set()
    assert first.get(WAIT) == "first"
    idents = {future.get(WAIT) for future in waiting}
    assert order == ["high", "normal", "normal 2", "low"]
    assert idents == {worker.actor._ident}
    assert worker.inbox._sent == sent  # each handed on by the worker itself: no mailbox
    assert api.ref.settle(WAIT)
    books_balance(bulkhead.status(), 1)


def test_a_worker_crashing_after_it_chained_a_job_refuses_it_and_the_books_balance(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=2)
    gate = Gate()
    original = WorkerActor.run_job

    def run_job(self: WorkerActor, job: Job) -> None:
        original(self, job)
        if getattr(job, "message", None) is not None and job.message.name == "first":
            assert self._next is not None  # the waiting one was chained
            raise RuntimeError("worker bug after its job")

    monkeypatch.setattr(WorkerActor, "run_job", run_job)
    first = api.options(name="first").submit(gate.fn("first"))
    gate.wait_started()
    chained = api.submit(lambda: "never")
    gate.release.set()
    assert first.get(WAIT) == "first"  # answered before the crash
    error = chained.exception(WAIT)
    assert isinstance(error, ActorUnavailable)
    assert "crashed" in str(error)
    monkeypatch.undo()
    assert api.call(lambda: "replacement") == "replacement"
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    books_balance(status, 1)
    assert status["completed"] == 3


def test_abandoning_a_chained_job_retires_its_worker_after_it_runs(
    rt: Runtime, clock: ManualClock
) -> None:
    api = rt.pipeline(
        "p",
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=1, max_queue=2),
    )
    bulkhead = bulkhead_of(api)
    first_gate, chained_gate = Gate(), Gate()
    first = api.options(timeout=100).submit(first_gate.fn("first"))
    first_gate.wait_started()
    chained = api.submit(chained_gate.fn("late"))
    assert api.ref.settle(WAIT)
    assert bulkhead.status()["queued"] == 1
    first_gate.release.set()
    assert first.get(WAIT) == "first"
    chained_gate.wait_started()  # chained, and running
    clock.advance(1.0)  # its caller times out: the worker is retired, a new one started
    assert isinstance(chained.exception(WAIT), OperationTimeout)
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    assert (status["abandoned"], status["stuck_workers"], status["in_use"]) == (1, 1, 0)
    assert api.call(lambda: "new worker") == "new worker"
    chained_gate.release.set()
    for _ in range(500):  # the retired worker ends once its call returns: bounded polling
        if api.ref.settle(WAIT) and bulkhead.status()["stuck_workers"] == 0:
            break
        threading.Event().wait(0.01)
    books_balance(bulkhead.status(), 1)


# -- the pipeline's cached front bulkhead ------------------------------------------------------


def test_after_a_host_restart_calls_reach_the_new_bulkhead_not_the_cached_one(
    rt: Runtime,
) -> None:
    api, old = fused(rt, max_workers=1)
    assert api.call(lambda: "old") == "old"
    assert api._front is not None
    assert api._front[1] is old

    def crash() -> dict[str, Any]:
        raise RuntimeError("bulkhead bug")

    old.status = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="bulkhead bug"):
        api.status()
    ref = api.stages["bulkhead"]
    for _ in range(500):  # the supervisor restarts the host (asynchronously): bounded polling
        if bulkhead_of(api) is not old and ref.is_alive() and ref.settle(WAIT):
            break
        threading.Event().wait(0.01)
    new = bulkhead_of(api)
    assert new is not old
    assert [api.call(lambda n=n: n) for n in range(3)] == [0, 1, 2]
    assert api._front is not None
    assert api._front[1] is new
    assert old.completed == 1
    assert new.completed == 3
    assert not new._detoured


def test_calls_to_a_stopped_pipeline_do_not_pile_up_in_its_dead_bulkhead(
    clock: ManualClock,
) -> None:
    with Runtime(name="rt", clock=clock) as runtime:
        api, bulkhead = fused(runtime, max_workers=1)
        assert api.call(lambda: "ran") == "ran"
    for _ in range(50):
        with pytest.raises(ActorUnavailable):
            api.call(lambda: "never")
    assert len(bulkhead._detoured) == 0


# -- stress -------------------------------------------------------------------------------------


class Failed(Exception):
    pass


def _mixed_op(kind: int, runs: dict[tuple[int, int], int], lock: threading.Lock) -> Any:
    """The operation of call ``n`` of a sender: sync, async, failing, or a coroutine returned
    by a plain function, by ``kind``."""

    def record(key: tuple[int, int]) -> tuple[int, int]:
        with lock:
            runs[key] = runs.get(key, 0) + 1
        if key[1] % 7 == 3:
            raise Failed
        return key

    async def coroutine(key: tuple[int, int]) -> tuple[int, int]:
        await asyncio.sleep(0)
        return record(key)

    def returns_coroutine(key: tuple[int, int]) -> Any:
        return coroutine(key)

    return (record, coroutine, returns_coroutine)[kind]


def test_many_callers_chaining_on_few_workers_get_one_outcome_each(rt: Runtime) -> None:
    api, bulkhead = fused(rt, max_workers=2, max_concurrent=3, max_queue=20)
    runs: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    ops = [_mixed_op(kind, runs, lock) for kind in range(3)]
    futures: dict[tuple[int, int], Future[Any]] = {}
    senders, per_sender = 6, 150
    go = threading.Barrier(senders)

    def send(sender: int) -> None:
        views = [api.options(priority=p) for p in ("high", "normal", "low")]
        go.wait(WAIT)
        for n in range(per_sender):
            kind = 0 if n % 3 else (n // 3) % 3
            futures[sender, n] = views[n % 3].submit(ops[kind], (sender, n))
            if n % 10 == 9:  # now and then a blocking call: the caller waits its turn
                with contextlib.suppress(Exception):
                    futures[sender, n].get(WAIT)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    with tiny_switch():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads)
    refused = 0
    for key, future in futures.items():
        error = future.exception(WAIT)
        if isinstance(error, BulkheadFull):
            refused += 1
            assert key not in runs
        elif key[1] % 7 == 3:
            assert isinstance(error, Failed), (key, error)
        else:
            assert error is None, (key, error)
            assert future.get(0) == key
    assert set(runs.values()) <= {1}
    assert len(runs) + refused == senders * per_sender
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    books_balance(status, 2)
    assert (status["completed"], status["rejected"]) == (len(runs), refused)
    assert not bulkhead._detoured
    assert all(w.actor._next is None for w in bulkhead._workers)


def test_timeouts_abandoning_chained_and_queued_work_leave_balanced_books(
    rt: Runtime, clock: ManualClock
) -> None:
    api = rt.pipeline(
        "p",
        timeout=TimeoutConfig(base_timeout=1.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=3, max_concurrent=4, max_queue=40),
    )
    bulkhead = bulkhead_of(api)
    release = threading.Event()
    runs: dict[int, int] = {}
    lock = threading.Lock()

    def op(n: int) -> int:
        with lock:
            runs[n] = runs.get(n, 0) + 1
        if n % 4 == 0:  # stuck until released: its caller times out
            release.wait(WAIT)
        if n % 5 == 1:
            raise Failed
        return n

    async def coroutine_op(n: int) -> int:
        if n % 4 == 0:
            await asyncio.sleep(60)  # cancelled when abandoned
        return op(n)

    futures: dict[int, Future[Any]] = {}
    senders, per_sender = 4, 30
    go = threading.Barrier(senders)

    def send(sender: int) -> None:
        go.wait(WAIT)
        for i in range(per_sender):
            n = sender * per_sender + i
            futures[n] = api.submit(coroutine_op if n % 3 == 2 else op, n)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    try:
        with tiny_switch():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT * 2)
            for _ in range(5):
                assert api.ref.settle(WAIT)
                clock.advance(1.0)  # time out what runs or waits now
    finally:
        release.set()
    timed_out = sum(isinstance(f.exception(WAIT), OperationTimeout) for f in futures.values())
    assert timed_out > 0
    for n, future in futures.items():
        error = future.exception(WAIT)
        assert error is None or isinstance(error, OperationTimeout | BulkheadFull | Failed), (
            n,
            error,
        )
        if error is None:
            assert future.get(0) == n
    assert set(runs.values()) <= {1}
    for _ in range(500):  # retired workers end once their calls return: bounded polling
        if api.ref.settle(WAIT):
            status = bulkhead.status()
            if status["stuck_workers"] == 0 and status["in_use"] == 0:
                break
        threading.Event().wait(0.01)
    status = bulkhead.status()
    books_balance(status, 3)
    assert status["abandoned"] > 0
    assert len(bulkhead._workers) == 3
    assert not bulkhead._running


# -- the two waiting heaps, and _to_loop --------------------------------------------------------


def test_both_kinds_of_waiting_operations_start_in_one_priority_then_arrival_order(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_concurrent=1, max_queue=6)
    gate = Gate()
    started: list[str] = []

    def sync(name: str) -> Callable[[], str]:
        def op() -> str:
            started.append(name)
            return name

        return op

    def coroutine(name: str) -> Callable[[], Any]:
        async def op() -> str:
            started.append(name)
            return name

        return op

    running = api.submit(gate.fn("running"))
    gate.wait_started()
    waiting = [
        api.options(priority=priority).submit(make(name))
        for make, name, priority in (
            (sync, "sync normal", "normal"),
            (coroutine, "coroutine high", "high"),
            (sync, "sync high", "high"),
            (coroutine, "coroutine low", "low"),
            (coroutine, "coroutine normal", "normal"),
            (sync, "sync low", "low"),
        )
    ]
    assert bulkhead.status()["queued"] == 6
    gate.release.set()
    assert running.get(WAIT) == "running"
    for future in waiting:
        future.get(WAIT)
    assert started == [
        "coroutine high",
        "sync high",
        "sync normal",
        "coroutine normal",
        "coroutine low",
        "sync low",
    ]
    assert api.ref.settle(WAIT)
    books_balance(bulkhead.status(), 1)


def test_a_plain_function_returning_a_coroutine_hands_its_worker_on_by_chaining(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_concurrent=2, max_queue=2)
    gate = Gate()
    release_coroutine = threading.Event()

    async def slow() -> str:
        while not release_coroutine.is_set():
            await asyncio.sleep(0.001)
        return "coroutine"

    def returns_coroutine() -> Any:
        gate.fn()()  # holds the worker until released
        return slow()

    first = api.submit(returns_coroutine)
    gate.wait_started()
    (worker,) = bulkhead._workers
    sent = worker.inbox._sent
    after = api.submit(threading.get_ident)
    assert bulkhead.status()["queued"] == 1
    try:
        gate.release.set()
        assert after.get(WAIT) == worker.actor._ident  # while the coroutine still runs
        assert not first.done()
        assert worker.inbox._sent == sent  # chained by the worker handing its coroutine on
    finally:
        release_coroutine.set()
    assert first.get(WAIT) == "coroutine"
    assert api.ref.settle(WAIT)
    books_balance(bulkhead.status(), 1)


def test_a_coroutine_refused_by_a_stopped_loop_is_closed() -> None:
    from garrison._loop import EventLoopThread  # noqa: PLC0415
    from garrison.actors._run import run_coroutine  # noqa: PLC0415

    loop = EventLoopThread(name="review-loop")
    loop.loop()
    loop.stop()

    async def operation() -> str:
        return "never"

    coro = operation()
    reply: Future[Any] = Future()
    try:
        assert run_coroutine(coro, reply, loop) is None
        assert isinstance(reply.exception(WAIT), RuntimeError)
        assert coro.cr_frame is None  # closed
    finally:
        coro.close()


def test_a_bulkhead_crash_among_many_chaining_callers_answers_every_call_once(
    rt: Runtime,
) -> None:
    api, first_bulkhead = fused(rt, max_workers=2, max_concurrent=3, max_queue=30)
    runs: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    ops = [_mixed_op(kind, runs, lock) for kind in range(3)]
    futures: dict[tuple[int, int], Future[Any]] = {}
    senders, per_sender = 4, 120
    go = threading.Barrier(senders + 1)

    def send(sender: int) -> None:
        go.wait(WAIT)
        for n in range(per_sender):
            kind = 0 if n % 3 else (n // 3) % 3
            futures[sender, n] = api.submit(ops[kind], (sender, n))

    def crash() -> dict[str, Any]:
        raise RuntimeError("bulkhead bug")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    with tiny_switch():
        for thread in threads:
            thread.start()
        go.wait(WAIT)
        first_bulkhead.status = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="bulkhead bug"):
            api.status()
        for thread in threads:
            thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads)
    unavailable = 0
    for key, future in futures.items():
        error = future.exception(WAIT)
        if isinstance(error, ActorUnavailable | BulkheadFull):
            unavailable += 1
            assert key not in runs, (key, error)  # refused, so never run
        elif key[1] % 7 == 3:
            assert isinstance(error, Failed), (key, error)
        else:
            assert error is None, (key, error)
    assert set(runs.values()) <= {1}
    ref = api.stages["bulkhead"]
    for _ in range(500):  # the supervisor restarts the host (asynchronously): bounded polling
        if bulkhead_of(api) is not first_bulkhead and ref.is_alive() and ref.settle(WAIT):
            break
        threading.Event().wait(0.01)
    bulkhead = bulkhead_of(api)
    assert api.call(lambda: "after") == "after"
    assert ref.settle(WAIT)
    books_balance(bulkhead.status(), 2)


def test_stopping_among_many_chaining_callers_answers_every_call_once(
    clock: ManualClock,
) -> None:
    runs: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    ops = [_mixed_op(kind, runs, lock) for kind in range(3)]
    futures: dict[tuple[int, int], Future[Any]] = {}
    senders, per_sender = 4, 120
    go = threading.Barrier(senders + 1)
    with Runtime(name="rt", clock=clock) as runtime:
        api, bulkhead = fused(runtime, max_workers=2, max_concurrent=3, max_queue=30)

        def send(sender: int) -> None:
            go.wait(WAIT)
            for n in range(per_sender):
                kind = 0 if n % 3 else (n // 3) % 3
                futures[sender, n] = api.submit(ops[kind], (sender, n))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        with tiny_switch():
            for thread in threads:
                thread.start()
            go.wait(WAIT)
            runtime.stop(WAIT)
            for thread in threads:
                thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads)
    for key, future in futures.items():
        error = future.exception(WAIT)
        if isinstance(error, ActorUnavailable | BulkheadFull):
            assert key not in runs, (key, error)  # refused, so never run
        elif key[1] % 7 == 3:
            assert isinstance(error, Failed), (key, error)
        else:
            assert error is None, (key, error)
    assert set(runs.values()) <= {1}
    assert bulkhead._closed
    assert not bulkhead._running


def test_an_operation_running_when_the_bulkhead_stops_finishes_though_it_returns_a_coroutine(
    clock: ManualClock,
) -> None:
    gate = Gate()

    async def rest() -> str:
        await asyncio.sleep(0)
        return "finished"

    def returns_coroutine() -> Any:
        gate.fn()()
        return rest()

    with Runtime(name="rt", clock=clock) as runtime:
        api, bulkhead = fused(runtime, max_workers=1)
        running = api.submit(returns_coroutine)
        gate.wait_started()
        stopper = threading.Thread(target=runtime.stop, args=(WAIT,))
        stopper.start()
        for _ in range(500):  # the stop reaches the bulkhead: bounded polling
            if bulkhead._closed:
                break
            threading.Event().wait(0.01)
        assert bulkhead._closed
        gate.release.set()
        error = running.exception(WAIT)
        stopper.join(WAIT)
        assert not stopper.is_alive()
    assert not isinstance(error, concurrent.futures.CancelledError), error
    assert running.get(0) == "finished"


def test_a_job_given_to_a_worker_retired_before_it_was_chained_goes_behind_the_stop(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=1)
    gate = Gate()
    first = api.submit(gate.fn("first"))
    gate.wait_started()
    (worker,) = bulkhead._workers
    ran = threading.Event()
    chained = api.submit(ran.set)
    entered, release = threading.Event(), threading.Event()
    original = bulkhead._launch

    def held_launch() -> None:
        if threading.get_ident() == worker.actor._ident and not entered.is_set():
            entered.set()  # the worker booked its job and was given the next one
            assert release.wait(WAIT)
        original()

    bulkhead._launch = held_launch  # type: ignore[method-assign]
    gate.release.set()
    assert entered.wait(WAIT)
    api.stages["bulkhead"].tell(Abandon(chained))  # its caller gave up: the worker retires
    assert api.ref.settle(WAIT)
    assert worker.retired
    release.set()
    assert first.get(WAIT) == "first"
    assert isinstance(chained.exception(WAIT), ActorUnavailable)  # refused, never run
    assert worker.actor.actor_stopped.wait(WAIT)
    assert not ran.is_set()
    for _ in range(500):  # the retired worker's end reaches the bulkhead: bounded polling
        if api.ref.settle(WAIT) and bulkhead.status()["stuck_workers"] == 0:
            break
        threading.Event().wait(0.01)
    status = bulkhead.status()
    books_balance(status, 1)
    assert status["abandoned"] == 1
    assert api.call(lambda: "replacement") == "replacement"
