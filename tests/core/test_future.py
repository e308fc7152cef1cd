"""garrison.Future: exactly one outcome, callbacks, timeouts, asyncio, pykka interop."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from typing import Any

import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pykka._envelope import Envelope
from structlog.testing import capture_logs

from garrison import AskTimeout, Future, GarrisonError, Ref


class Boom(Exception):
    pass


def _raise_and_capture(error: BaseException) -> Any:
    try:
        raise error
    except BaseException:
        return sys.exc_info()


# -- exactly one outcome --------------------------------------------------------------------


def test_new_future_is_pending():
    fut: Future[int] = Future()
    assert not fut.done()
    assert repr(fut) == "<garrison.Future pending>"
    assert isinstance(fut, pykka.Future)


def test_try_set_result_first_completion_wins():
    fut: Future[int] = Future()
    assert fut.try_set_result(1) is True
    assert fut.done()
    assert fut.try_set_result(2) is False
    assert fut.try_set_exception(Boom("late")) is False
    assert fut.get() == 1
    assert fut.get(0) == 1
    assert fut.exception() is None
    assert repr(fut) == "<garrison.Future done>"


def test_try_set_exception_first_completion_wins():
    fut: Future[int] = Future()
    error = Boom("first")
    assert fut.try_set_exception(error) is True
    assert fut.try_set_exception(Boom("second")) is False
    assert fut.try_set_result(5) is False
    assert fut.exception() is error
    with pytest.raises(Boom) as info:
        fut.get()
    assert info.value is error
    assert repr(fut) == "<garrison.Future failed>"


def test_a_none_result_is_a_result():
    fut: Future[None] = Future()
    assert fut.try_set_result(None) is True
    assert fut.done()
    assert fut.try_set_result(None) is False
    assert fut.get() is None


def test_pykka_set_completes_and_second_completion_is_ignored():
    fut: Future[str] = Future()
    fut.set("a")
    fut.set("b")
    fut.set_exception(Boom("ignored"))
    assert fut.get() == "a"
    assert fut.exception() is None


def test_pykka_set_without_value_completes_with_none():
    fut: Future[Any] = Future()
    fut.set()
    assert fut.done()
    assert fut.get() is None


def test_set_exception_with_an_exc_info_triple():
    fut: Future[int] = Future()
    error = Boom("triple")
    fut.set_exception(_raise_and_capture(error))
    assert fut.exception() is error
    with pytest.raises(Boom, match="triple"):
        fut.get()


def test_set_exception_with_an_instance():
    fut: Future[int] = Future()
    error = KeyError("instance")
    fut.set_exception(error)
    assert fut.exception() is error


def test_set_exception_without_argument_takes_the_current_exception():
    fut: Future[int] = Future()
    try:
        raise Boom("current")
    except Boom as error:
        caught = error
        fut.set_exception()
    assert fut.exception() is caught


def test_set_exception_with_a_type_only_triple_builds_the_error():
    fut: Future[int] = Future()
    fut.set_exception((Boom, None, None))
    assert type(fut.exception()) is Boom


def test_set_exception_with_nothing_to_report_is_a_runtime_error():
    fut: Future[int] = Future()
    fut.set_exception()  # called outside an except block
    error = fut.exception()
    assert isinstance(error, RuntimeError)
    assert "no exception" in str(error)


def test_set_exception_after_set_exception_is_ignored():
    fut: Future[int] = Future()
    first = Boom("first")
    fut.set_exception(first)
    fut.set_exception(_raise_and_capture(Boom("second")))
    fut.set(3)
    assert fut.exception() is first


def test_get_raises_the_held_error_every_time():
    fut: Future[int] = Future()
    error = Boom("held")
    fut.try_set_exception(error)
    for _ in range(3):
        with pytest.raises(Boom) as info:
            fut.get(timeout=1)
        assert info.value is error


def test_repeated_get_does_not_grow_the_errors_traceback():
    fut: Future[int] = Future()
    fut.try_set_exception(Boom("held"))
    lengths = []
    for _ in range(3):
        try:
            fut.get()
        except Boom as error:
            lengths.append(len(traceback.extract_tb(error.__traceback__)))
    assert lengths[0] == lengths[1] == lengths[2]


def test_set_get_hook_is_not_supported():
    fut: Future[int] = Future()
    with pytest.raises(NotImplementedError):
        fut.set_get_hook(lambda timeout: 1)


Completion = tuple[str, int]

_completion = st.tuples(
    st.sampled_from(["try_set_result", "try_set_exception", "set", "set_exception"]),
    st.integers(min_value=0, max_value=1000),
)


def _apply(fut: Future[int], how: str, value: int) -> bool | None:
    if how == "try_set_result":
        return fut.try_set_result(value)
    if how == "try_set_exception":
        return fut.try_set_exception(Boom(value))
    if how == "set":
        fut.set(value)
        return None
    fut.set_exception(_raise_and_capture(Boom(value)))
    return None


@given(st.lists(_completion, min_size=1, max_size=20))
def test_exactly_one_outcome_whatever_the_order_of_completions(completions: list[Completion]):
    fut: Future[int] = Future()
    calls: list[Future[int]] = []
    fut.add_done_callback(calls.append)
    for index, (how, value) in enumerate(completions):
        returned = _apply(fut, how, value)
        if how.startswith("try_"):
            assert returned is (index == 0)
        assert fut.done()
    assert calls == [fut]
    first_how, first_value = completions[0]
    if first_how in ("try_set_result", "set"):
        assert fut.get(0) == first_value
        assert fut.exception(0) is None
    else:
        error = fut.exception(0)
        assert type(error) is Boom
        assert error.args == (first_value,)


def test_racing_completers_from_many_threads_exactly_one_wins():
    threads_per_round = 12
    lock = threading.Lock()
    for _ in range(10):
        fut: Future[int] = Future()
        calls: list[Future[int]] = []
        fut.add_done_callback(calls.append)
        barrier = threading.Barrier(threads_per_round)
        won: list[int] = []

        def complete(
            i: int,
            fut: Future[int] = fut,
            barrier: threading.Barrier = barrier,
            won: list[int] = won,
        ) -> None:
            barrier.wait(5)
            ok = fut.try_set_result(i) if i % 2 == 0 else fut.try_set_exception(Boom(i))
            if ok:
                with lock:
                    won.append(i)

        threads = [threading.Thread(target=complete, args=(i,)) for i in range(threads_per_round)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads)
        assert len(won) == 1
        assert calls == [fut]
        winner = won[0]
        if winner % 2 == 0:
            assert fut.get(0) == winner
        else:
            error = fut.exception(0)
            assert isinstance(error, Boom)
            assert error.args == (winner,)


# -- waiting --------------------------------------------------------------------------------


def test_get_timeout_raises_ask_timeout_and_the_future_completes_later():
    fut: Future[str] = Future()
    with pytest.raises(AskTimeout) as info:
        fut.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, GarrisonError)
    assert info.value.timeout == 0.01
    assert str(info.value) == "no reply within 0.010s"
    assert not fut.done()
    assert fut.try_set_result("late") is True
    assert fut.get(timeout=0.01) == "late"


def test_get_with_zero_timeout_does_not_wait():
    fut: Future[str] = Future()
    with pytest.raises(AskTimeout) as info:
        fut.get(0)
    assert info.value.timeout == 0
    fut.set("now")
    assert fut.get(0) == "now"


def test_exception_waits_like_get():
    fut: Future[int] = Future()
    with pytest.raises(AskTimeout):
        fut.exception(timeout=0)
    fut.try_set_result(3)
    assert fut.exception(timeout=0) is None
    failed: Future[int] = Future()
    error = Boom("x")
    failed.try_set_exception(error)
    assert failed.exception() is error


def test_get_blocks_until_another_thread_completes():
    fut: Future[int] = Future()
    waiting = threading.Event()
    results: list[Any] = []

    def wait_for_it() -> None:
        waiting.set()
        results.append(fut.get(timeout=5))

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    assert waiting.wait(5)
    assert fut.try_set_result(99)
    thread.join(5)
    assert not thread.is_alive()
    assert results == [99]


def test_many_waiters_all_get_the_outcome():
    fut: Future[int] = Future()
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    ready = threading.Barrier(6)

    def wait_for_it() -> None:
        ready.wait(5)
        try:
            value = fut.get(timeout=5)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=wait_for_it) for _ in range(5)]
    for thread in threads:
        thread.start()
    ready.wait(5)
    fut.set(7)
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert results == [7] * 5


def test_pykka_get_all_works_with_garrison_futures():
    a: Future[int] = Future()
    b: Future[int] = Future()
    a.set(1)
    b.set(2)
    assert pykka.get_all([a, b], timeout=1) == [1, 2]


# -- callbacks ------------------------------------------------------------------------------


def test_callbacks_added_before_completion_run_once_in_order():
    fut: Future[int] = Future()
    calls: list[tuple[str, Future[int]]] = []
    fut.add_done_callback(lambda f: calls.append(("first", f)))
    fut.add_done_callback(lambda f: calls.append(("second", f)))
    assert calls == []
    fut.set(1)
    assert calls == [("first", fut), ("second", fut)]
    fut.set(2)
    fut.try_set_exception(Boom())
    assert calls == [("first", fut), ("second", fut)]


def test_callback_added_after_completion_runs_at_once_in_the_caller():
    fut: Future[int] = Future()
    fut.set(1)
    seen: list[tuple[Future[int], threading.Thread]] = []
    fut.add_done_callback(lambda f: seen.append((f, threading.current_thread())))
    assert seen == [(fut, threading.current_thread())]
    fut.set(2)
    assert len(seen) == 1


def test_callbacks_see_the_outcome():
    fut: Future[int] = Future()
    seen: list[Any] = []
    fut.add_done_callback(lambda f: seen.append((f.done(), f.get(0))))
    fut.set(42)
    assert seen == [(True, 42)]


def test_callbacks_run_in_the_completing_thread():
    fut: Future[int] = Future()
    threads: list[threading.Thread] = []
    fut.add_done_callback(lambda f: threads.append(threading.current_thread()))
    completer = threading.Thread(target=fut.set, args=(5,), name="completer")
    completer.start()
    completer.join(5)
    assert not completer.is_alive()
    assert threads == [completer]


def test_a_failing_callback_is_logged_and_does_not_break_completion():
    fut: Future[int] = Future()
    calls: list[str] = []

    def bad(_: Future[int]) -> None:
        calls.append("bad")
        raise ValueError("callback bug")

    fut.add_done_callback(bad)
    fut.add_done_callback(lambda f: calls.append("good"))
    with capture_logs() as logs:
        assert fut.try_set_result(1) is True
    assert calls == ["bad", "good"]
    assert fut.get(0) == 1
    assert len(logs) == 1
    entry = logs[0]
    assert entry["event"] == "garrison.future.callback_failed"
    assert entry["log_level"] == "error"
    assert entry["error"] == "ValueError: callback bug"
    assert entry["callback"] == repr(bad)


def test_a_failing_callback_added_after_completion_is_logged_not_raised():
    fut: Future[int] = Future()
    fut.set(1)

    def bad(_: Future[int]) -> None:
        raise RuntimeError("late bug")

    with capture_logs() as logs:
        fut.add_done_callback(bad)  # must not raise
    assert [(e["event"], e["error"]) for e in logs] == [
        ("garrison.future.callback_failed", "RuntimeError: late bug")
    ]


def test_a_callback_may_add_another_callback():
    fut: Future[int] = Future()
    calls: list[str] = []

    def outer(f: Future[int]) -> None:
        calls.append("outer")
        f.add_done_callback(lambda _: calls.append("inner"))

    fut.add_done_callback(outer)
    fut.set(1)
    assert calls == ["outer", "inner"]


# -- asyncio --------------------------------------------------------------------------------


def test_await_does_not_block_the_event_loop():
    fut: Future[int] = Future()
    release = threading.Event()
    ticks_needed = 50

    def completer() -> None:
        # Complete only once the loop has proved it keeps running while awaited.
        if release.wait(5):
            fut.set(42)
        else:
            fut.set_exception(AssertionError("the event loop was blocked"))

    async def main() -> tuple[int, int, int]:
        ticks = 0
        ticks_at_release = -1

        async def ticker() -> None:
            nonlocal ticks, ticks_at_release
            while True:
                ticks += 1
                if ticks == ticks_needed:
                    ticks_at_release = ticks
                    release.set()
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        try:
            value = await fut
        finally:
            ticking.cancel()
        return value, ticks_at_release, ticks

    thread = threading.Thread(target=completer)
    thread.start()
    try:
        value, ticks_at_release, ticks = asyncio.run(main())
    finally:
        release.set()
        thread.join(5)
    assert value == 42
    assert ticks_at_release == ticks_needed
    assert ticks >= ticks_needed


def test_await_raises_the_held_error():
    fut: Future[int] = Future()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(fut.try_set_exception, Boom("async"))
        await fut

    with pytest.raises(Boom, match="async"):
        asyncio.run(main())


def test_awaiting_an_already_done_future_returns_without_suspending():
    fut: Future[str] = Future()
    fut.set("ready")
    waiting = fut.__await__()
    with pytest.raises(StopIteration) as info:
        next(waiting)
    assert info.value.value == "ready"

    async def main() -> str:
        return await fut

    assert asyncio.run(main()) == "ready"


def test_awaiting_an_already_failed_future_raises_at_once():
    fut: Future[str] = Future()
    fut.try_set_exception(Boom("done already"))
    with pytest.raises(Boom, match="done already"):
        next(fut.__await__())


def test_several_tasks_await_the_same_future():
    fut: Future[int] = Future()

    async def main() -> list[int]:
        async def wait() -> int:
            return await fut

        tasks = [asyncio.create_task(wait()) for _ in range(3)]
        await asyncio.sleep(0)  # let every task start awaiting
        completer.start()
        return list(await asyncio.gather(*tasks))

    completer = threading.Thread(target=fut.set, args=(8,))
    try:
        assert asyncio.run(main()) == [8, 8, 8]
    finally:
        completer.join(5)


def test_future_works_with_asyncio_wait_for():
    fut: Future[int] = Future()

    async def main() -> int:
        asyncio.get_running_loop().call_soon(fut.set, 11)
        return await asyncio.wait_for(fut, timeout=5)

    assert asyncio.run(main()) == 11


def test_completing_after_a_cancelled_await_logs_nothing():
    fut: Future[int] = Future()

    async def main() -> None:
        async def wait() -> int:
            return await fut

        task = asyncio.create_task(wait())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    with capture_logs() as logs:
        assert fut.try_set_result(1) is True
    assert logs == []


# -- pykka interop --------------------------------------------------------------------------


class PlainActor(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        if message == "fail":
            raise Boom("plain actor failed")
        return ("echo", message)


@pytest.fixture
def plain_actor() -> Any:
    ref = PlainActor.start()
    yield ref
    ref.stop(timeout=5)


def test_plain_pykka_actor_answers_a_garrison_future_with_a_value(plain_actor: Any):
    fut: Future[Any] = Future()
    plain_actor.actor_inbox.put(Envelope("hello", reply_to=fut))
    assert fut.get(timeout=5) == ("echo", "hello")


def test_plain_pykka_actor_answers_a_garrison_future_with_an_error(plain_actor: Any):
    fut: Future[Any] = Future()
    plain_actor.actor_inbox.put(Envelope("fail", reply_to=fut))
    with pytest.raises(Boom, match="plain actor failed"):
        fut.get(timeout=5)
    assert isinstance(fut.exception(0), Boom)
    # the plain actor keeps running after an ask fails (pykka semantics)
    again: Future[Any] = Future()
    plain_actor.actor_inbox.put(Envelope(1, reply_to=again))
    assert again.get(timeout=5) == ("echo", 1)


def test_ref_to_a_plain_pykka_actor_uses_garrison_futures(plain_actor: Any):
    ref = Ref(plain_actor)
    fut = ref.ask_future("hi")
    assert isinstance(fut, Future)
    assert fut.get(timeout=5) == ("echo", "hi")
    assert ref.ask("there", timeout=5) == ("echo", "there")
    with pytest.raises(Boom, match="plain actor failed"):
        ref.ask("fail", timeout=5)


def test_callbacks_run_before_a_waiting_caller_wakes():
    future: Future[int] = Future()
    woke = threading.Event()
    seen_awake: list[bool] = []

    def waiter() -> None:
        future.get(5)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    for _ in range(5000):  # until the waiter is blocked on the outcome (at most 5 s)
        if future._waiter is not None:
            break
        thread.join(0.001)
    # The callback gives the woken caller every chance to run; it must not have been woken.
    future.add_done_callback(lambda _: seen_awake.append(woke.wait(0.1)))
    future.set(1)
    thread.join(5)
    assert seen_awake == [False]
    assert woke.is_set()


class _Interrupt(BaseException):
    pass


def test_a_callback_raising_a_base_exception_still_wakes_the_waiting_caller() -> None:
    future: Future[int] = Future()
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(future.get(5.0)))
    waiting.start()

    def interrupt(_done: Future[int]) -> None:
        raise _Interrupt

    future.add_done_callback(interrupt)
    for _ in range(5000):  # until the caller is blocked in get() (bounded)
        if future._waiter is not None:
            break
        threading.Event().wait(0.001)
    with pytest.raises(_Interrupt):  # the completing thread gets it, as from any callback
        future.try_set_result(7)
    waiting.join(5.0)
    assert got == [7]
