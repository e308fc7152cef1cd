"""An adversarial review of the bulkhead's jobs and caller-side admission (try_admit).

Each test names the guarantee it guards: exactly one outcome per operation, slots neither
leaked nor freed twice, priority order and per-sender order whoever queues, bounded state.
The first group reproduces the bugs the review found (all fixed since).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _helpers.bulkhead import Gate, books_balance, bulkhead_of, fused
from _helpers.tiny_switch import tiny_switch
from garrison import ActorUnavailable, BulkheadFull, Execute, Future, GetStatus, Runtime
from garrison._ref import Ref, actor_of
from garrison.actors import bulkhead as bulkhead_module
from garrison.actors.bulkhead import Abandon, BulkheadActor, BulkheadConfig
from garrison.testing import ManualClock

WAIT = 5.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


def standalone(rt: Runtime, **config: Any) -> Ref:
    """A bulkhead actor of its own (every operation goes through its mailbox)."""
    return rt.spawn(BulkheadActor, BulkheadConfig(**config), name="bh")


def _hold(target: Any, hook: str) -> tuple[threading.Event, threading.Event]:
    """Hold the next call of ``target.hook`` until the returned ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    original: Callable[..., Any] = getattr(target, hook)

    def held(*args: Any) -> Any:
        vars(target).pop(hook, None)
        entered.set()
        release.wait(WAIT)
        return original(*args)

    setattr(target, hook, held)
    return entered, release


def plain(coroutine_function: Callable[..., Any]) -> Callable[..., Any]:
    """A plain (not async) function returning the coroutine object ``coroutine_function``
    makes: the bulkhead sees a synchronous operation and gives it to a worker."""

    def call(*args: Any) -> Any:
        return coroutine_function(*args)

    return call


# -- bugs the review found (fixed) ----------------------------------------------------------------


def test_a_waiting_operation_is_not_started_on_a_worker_that_just_crashed(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = standalone(rt, max_workers=1, max_queue=1)
    bulkhead = actor_of(ref.actor_ref)
    assert isinstance(bulkhead, BulkheadActor)
    crash = threading.Event()
    original = bulkhead_module._Job.run

    def run(job: Any, loop: Any) -> None:
        if job.message.name == "crashes its worker":
            assert crash.wait(WAIT)
            raise RuntimeError("worker bug")  # a bug in the worker's handling, not the op's
        original(job, loop)

    monkeypatch.setattr(bulkhead_module._Job, "run", run)
    first = ref.ask_future(Execute(int, name="crashes its worker"))
    waiting = ref.ask_future(Execute(lambda: "ran"))
    assert ref.settle(WAIT)
    assert ref.ask(GetStatus(), timeout=WAIT)["queued"] == 1
    # The bulkhead's thread is busy when the worker crashes (as it may be at any time).
    entered, release = _hold(bulkhead, "status")
    status = ref.ask_future(GetStatus())
    assert entered.wait(WAIT)
    crash.set()
    assert isinstance(first.exception(WAIT), RuntimeError)
    release.set()
    status.get(WAIT)
    assert waiting.get(WAIT) == "ran"  # run by the replacement worker


def test_abandoning_a_coroutine_returned_by_a_plain_function_cancels_it(rt: Runtime) -> None:
    ref = standalone(rt, max_workers=1)
    entered, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    reply: Future[Any] = Future()
    ref.forward(Execute(plain(forever), name="returns a coroutine"), reply)
    assert entered.wait(WAIT)
    ref.tell(Abandon(reply))
    assert ref.settle(WAIT)
    status = ref.ask(GetStatus(), timeout=WAIT)
    assert status["abandoned"] == 0  # no worker was stuck in it: nothing to retire
    assert cancelled.wait(WAIT)
    assert reply.exception(WAIT) is not None


def test_a_coroutine_returned_by_a_plain_function_does_not_hold_a_worker(rt: Runtime) -> None:
    ref = standalone(rt, max_workers=1, max_concurrent=2)
    entered, release = threading.Event(), threading.Event()

    async def waiting() -> str:
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.001)
        return "coroutine"

    running = ref.ask_future(Execute(plain(waiting)))
    try:
        assert entered.wait(WAIT)
        assert ref.ask(Execute(lambda: "sync"), timeout=WAIT) == "sync"
    finally:
        release.set()
    assert running.get(WAIT) == "coroutine"
    books_balance(ref.ask(GetStatus(), timeout=WAIT), 1)


def test_expired_waiting_operations_do_not_pile_up_while_the_workers_are_stuck(
    rt: Runtime, clock: ManualClock
) -> None:
    ref = standalone(rt, max_workers=1, max_queue=2, max_wait=1.0)
    bulkhead = actor_of(ref.actor_ref)
    assert isinstance(bulkhead, BulkheadActor)
    gate = Gate()
    stuck = ref.ask_future(Execute(gate.fn("late")))
    gate.wait_started()
    for _ in range(300):
        waiting = ref.ask_future(Execute(lambda: "never"))
        assert ref.settle(WAIT)
        clock.advance(1.0)
        assert isinstance(waiting.exception(WAIT), BulkheadFull)
    heap = len(bulkhead._for_worker) + len(bulkhead._for_slot)
    gate.release.set()
    assert stuck.get(WAIT) == "late"
    assert ref.ask(GetStatus(), timeout=WAIT)["wait_timeouts"] == 300
    assert heap <= 50  # bounded by max_queue (and a compaction slack), not by the traffic


def test_a_waiting_coroutine_is_not_overtaken_while_a_slot_is_free(rt: Runtime) -> None:
    ref = standalone(rt, max_workers=1, max_concurrent=2, max_queue=5)
    gate = Gate()
    release = threading.Event()

    async def held() -> str:
        while not release.is_set():
            await asyncio.sleep(0.001)
        return "held"

    async def quick(tag: str) -> str:
        return tag

    sync = ref.ask_future(Execute(gate.fn("sync")))  # holds the only worker
    gate.wait_started()
    coroutine = ref.ask_future(Execute(held))  # holds the second slot
    needs_worker = ref.ask_future(Execute(lambda: "waited"))  # queued: no slot
    first = ref.ask_future(Execute(quick, args=("first",)))  # queued behind it
    assert ref.settle(WAIT)
    assert ref.ask(GetStatus(), timeout=WAIT)["queued"] == 2
    try:
        release.set()
        assert coroutine.get(WAIT) == "held"  # booked (a slot freed) before it was answered
        second = ref.ask_future(Execute(quick, args=("second",)))
        assert second.get(WAIT) == "second"
        assert first.done()  # it waited longer for the same slot, with the same priority
    finally:
        gate.release.set()
    assert first.get(WAIT) == "first"
    assert (sync.get(WAIT), needs_worker.get(WAIT)) == ("sync", "waited")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_coroutine_raising_keyboard_interrupt_gets_it_as_its_outcome(rt: Runtime) -> None:
    ref = standalone(rt, max_workers=1)
    bulkhead = actor_of(ref.actor_ref)
    assert isinstance(bulkhead, BulkheadActor)
    assert bulkhead.loop is not None

    async def interrupted() -> None:
        raise KeyboardInterrupt("from a coroutine")

    loop = bulkhead.loop
    try:
        reply = ref.ask_future(Execute(interrupted))
        assert isinstance(reply.exception(2.0), KeyboardInterrupt)
        assert loop.running  # the loop survives it, for every other coroutine
        books_balance(ref.ask(GetStatus(), timeout=WAIT), 1)
    finally:
        # The bug kills the loop's thread before it closes its loop: close it for it.
        dead = loop._thread is not None and not loop._thread.is_alive()
        if dead and loop._loop is not None and not loop._loop.is_closed():
            loop._loop.close()


@pytest.mark.parametrize("max_queue", [0, 1])
def test_a_call_made_while_the_bulkhead_starts_waits_for_its_workers(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, max_queue: int
) -> None:
    entered, release = threading.Event(), threading.Event()
    original = BulkheadActor.on_start

    def slow_start(self: BulkheadActor) -> None:  # widens the window a thread start leaves
        entered.set()
        assert release.wait(WAIT)
        original(self)

    monkeypatch.setattr(BulkheadActor, "on_start", slow_start)
    api = rt.pipeline("p", bulkhead=BulkheadConfig(max_workers=1, max_queue=max_queue))
    assert entered.wait(WAIT)
    future = api.submit(lambda: "ran")
    release.set()
    assert api.ref.settle(WAIT)
    assert bulkhead_of(api).status()["queued"] == 0
    assert future.get(WAIT) == "ran"


# -- guarantees that hold: callers admitting from their own threads ----------------------------


def test_operations_queued_by_callers_run_by_priority_then_in_arrival_order(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=10)
    gate = Gate()
    blocked = api.submit(gate.fn())
    gate.wait_started()
    order: list[str] = []
    sent = [
        ("low", "low-1"),
        ("normal", "normal-1"),
        ("high", "high-1"),
        ("low", "low-2"),
        ("high", "high-2"),
        ("normal", "normal-2"),
    ]
    futures = [api.options(priority=p).submit(order.append, tag) for p, tag in sent]
    status = bulkhead.status()
    assert status["queued"] == 6  # queued from this thread: nothing went to the host
    assert not bulkhead._detoured
    gate.release.set()
    blocked.get(WAIT)
    for future in futures:
        future.get(WAIT)
    assert order == ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    books_balance(bulkhead.status(), 1)


def test_callers_are_refused_at_max_queue_from_their_own_thread_and_counted(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=2)
    gate = Gate()
    blocked = api.submit(gate.fn("first"))
    gate.wait_started()
    queued = [api.submit(lambda i=i: i) for i in range(2)]
    refused = [api.submit(int) for _ in range(3)]
    for future in refused:  # answered at once, in this thread
        assert future.done()
        assert isinstance(future.exception(0), BulkheadFull)
    status = bulkhead.status()
    assert (status["in_use"], status["queued"], status["rejected"]) == (1, 2, 3)
    gate.release.set()
    assert blocked.get(WAIT) == "first"
    assert [f.get(WAIT) for f in queued] == [0, 1]
    status = bulkhead.status()
    books_balance(status, 1)
    assert (status["completed"], status["rejected"]) == (3, 3)


def test_an_operation_queued_by_its_caller_waits_at_most_max_wait(
    rt: Runtime, clock: ManualClock
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=1, max_wait=2.0)
    gate = Gate()
    blocked = api.submit(gate.fn("first"))
    gate.wait_started()
    ran: list[int] = []
    waiting = api.submit(ran.append, 1)  # its timer is set from this thread
    clock.advance(1.9)
    assert api.ref.settle(WAIT)
    assert not waiting.done()
    clock.advance(0.1)
    assert isinstance(waiting.exception(WAIT), BulkheadFull)
    gate.release.set()
    assert blocked.get(WAIT) == "first"
    assert api.ref.settle(WAIT)
    assert ran == []  # refused, so never run
    status = bulkhead.status()
    books_balance(status, 1)
    assert status["wait_timeouts"] == 1


def test_max_wait_racing_a_freed_slot_gives_one_outcome_and_balanced_books(
    rt: Runtime, clock: ManualClock
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=1, max_wait=1.0)
    ran: list[int] = []
    outcomes = {"ran": 0, "expired": 0}
    with tiny_switch():
        for i in range(40):
            gate = Gate()
            blocked = api.submit(gate.fn())
            gate.wait_started()
            waiting = api.submit(ran.append, i)
            go = threading.Barrier(2)

            def free_the_slot(gate: Gate = gate, go: threading.Barrier = go) -> None:
                go.wait(WAIT)
                gate.release.set()

            freeing = threading.Thread(target=free_the_slot)
            freeing.start()
            go.wait(WAIT)
            clock.advance(1.0)  # the timer fires while the worker finishes
            freeing.join(WAIT)
            blocked.get(WAIT)
            error = waiting.exception(WAIT)
            assert api.ref.settle(WAIT)
            if error is None:
                assert ran[-1:] == [i]
                outcomes["ran"] += 1
            else:
                assert isinstance(error, BulkheadFull)
                assert i not in ran  # refused and run: two outcomes for one operation
                outcomes["expired"] += 1
    status = bulkhead.status()
    books_balance(status, 1)
    assert status["wait_timeouts"] == outcomes["expired"]
    assert status["completed"] == 40 + outcomes["ran"]


def test_one_sender_mixing_submit_and_the_stage_ref_keeps_its_order_in_the_queue(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=20)
    gate = Gate()
    blocked = api.submit(gate.fn())
    gate.wait_started()
    started: list[int] = []
    futures: list[Future[Any]] = []
    for n in range(12):
        if n % 3 == 1:  # through the stage's Ref (the host's mailbox, or its turn)
            reply: Future[Any] = Future()
            api.ref.forward(api.execute(started.append, n), reply)
            futures.append(reply)
        else:  # queued by try_admit from this thread
            futures.append(api.submit(started.append, n))
    gate.release.set()
    blocked.get(WAIT)
    for future in futures:
        future.get(WAIT)
    assert started == list(range(12))
    assert api.ref.settle(WAIT)
    assert not bulkhead._detoured  # the fast path is open again
    books_balance(bulkhead.status(), 1)


def test_operations_turned_away_by_a_busy_host_do_not_close_the_fast_path_for_good(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=0)
    gate = Gate()
    entered, release = _hold(bulkhead, "status")
    asking = threading.Thread(target=api.status)
    asking.start()
    assert entered.wait(WAIT)  # the host is busy: callers must go through its mailbox
    blocked = api.submit(gate.fn("ran"))
    refused = api.submit(int)  # refused by the actor (no slot, no queue), not by its caller
    assert len(bulkhead._detoured) == 2
    release.set()
    asking.join(WAIT)
    gate.wait_started()
    assert isinstance(refused.exception(WAIT), BulkheadFull)
    gate.release.set()
    assert blocked.get(WAIT) == "ran"
    assert not bulkhead._detoured
    assert api.call(lambda: "fast") == "fast"
    books_balance(bulkhead.status(), 1)


def test_past_the_abandon_cap_callers_are_refused_though_a_worker_is_idle(rt: Runtime) -> None:
    api, bulkhead = fused(rt, max_workers=2, max_abandoned=0)
    gate = Gate()
    stuck = api.submit(gate.fn("late"))
    gate.wait_started()
    api.stages["bulkhead"].tell(Abandon(stuck))
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    assert (status["stuck_workers"], status["idle_workers"]) == (1, 1)
    refused = api.submit(int)  # the fast path: an idle worker, a free slot, but too many stuck
    assert isinstance(refused.exception(0), BulkheadFull)
    gate.release.set()
    assert stuck.get(WAIT) == "late"  # nobody else answered it here
    for _ in range(500):  # the retired worker ends once its call returns (asynchronously)
        assert api.ref.settle(WAIT)
        if bulkhead.status()["stuck_workers"] == 0:
            break
    books_balance(bulkhead.status(), 2)
    assert api.call(lambda: "after") == "after"


# -- outcomes of odd operations --------------------------------------------------------------


@pytest.mark.parametrize("path", ["caller", "actor"])
def test_keyboard_interrupt_from_a_plain_operation_is_its_outcome(rt: Runtime, path: str) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt("from an operation")

    if path == "caller":
        api, bulkhead = fused(rt, max_workers=1)
        submit: Callable[[Callable[[], Any]], Future[Any]] = api.submit
    else:
        ref = standalone(rt, max_workers=1)
        assert ref.settle(WAIT)
        found = actor_of(ref.actor_ref)
        assert isinstance(found, BulkheadActor)
        bulkhead = found

        def submit(fn: Callable[[], Any]) -> Future[Any]:
            return ref.ask_future(Execute(fn))

    workers = list(bulkhead._workers)
    assert isinstance(submit(interrupted).exception(WAIT), KeyboardInterrupt)
    assert submit(lambda: "next").get(WAIT) == "next"
    assert bulkhead._workers == workers  # an operation's failure never crashes its worker
    books_balance(bulkhead.status(), 1)


def test_coroutines_returned_by_plain_functions_get_their_outcomes(rt: Runtime) -> None:
    api, bulkhead = fused(rt, max_workers=2, max_queue=20)

    async def value(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def fails_at_once() -> None:
        raise LookupError("at once")

    futures = [api.submit(plain(value), n) for n in range(10)]
    failures = [api.submit(plain(fails_at_once)) for _ in range(5)]
    assert [f.get(WAIT) for f in futures] == list(range(10))
    for future in failures:
        assert isinstance(future.exception(WAIT), LookupError)
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    books_balance(status, 2)
    assert status["completed"] == 15


# -- many callers, stop and crash ---------------------------------------------------------------


def test_many_callers_under_a_tiny_switch_interval_get_one_outcome_each(rt: Runtime) -> None:
    api, bulkhead = fused(rt, max_workers=3, max_concurrent=4, max_queue=6)
    runs: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    class Failed(Exception):
        pass

    def op(sender: int, n: int) -> tuple[int, int]:
        with lock:
            runs[sender, n] = runs.get((sender, n), 0) + 1
        if n % 5 == 2:
            raise Failed
        return sender, n

    async def coroutine_op(sender: int, n: int) -> tuple[int, int]:
        return op(sender, n)

    futures: dict[tuple[int, int], Future[Any]] = {}
    senders, per_sender = 8, 120
    go = threading.Barrier(senders)
    priorities = ("high", "normal", "low")

    def send(sender: int) -> None:
        views = [api.options(priority=p) for p in priorities]
        go.wait(WAIT)
        for n in range(per_sender):
            fn = coroutine_op if n % 4 == 3 else op
            futures[sender, n] = views[n % 3].submit(fn, sender, n)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    with tiny_switch():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 2)
    assert len(futures) == senders * per_sender
    refused = 0
    for key, future in futures.items():
        error = future.exception(WAIT)
        if isinstance(error, BulkheadFull):
            refused += 1
            assert key not in runs  # refused, so never run
        elif key[1] % 5 == 2:
            assert isinstance(error, Failed)
        else:
            assert error is None
            assert future.get(0) == key
    assert set(runs.values()) <= {1}  # none ran twice
    assert len(runs) + refused == senders * per_sender  # every other one ran
    assert api.ref.settle(WAIT)
    status = bulkhead.status()
    books_balance(status, 3)
    assert (status["completed"], status["rejected"]) == (len(runs), refused)
    assert not bulkhead._detoured


def test_stopping_with_running_and_caller_queued_work_answers_everything(
    clock: ManualClock,
) -> None:
    gate = Gate()
    with Runtime(name="rt", clock=clock) as runtime:
        api, bulkhead = fused(runtime, max_workers=2, max_queue=3)
        running = [api.submit(gate.fn(i)) for i in range(2)]
        gate.wait_started(2)
        queued = [api.submit(int) for _ in range(3)]
        assert bulkhead.status()["queued"] == 3
        stopper = threading.Thread(target=runtime.stop, args=(WAIT,))
        stopper.start()
        for future in queued:  # failed first: running calls finish while the stop waits
            assert isinstance(future.exception(WAIT), ActorUnavailable)
        late = api.submit(int)  # the bulkhead has closed: left to the stopping host
        gate.release.set()
        assert [f.get(WAIT) for f in running] == [0, 1]
        assert isinstance(late.exception(WAIT), ActorUnavailable)  # when its mailbox closes
        stopper.join(WAIT)
        assert not stopper.is_alive()
    assert bulkhead._closed


def test_a_bulkhead_crash_answers_its_running_and_waiting_operations_once(
    rt: Runtime,
) -> None:
    api, bulkhead = fused(rt, max_workers=1, max_queue=2)
    gate = Gate()
    running = api.submit(gate.fn("finished by the old worker"))
    gate.wait_started()
    waiting = api.submit(int)

    def crash() -> dict[str, Any]:
        raise RuntimeError("bulkhead bug")

    bulkhead.status = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="bulkhead bug"):
        api.status()
    error = waiting.exception(WAIT)
    assert isinstance(error, ActorUnavailable)
    assert "crashed" in str(error)
    ref = api.stages["bulkhead"]
    for _ in range(500):  # the supervisor restarts the host (asynchronously): bounded polling
        if bulkhead_of(api) is not bulkhead and ref.is_alive() and ref.settle(WAIT):
            break
        threading.Event().wait(0.01)
    restarted = bulkhead_of(api)
    assert restarted is not bulkhead
    assert api.call(lambda: "new incarnation") == "new incarnation"
    gate.release.set()
    assert running.get(WAIT) == "finished by the old worker"
    assert ref.settle(WAIT)
    books_balance(restarted.status(), 1)
    assert restarted.status()["completed"] == 1  # the old incarnation's call is not its own
