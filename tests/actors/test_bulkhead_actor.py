"""The bulkhead: bounded concurrency, a bounded waiting room, isolation, abandoned workers."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from garrison import ActorUnavailable, BulkheadFull, ConfigError, Execute, GetStatus, Runtime
from garrison.actors.bulkhead import Abandon, BulkheadActor, BulkheadConfig
from garrison.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime


class Gate:
    """Operations that block until released, telling the test when they started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._started = threading.Semaphore(0)

    def op(self, value: Any = None, name: str = "blocked") -> Execute:
        def blocked() -> Any:
            self._started.release()
            assert self.release.wait(10)
            return value

        return Execute(blocked, name=name)

    def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert self._started.acquire(timeout=5)


def bulkhead(rt: Runtime, name: str = "bh", **config: Any) -> Any:
    return rt.spawn(BulkheadActor, BulkheadConfig(**config), name=name)


def test_at_most_max_concurrent_run_the_rest_wait_then_are_refused(rt):
    ref = bulkhead(rt, max_workers=3, max_queue=1)
    gate = Gate()
    running = [ref.ask_future(gate.op(i)) for i in range(3)]
    gate.wait_started(3)
    waiting = ref.ask_future(gate.op("queued"))
    with pytest.raises(BulkheadFull) as info:
        ref.ask(Execute(int), timeout=5)
    assert info.value.name == "bh"
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["in_use"], status["queued"], status["rejected"]) == (3, 1, 1)
    gate.release.set()
    assert [f.get(5) for f in running] == [0, 1, 2]
    assert waiting.get(5) == "queued"


def test_max_concurrent_below_max_workers(rt):
    ref = bulkhead(rt, max_workers=4, max_concurrent=2, max_queue=5)
    gate = Gate()
    futures = [ref.ask_future(gate.op(i)) for i in range(4)]
    gate.wait_started(2)
    assert ref.ask(GetStatus(), timeout=5)["queued"] == 2
    gate.release.set()
    assert [f.get(5) for f in futures] == [0, 1, 2, 3]


def test_a_queued_operation_waits_at_most_max_wait(rt, clock):
    ref = bulkhead(rt, max_workers=1, max_queue=1, max_wait=2.0)
    gate = Gate()
    running = ref.ask_future(gate.op("running"))
    gate.wait_started()
    waiting = ref.ask_future(Execute(int))
    ref.settle(5)
    clock.advance(1.9)
    assert not waiting.done()
    clock.advance(0.1)
    with pytest.raises(BulkheadFull):
        waiting.get(5)
    assert ref.ask(GetStatus(), timeout=5)["wait_timeouts"] == 1
    gate.release.set()
    assert running.get(5) == "running"


def test_the_queue_is_served_by_priority(rt):
    ref = bulkhead(rt, max_workers=1, max_queue=3)
    gate = Gate()
    order: list[str] = []
    blocked = ref.ask_future(gate.op())
    gate.wait_started()
    futures = [
        ref.ask_future(Execute(order.append, args=(p,), priority=p))
        for p in ("low", "high", "normal")
    ]
    assert ref.settle(5)  # all three are queued before the slot frees
    gate.release.set()
    blocked.get(5)
    for future in futures:
        future.get(5)
    assert order == ["high", "normal", "low"]


def test_one_saturated_bulkhead_never_slows_another(rt):
    database = bulkhead(rt, "database", max_workers=2, max_queue=10)
    api_calls = bulkhead(rt, "api_calls", max_workers=2)
    gate = Gate()
    stuck = [database.ask_future(gate.op()) for _ in range(2)]
    gate.wait_started(2)
    queued = [database.ask_future(Execute(int)) for _ in range(5)]
    # the database bulkhead is full and its queue is growing; api_calls is unaffected
    assert [api_calls.ask(Execute(lambda i=i: i * 2), timeout=5) for i in range(20)] == [
        i * 2 for i in range(20)
    ]
    assert not any(f.done() for f in queued)
    gate.release.set()
    for future in stuck + queued:
        future.get(5)


def test_coroutines_count_against_max_concurrent_without_holding_workers(rt):
    ref = bulkhead(rt, max_workers=1, max_concurrent=3)
    release = threading.Event()
    entered = threading.Semaphore(0)

    async def waiting(i: int) -> int:
        entered.release()
        while not release.is_set():
            await asyncio.sleep(0.001)
        return i

    futures = [ref.ask_future(Execute(waiting, args=(i,))) for i in range(3)]
    for _ in range(3):
        assert entered.acquire(timeout=5)
    status = ref.ask(GetStatus(), timeout=5)
    assert status["in_use"] == 3
    assert status["idle_workers"] == 1
    with pytest.raises(BulkheadFull):
        ref.ask(Execute(int), timeout=5)
    release.set()
    assert [f.get(5) for f in futures] == [0, 1, 2]


def test_abandoning_a_stuck_call_replaces_its_worker(rt):
    ref = bulkhead(rt, max_workers=1, max_abandoned=1)
    gate = Gate()
    first, second = rt_future(), rt_future()
    ref.forward(gate.op("late 1"), first)
    gate.wait_started()
    ref.tell(Abandon(first))
    # the pool keeps its capacity: a replacement worker runs new work at once
    assert ref.ask(Execute(lambda: "fresh"), timeout=5) == "fresh"
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["abandoned"], status["stuck_workers"]) == (1, 1)
    ref.forward(gate.op("late 2"), second)
    gate.wait_started()
    ref.tell(Abandon(second))
    # past the cap of stuck workers, new work is refused rather than piling up threads
    with pytest.raises(BulkheadFull):
        ref.ask(Execute(int), timeout=5)
    gate.release.set()
    assert first.get(5) == "late 1"  # nobody else answered them here
    assert second.get(5) == "late 2"
    # the retired workers end once their calls return (asynchronously): bounded polling
    for _ in range(500):
        if ref.ask(GetStatus(), timeout=5)["stuck_workers"] == 0:
            break
    assert ref.ask(GetStatus(), timeout=5)["stuck_workers"] == 0
    assert ref.ask(Execute(lambda: "after"), timeout=5) == "after"


def test_past_the_abandon_cap_a_stuck_worker_is_not_replaced(rt):
    ref = bulkhead(rt, max_workers=2, max_abandoned=1)
    gate = Gate()
    first, second = rt_future(), rt_future()
    ref.forward(gate.op("late 1"), first)
    ref.forward(gate.op("late 2"), second)
    gate.wait_started(2)
    ref.tell(Abandon(first))  # one stuck: within the cap, replaced
    ref.tell(Abandon(second))  # two stuck: past the cap, not replaced (the pool shrinks)
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["stuck_workers"], status["idle_workers"]) == (2, 1)
    gate.release.set()
    assert (first.get(5), second.get(5)) == ("late 1", "late 2")
    # once the stuck workers end, the pool is back to max_workers (bounded polling)
    for _ in range(500):
        status = ref.ask(GetStatus(), timeout=5)
        if status["stuck_workers"] == 0:
            break
    assert (status["stuck_workers"], status["idle_workers"]) == (0, 2)
    assert ref.ask(Execute(lambda: "after"), timeout=5) == "after"


def test_abandoning_a_coroutine_cancels_it(rt):
    ref = bulkhead(rt, max_workers=1)
    entered = threading.Event()
    cancelled = threading.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    reply = rt_future()
    ref.forward(Execute(forever), reply)
    assert entered.wait(5)
    ref.tell(Abandon(reply))
    assert cancelled.wait(5)
    assert reply.exception(5) is not None
    ref.settle(5)
    assert ref.ask(GetStatus(), timeout=5)["in_use"] == 0


def test_abandoning_a_queued_operation_drops_it(rt):
    ref = bulkhead(rt, max_workers=1, max_queue=2)
    gate = Gate()
    ref.ask_future(gate.op())
    gate.wait_started()
    queued = rt_future()
    ref.forward(Execute(lambda: "never"), queued)
    ref.tell(Abandon(queued))
    assert ref.ask(GetStatus(), timeout=5)["queued"] == 0
    gate.release.set()
    ref.settle(5)
    assert not queued.done()  # the timeout stage that abandoned it has answered its caller


def test_waiting_operations_fail_when_the_bulkhead_stops(rt):
    ref = bulkhead(rt, max_workers=1, max_queue=2)
    gate = Gate()
    running = ref.ask_future(gate.op("done"))
    gate.wait_started()
    queued = ref.ask_future(Execute(int))
    stopper = threading.Thread(target=ref.stop, args=(10,))
    stopper.start()
    with pytest.raises(ActorUnavailable, match="stopped"):
        queued.get(5)
    gate.release.set()
    assert running.get(5) == "done"
    stopper.join(10)


def test_a_crashed_worker_is_replaced(rt, monkeypatch):
    from garrison._ref import actor_of  # noqa: PLC0415
    from garrison.actors import bulkhead as module  # noqa: PLC0415

    ref = bulkhead(rt, max_workers=1)
    assert ref.ask(Execute(lambda: 1), timeout=5) == 1
    first = actor_of(ref.actor_ref)._workers[0]
    # a worker only crashes on a bug of its own; simulate one in the job it runs
    monkeypatch.setattr(module._Job, "run", _crash)
    with pytest.raises(RuntimeError, match="worker bug"):
        ref.ask(Execute(int), timeout=5)
    monkeypatch.undo()
    ref.settle(5)
    assert ref.ask(Execute(lambda: "replaced"), timeout=5) == "replaced"
    workers = actor_of(ref.actor_ref)._workers
    assert len(workers) == 1
    assert workers[0] is not first


def _crash(*_args: Any) -> Any:
    raise RuntimeError("worker bug")


def rt_future() -> Any:
    from garrison import Future  # noqa: PLC0415

    return Future()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_wait": 0}, "max_wait"),
        ({"max_abandoned": -1}, "max_abandoned"),
        ({"shutdown_timeout": "5"}, "shutdown_timeout"),
    ],
)
def test_bad_bulkhead_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        BulkheadConfig(**kwargs)
    assert info.value.key == key


def test_from_dict_rejects_unknown_keys():
    assert BulkheadConfig.from_dict({"max_workers": 5, "max_concurrent": 3}).concurrency == 3
    with pytest.raises(ConfigError) as info:
        BulkheadConfig.from_dict({"max_worker": 5})
    assert info.value.key == "max_worker"


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
def test_a_caller_answered_finds_its_slot_free_again(rt, busy):
    # max_queue=0: a slot or a worker still counted busy after the answer would be refused
    # (read-your-writes). "busy" keeps the bulkhead's mailbox full of other messages, so a
    # completion notice waits behind them: the caller must still not be answered first.
    ref = bulkhead(rt, max_workers=1, max_queue=0)
    stop = threading.Event()

    def flood() -> None:  # keeps about 20 status requests queued
        window: deque[Any] = deque()
        while not stop.is_set():
            window.append(ref.ask_future(GetStatus()))
            if len(window) >= 20:
                window.popleft().get(5)

    flooder = threading.Thread(target=flood)
    if busy:
        flooder.start()
    try:
        assert [ref.ask(Execute(lambda i=i: i), timeout=5) for i in range(200)] == list(range(200))
    finally:
        stop.set()
        if busy:
            flooder.join(10)
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["rejected"], status["in_use"], status["idle_workers"]) == (0, 0, 1)
    assert status["completed"] == 200


def test_freed_workers_take_the_waiting_operations_and_the_books_balance(rt):
    ref = bulkhead(rt, max_workers=2, max_queue=10)
    gate = Gate()
    blocked = [ref.ask_future(gate.op(i)) for i in range(2)]
    gate.wait_started(2)
    futures = [ref.ask_future(Execute(lambda i=i: i * 10)) for i in range(10)]
    ref.settle(5)
    assert ref.ask(GetStatus(), timeout=5)["queued"] == 10
    gate.release.set()
    assert [f.get(5) for f in blocked] == [0, 1]
    assert [f.get(5) for f in futures] == [i * 10 for i in range(10)]
    ref.settle(5)
    status = ref.ask(GetStatus(), timeout=5)
    assert (status["in_use"], status["queued"], status["idle_workers"]) == (0, 0, 2)
    assert (status["completed"], status["rejected"]) == (12, 0)
    assert ref.ask(Execute(lambda: "after"), timeout=5) == "after"
