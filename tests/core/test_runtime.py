"""Runtime lifecycle, actor ownership, service injection, and the worker actor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from garrison import Actor, Execute, Runtime, SupervisorGaveUp
from garrison._loop import EventLoopThread
from garrison._ref import actor_of
from garrison.actors import WorkerActor
from garrison.testing import ManualClock


class NeedsServices(Actor):
    def __init__(self, *, clock: Any = None, scheduler: Any = None, loop: Any = None) -> None:
        super().__init__()
        self.services = (clock, scheduler, loop)

    def on_receive(self, message: Any) -> Any:
        return self.services


def test_context_manager_starts_and_stops():
    with Runtime(name="rt1") as rt:
        assert rt.state == "running"
        ref = rt.spawn(WorkerActor)
        assert ref.is_alive()
    assert rt.state == "stopped"
    assert not ref.is_alive()


def test_stop_leaves_no_thread_behind():
    before = set(threading.enumerate())
    rt = Runtime().start()
    refs = [rt.spawn(WorkerActor) for _ in range(5)]

    async def coro() -> int:
        return 1

    assert refs[0].ask(Execute(coro), timeout=5) == 1  # starts the loop thread
    rt.scheduler.schedule(100.0, refs[0], "later")  # starts the timer thread
    rt.stop()
    assert {t for t in threading.enumerate() if t.is_alive()} <= before


def test_stop_is_idempotent_and_spawn_after_stop_fails():
    rt = Runtime().start()
    rt.stop()
    rt.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        rt.spawn(WorkerActor)
    with pytest.raises(RuntimeError, match="cannot start again"):
        rt.start()


def test_spawn_before_start_fails():
    rt = Runtime()
    with pytest.raises(RuntimeError, match="start it first"):
        rt.spawn(WorkerActor)
    rt.stop()


def test_spawn_rejects_non_actor_classes():
    with Runtime() as rt, pytest.raises(TypeError, match=r"pykka\.ThreadingActor subclass"):
        rt.spawn(dict)  # type: ignore[arg-type]


def test_bad_runtime_arguments():
    with pytest.raises(ValueError, match="name"):
        Runtime(name="")
    with pytest.raises(TypeError, match="monotonic"):
        Runtime(clock=object())  # type: ignore[arg-type]


def test_services_are_injected_where_accepted():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        ref = rt.spawn(NeedsServices)
        got_clock, scheduler, loop = ref.ask("services", timeout=5)
        assert got_clock is clock
        assert scheduler is rt.scheduler
        assert loop is rt.loop
        explicit = rt.spawn(NeedsServices, clock="mine")
        assert explicit.ask("services", timeout=5)[0] == "mine"


def test_actors_stop_newest_first():
    order: list[str] = []

    class Recorder(Actor):
        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

        def on_stop(self) -> None:
            order.append(self.label)

    with Runtime() as rt:
        for label in "abc":
            rt.spawn(Recorder, label)
        assert [r.name for r in rt.actors()] == ["Recorder-1", "Recorder-2", "Recorder-3"]
        assert [c["name"] for c in rt.tree()["children"]] == [r.name for r in rt.actors()]
    assert order == ["c", "b", "a"]


def test_an_actor_that_does_not_stop_in_time_is_abandoned_and_reported():
    started, release = threading.Event(), threading.Event()

    def stuck() -> str:
        started.set()
        release.wait(5)
        return "done"

    rt = Runtime().start()
    ref = rt.spawn(WorkerActor, name="stuck", shutdown_timeout=0.05)
    future = ref.ask_future(Execute(stuck))
    assert started.wait(5)
    with capture_logs() as logs:
        rt.stop()
    assert any(
        e["event"] == "garrison.supervisor.child_abandoned" and e["child"] == "stuck" for e in logs
    )
    release.set()
    assert future.get(5) == "done"
    assert ref.settle(5) is False  # stopped by now: settle answers False, never hangs


def test_worker_runs_sync_and_coroutine_operations_and_errors_are_outcomes():
    async def add_async(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail_async() -> None:
        raise LookupError("missing")

    with Runtime() as rt:
        worker = rt.spawn(WorkerActor)
        assert worker.ask(Execute(lambda a, b: a + b, args=(1, 2)), timeout=5) == 3
        assert worker.ask(Execute(add_async, args=(2, 3)), timeout=5) == 5
        with pytest.raises(ZeroDivisionError):
            worker.ask(Execute(lambda: 1 / 0), timeout=5)
        with pytest.raises(LookupError, match="missing"):
            worker.ask(Execute(fail_async), timeout=5)
        assert worker.is_alive()
        assert worker.ask(Execute(dict, kwargs={"a": 1}), timeout=5) == {"a": 1}


def test_worker_is_free_while_a_coroutine_runs():
    gate = threading.Event()

    async def wait_for_gate() -> str:
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return "opened"

    with Runtime() as rt:
        worker = rt.spawn(WorkerActor)
        slow = worker.ask_future(Execute(wait_for_gate))
        assert worker.ask(Execute(lambda: "quick"), timeout=5) == "quick"
        assert not slow.done()
        gate.set()
        assert slow.get(5) == "opened"


def test_coroutine_without_a_loop_is_a_clear_error():
    async def coro() -> int:
        return 1

    ref = WorkerActor.start()
    try:
        with pytest.raises(TypeError, match="needs an event loop"):
            ref.ask(Execute(coro), timeout=5)
    finally:
        ref.stop()


def test_coroutines_still_running_at_stop_are_cancelled():
    entered = threading.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.Event().wait()

    rt = Runtime().start()
    worker = rt.spawn(WorkerActor)
    future = worker.ask_future(Execute(forever))
    assert entered.wait(5)
    rt.stop()
    # an Exception (not asyncio's BaseException), so `except Exception` in callers sees it
    assert isinstance(future.exception(5), concurrent.futures.CancelledError)


def test_event_loop_thread_refuses_work_after_stop():
    loop = EventLoopThread()

    async def coro() -> int:
        return 7

    assert loop.submit(coro()).result(5) == 7
    loop.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        loop.submit(coro())


def test_spawned_actors_are_children_of_the_root_supervisor_and_may_be_restarted():
    class Fragile(Actor):
        def on_receive(self, message: Any) -> Any:
            if message == "boom":
                raise RuntimeError("fragile")
            return message

    with Runtime(name="rt") as rt:
        temporary = rt.spawn(Fragile, name="temporary")
        permanent = rt.spawn(Fragile, name="permanent", restart="permanent")
        with pytest.raises(RuntimeError):
            temporary.ask("boom", timeout=5)
        with pytest.raises(RuntimeError):
            permanent.ask("boom", timeout=5)
        assert permanent.ask("back", timeout=5) == "back"
        rt.supervisor.settle(5)
        assert [c["name"] for c in rt.tree()["children"]] == ["permanent"]
        assert rt.supervisor.child("permanent") is permanent
        with pytest.raises(ValueError, match="already has a child"):
            rt.spawn(Fragile, name="permanent")


def test_a_failing_root_supervisor_stops_the_runtime_with_a_logged_reason():
    class Fragile(Actor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("always")

    clock = ManualClock()
    rt = Runtime(name="fragile-rt", clock=clock, max_restarts=1, within_seconds=60).start()
    try:
        ref = rt.spawn(Fragile, restart="permanent")
        root_thread = actor_of(rt.supervisor.actor_ref)._thread
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(RuntimeError):
                    ref.ask("x", timeout=5)
                rt.supervisor.settle(5)
            root_thread.join(5)
        assert rt.state == "failed"
        assert isinstance(rt.failure, SupervisorGaveUp)
        failed = [e for e in logs if e["event"] == "garrison.runtime.root_failed"]
        assert len(failed) == 1
        assert "gave up" in failed[0]["error"]
        with pytest.raises(RuntimeError, match="failed"):
            rt.spawn(Fragile)
    finally:
        rt.stop()
    assert rt.state == "stopped"
