"""Ref: ask, tell, forward, deferred replies, and no message left without an outcome."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from garrison import Actor, ActorUnavailable, AskTimeout, DeadLetters, Future, Ref, Runtime


class Echo(Actor):
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message and message[0] == "boom":
            raise RuntimeError(message[1])
        if isinstance(message, tuple) and message and message[0] == "block":
            message[1].set()
            assert message[2].wait(5)
            return "unblocked"
        return message


class Later(Actor):
    """Answers each ask later, from another actor (a deferred reply)."""

    def __init__(self, helper: Ref) -> None:
        super().__init__()
        self.helper = helper

    def on_receive(self, message: Any) -> Any:
        self.helper.forward(("double", message), self.defer())


class Doubler(Actor):
    def on_receive(self, message: Any) -> Any:
        _, value = message
        return value * 2


class Collector(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "seen":
            return list(self.seen)
        self.seen.append(message)
        return None


class PlainEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return ("plain", message)


@pytest.fixture
def rt():
    with Runtime(name="test") as runtime:
        yield runtime


def test_ask_returns_the_reply(rt):
    ref = rt.spawn(Echo, name="echo")
    assert ref.ask("hello", timeout=5) == "hello"
    assert ref.name == "echo"
    assert ref.is_alive()


def test_ask_future_and_done(rt):
    ref = rt.spawn(Echo)
    future = ref.ask_future(41)
    assert isinstance(future, Future)
    assert future.get(5) == 41
    assert future.done()


def test_tell_is_delivered_in_order(rt):
    ref = rt.spawn(Collector)
    for i in range(100):
        ref.tell(i)
    assert ref.ask("seen", timeout=5) == list(range(100))


def test_deferred_reply_answered_by_another_actor(rt):
    doubler = rt.spawn(Doubler)
    later = rt.spawn(Later, doubler)
    futures = [later.ask_future(i) for i in range(50)]
    assert [f.get(5) for f in futures] == [i * 2 for i in range(50)]


def test_ask_timeout_leaves_the_message_delivered(rt):
    ref = rt.spawn(Echo)
    started, release = threading.Event(), threading.Event()
    blocked = ref.ask_future(("block", started, release))
    assert started.wait(5)
    with pytest.raises(AskTimeout):
        ref.ask("after", timeout=0.01)
    release.set()
    assert blocked.get(5) == "unblocked"


def test_crash_in_ask_gives_the_asker_the_error_and_answers_the_queue(rt):
    ref = rt.spawn(Echo, name="fragile")
    started, release = threading.Event(), threading.Event()
    first = ref.ask_future(("block", started, release))
    assert started.wait(5)
    crashing = ref.ask_future(("boom", "kaput"))
    queued = [ref.ask_future(i) for i in range(10)]
    release.set()
    assert first.get(5) == "unblocked"
    with pytest.raises(RuntimeError, match="kaput"):
        crashing.get(5)
    for future in queued:
        with pytest.raises(ActorUnavailable) as info:
            future.get(5)
        assert info.value.actor == "test/fragile"
    assert not ref.is_alive()


def test_crash_in_tell_goes_to_dead_letters(rt):
    ref = rt.spawn(Echo, name="fragile")
    ref.tell(("boom", "in a tell"))
    queued_tell = "never handled"
    ref.tell(queued_tell)
    with pytest.raises(ActorUnavailable):
        ref.ask("after the crash", timeout=5)
    letters = rt.dead_letters.recent()
    reasons = {
        (letter.message if isinstance(letter.message, str) else "crash"): letter.reason
        for letter in letters
    }
    assert reasons["crash"] == "its handler crashed"
    assert reasons[queued_tell] in {"the actor has stopped"}


def test_base_exception_crashes_only_that_actor(rt):
    class Exiter(Actor):
        def on_receive(self, message: Any) -> Any:
            raise SystemExit("leaving")

    bystander = rt.spawn(Echo)
    exiter = rt.spawn(Exiter)
    with pytest.raises(SystemExit):
        exiter.ask("go", timeout=5)
    assert not exiter.is_alive()
    assert bystander.is_alive()
    assert bystander.ask("still here", timeout=5) == "still here"


def test_failing_on_start_is_a_crash_and_messages_are_answered(rt):
    class BadStart(Actor):
        def on_start(self) -> None:
            raise RuntimeError("cannot start")

    ref = rt.spawn(BadStart, name="bad-start")
    with pytest.raises(ActorUnavailable):
        ref.ask("anyone?", timeout=5)


def test_unhandled_message_type_gets_a_type_error_and_the_actor_lives(rt):
    ref = rt.spawn(Actor, name="base")
    with pytest.raises(TypeError, match="does not handle int messages"):
        ref.ask(3, timeout=5)
    assert ref.is_alive()


def test_messages_to_a_stopped_actor_get_outcomes(rt):
    ref = rt.spawn(Echo, name="gone")
    assert ref.stop(5)
    with pytest.raises(ActorUnavailable, match="gone"):
        ref.ask("hello", timeout=5)
    before = rt.dead_letters.count
    ref.tell("lost?")
    assert rt.dead_letters.count == before + 1
    assert rt.dead_letters.recent()[-1].message == "lost?"


def _hammer(ref: Ref, go: threading.Event, sink: list[Future[Any]], lock: threading.Lock) -> None:
    go.wait(5)
    for i in range(200):
        future = ref.ask_future(i)
        ref.tell(i)
        with lock:
            sink.append(future)


def test_stop_race_every_ask_gets_exactly_one_outcome():
    """pykka never answers a message put into an inbox after its final drain; garrison does."""
    dead_letters = DeadLetters()
    for _round in range(20):
        futures: list[Future[Any]] = []
        with Runtime(dead_letters=dead_letters) as rt:
            ref = rt.spawn(Echo)
            go, lock = threading.Event(), threading.Lock()
            threads = [
                threading.Thread(target=_hammer, args=(ref, go, futures, lock)) for _ in range(3)
            ]
            for thread in threads:
                thread.start()
            go.set()
            ref.stop(5)
            for thread in threads:
                thread.join(5)
        for future in futures:
            try:
                value = future.get(timeout=5)
            except ActorUnavailable:
                continue
            assert isinstance(value, int)
        assert len(futures) == 600


def test_ref_works_with_plain_pykka_actors():
    actor_ref = PlainEcho.start()
    ref = Ref(actor_ref)
    try:
        assert ref.ask("x", timeout=5) == ("plain", "x")
        assert ref.name == "PlainEcho"
    finally:
        assert ref.stop(5)
    with pytest.raises(ActorUnavailable):
        ref.ask("after stop", timeout=5)


def test_settle_waits_for_queued_messages(rt):
    ref = rt.spawn(Collector)
    for i in range(10):
        ref.tell(i)
    assert ref.settle(5)
    assert ref.ask("seen", timeout=5) == list(range(10))


def test_settle_refuses_from_the_actors_own_thread(rt):
    results: list[bool] = []

    class SelfSettler(Actor):
        def on_receive(self, message: Any) -> Any:
            results.append(message.settle(0.5))
            return None

    ref = rt.spawn(SelfSettler)
    ref.ask(ref, timeout=5)
    assert results == [False]


def test_repoint_sends_to_the_new_incarnation(rt):
    old = rt.spawn(Echo, name="one")
    new = rt.spawn(Doubler, name="two")
    ref = Ref(old.actor_ref, name="stable")
    ref.repoint(new.actor_ref)
    assert ref.ask(("x", 4), timeout=5) == 8
    assert ref.name == "stable"


def test_pykka_ask_on_a_garrison_actor_still_works(rt):
    ref = rt.spawn(Later, rt.spawn(Doubler))
    assert ref.actor_ref.ask(5, timeout=5) == 10
