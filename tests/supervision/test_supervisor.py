"""Supervisor semantics: strategies, restart types, intensity, escalation, backoff, shutdown."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope
from structlog.testing import capture_logs

from garrison import (
    Actor,
    ActorUnavailable,
    ConfigError,
    DeadLetters,
    Execute,
    OperationFailed,
    Ref,
)
from garrison._actor import SafeLoop
from garrison._mailbox import Mailbox
from garrison._ref import actor_of
from garrison.supervision import (
    ChildSpec,
    Restart,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    SupervisorRef,
)
from garrison.supervision._supervisor import _ChildExited
from garrison.testing import ManualClock

# -- test actors ------------------------------------------------------------------------------

LOG: list[tuple[str, str]] = []
LOG_LOCK = threading.Lock()


def log(kind: str, label: str) -> None:
    with LOG_LOCK:
        LOG.append((kind, label))


@pytest.fixture(autouse=True)
def clear_log() -> Iterator[None]:
    LOG.clear()
    yield
    LOG.clear()


class Counter(pykka.ThreadingActor):
    """A plain pykka actor (the user's own): counts messages, crashes on "boom"."""

    def __init__(self, label: str = "counter") -> None:
        super().__init__()
        self.label = label
        self.count = 0

    def on_start(self) -> None:
        log("start", self.label)

    def on_stop(self) -> None:
        log("stop", self.label)

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.label} crashed")
        if message == "exit":
            self.stop()
            return None
        if isinstance(message, tuple) and message[0] == "block":
            message[1].set()
            assert message[2].wait(5)
            return "released"
        self.count += 1
        return (self.label, self.count, message)


class Keeper(Actor):
    """A garrison actor that keeps its count across restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("keeper crashed")
        self.count += 1
        return self.count

    def snapshot(self) -> int:
        return self.count

    def restore(self, state: int) -> None:
        self.count = state


class FailsToStart(pykka.ThreadingActor):
    def on_start(self) -> None:
        raise RuntimeError("no start for me")


class Exploding(pykka.ThreadingActor):
    def __init__(self) -> None:
        raise ValueError("constructor failed")


class Sink(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "received":
            return list(self.received)
        self.received.append(message)
        return None


@pytest.fixture
def start() -> Iterator[Any]:
    """Start supervisors that are stopped after the test whatever happens."""
    started: list[SupervisorRef] = []

    def _start(name: str = "root", **kwargs: Any) -> SupervisorRef:
        sup = Supervisor.start(name, **kwargs)
        started.append(sup)
        return sup

    yield _start
    for sup in reversed(started):
        sup.stop(10)


def join_incarnation(ref: Ref) -> Any:
    """A function that waits (bounded) for the current incarnation behind ``ref`` to end."""
    actor = actor_of(ref.actor_ref)
    thread = actor._thread if isinstance(actor, SafeLoop) else None

    def join() -> None:
        if thread is None:  # that incarnation has already ended and is gone
            return
        thread.join(5)
        assert not thread.is_alive()

    return join


def exit_normally(sup: SupervisorRef, ref: Ref) -> None:
    """Make the child stop itself and wait until its supervisor has handled that."""
    join = join_incarnation(ref)
    ref.tell("exit")
    join()
    assert sup.settle(5)


def specs(*labels: str, **options: Any) -> list[ChildSpec]:
    return [ChildSpec(label, Counter, kwargs={"label": label}, **options) for label in labels]


# -- strategies -------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_crashed_child_and_its_ref_keeps_working(start):
    sup = start(children=specs("a", "b"))
    a, b = sup.child("a"), sup.child("b")
    assert a.ask("x", 5) == ("a", 1, "x")
    assert b.ask("x", 5) == ("b", 1, "x")
    with pytest.raises(RuntimeError, match="a crashed"):
        a.ask("boom", 5)
    assert a.ask("y", 5) == ("a", 1, "y")  # a new incarnation, reached by the same Ref
    assert b.ask("y", 5) == ("b", 2, "y")  # untouched
    assert sup.child("a") is a
    tree = sup.tree()
    assert tree["restarts"] == 1
    assert [(c["name"], c["restarts"], c["state"]) for c in tree["children"]] == [
        ("a", 1, "running"),
        ("b", 0, "running"),
    ]


def test_one_for_all_restarts_every_child(start):
    sup = start(strategy=Strategy.ONE_FOR_ALL, children=specs("a", "b", "c"))
    refs = [sup.child(n) for n in "abc"]
    for ref in refs:
        ref.ask("x", 5)
    with pytest.raises(RuntimeError):
        refs[1].ask("boom", 5)
    sup.settle(5)  # the supervisor has handled the crash: the siblings were restarted
    assert [ref.ask("y", 5)[1] for ref in refs] == [1, 1, 1]
    starts = [label for kind, label in LOG if kind == "start"]
    assert starts == ["a", "b", "c", "a", "b", "c"]
    # the others were stopped newest first before the restart
    assert [label for kind, label in LOG if kind == "stop"] == ["c", "a"]


def test_rest_for_one_restarts_the_crashed_child_and_those_after_it(start):
    sup = start(strategy="rest_for_one", children=specs("a", "b", "c"))
    refs = [sup.child(n) for n in "abc"]
    for ref in refs:
        ref.ask("x", 5)
    with pytest.raises(RuntimeError):
        refs[1].ask("boom", 5)
    sup.settle(5)
    assert [ref.ask("y", 5)[1] for ref in refs] == [2, 1, 1]
    assert [label for kind, label in LOG if kind == "start"] == ["a", "b", "c", "b", "c"]


# -- restart types ----------------------------------------------------------------------------


def test_permanent_child_is_restarted_after_a_normal_stop(start):
    sup = start(children=specs("a"))
    a = sup.child("a")
    exit_normally(sup, a)
    assert a.ask("after", 5) == ("a", 1, "after")
    assert sup.tree()["children"][0]["restarts"] == 1


def test_transient_child_is_restarted_after_a_crash_but_not_after_a_normal_stop(start):
    sup = start(children=specs("t", restart=Restart.TRANSIENT))
    t = sup.child("t")
    with pytest.raises(RuntimeError):
        t.ask("boom", 5)
    assert t.ask("x", 5) == ("t", 1, "x")
    exit_normally(sup, t)
    with pytest.raises(ActorUnavailable):
        t.ask("after exit", 5)
    assert sup.tree()["children"][0]["state"] == "stopped"


def test_temporary_child_is_never_restarted_and_leaves_the_tree(start):
    sup = start(children=specs("tmp", restart="temporary") + specs("other"))
    tmp = sup.child("tmp")
    started, release = threading.Event(), threading.Event()
    blocked = tmp.ask_future(("block", started, release))
    assert started.wait(5)
    crashing = tmp.ask_future("boom")
    queued = [tmp.ask_future(i) for i in range(3)]
    release.set()
    assert blocked.get(5) == "released"
    with pytest.raises(RuntimeError):
        crashing.get(5)
    for future in queued:
        with pytest.raises(ActorUnavailable):
            future.get(5)
    sup.child("other").ask("sync", 5)
    assert [c["name"] for c in sup.tree()["children"]] == ["other"]
    with pytest.raises(LookupError):
        sup.child("tmp")


# -- crash detection --------------------------------------------------------------------------


def test_a_crash_in_a_tell_is_detected_and_the_told_message_is_a_dead_letter(start):
    dead = DeadLetters()
    sup = start(children=specs("a"), dead_letters=dead)
    a = sup.child("a")
    a.tell("boom")
    assert a.ask("x", 5) == ("a", 1, "x")
    assert [(d.message, d.reason) for d in dead.recent()] == [("boom", "its handler crashed")]


def test_a_failing_on_start_is_a_crash_that_is_restarted_until_the_supervisor_gives_up(start):
    clock = ManualClock()
    with capture_logs() as logs:
        sup = start(
            children=[ChildSpec("bad", FailsToStart)],
            max_restarts=2,
            within_seconds=10,
            clock=clock,
        )
        # the child keeps failing in on_start: two restarts, then the supervisor gives up
        join_incarnation(sup)()
        with pytest.raises(ActorUnavailable):
            sup.ask("anything", 5)
    events = [e["event"] for e in logs]
    assert events.count("garrison.supervisor.restarted") == 2
    assert "garrison.supervisor.gave_up" in events


def test_base_exception_in_a_child_stops_only_that_child(start):
    class Exiter(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            raise SystemExit("bye")

    sup = start(children=[ChildSpec("exiter", Exiter), *specs("bystander")])
    with pytest.raises(SystemExit):
        sup.child("exiter").ask("go", 5)
    assert sup.child("bystander").ask("x", 5) == ("bystander", 1, "x")
    assert sup.child("exiter").is_alive() or sup.tree()["children"][0]["restarts"] == 1


def test_restart_keeps_the_mailbox_only_the_crashing_message_fails(start):
    sup = start(children=specs("a"))
    a = sup.child("a")
    started, release = threading.Event(), threading.Event()
    blocked = a.ask_future(("block", started, release))
    assert started.wait(5)
    crashing = a.ask_future("boom")
    queued = [a.ask_future(i) for i in range(20)]
    release.set()
    assert blocked.get(5) == "released"
    with pytest.raises(RuntimeError):
        crashing.get(5)
    assert [f.get(5) for f in queued] == [("a", i + 1, i) for i in range(20)]


def test_snapshot_and_restore_keep_state_across_a_restart(start):
    sup = start(children=[ChildSpec("k", Keeper)])
    k = sup.child("k")
    assert [k.ask("inc", 5) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RuntimeError):
        k.ask("boom", 5)
    assert k.ask("inc", 5) == 4


# -- intensity and escalation -----------------------------------------------------------------


def test_more_than_max_restarts_within_the_window_makes_the_supervisor_give_up(start):
    clock = ManualClock()
    sup = start(children=specs("a", "b"), max_restarts=2, within_seconds=10, clock=clock)
    a, b = sup.child("a"), sup.child("b")
    for _ in range(2):
        with pytest.raises(RuntimeError):
            a.ask("boom", 5)
        assert sup.settle(5)
        clock.advance(1)
    assert a.ask("x", 5)[0] == "a"
    supervisor_ended = join_incarnation(sup)
    with capture_logs() as logs:
        with pytest.raises(RuntimeError):
            a.ask("boom", 5)
        supervisor_ended()
    with pytest.raises(ActorUnavailable):
        b.ask("x", 5)
    assert not sup.is_alive()
    gave_up = [e for e in logs if e["event"] == "garrison.supervisor.gave_up"]
    assert len(gave_up) == 1
    assert gave_up[0]["max_restarts"] == 2


def test_restarts_outside_the_window_do_not_add_up(start):
    clock = ManualClock()
    sup = start(children=specs("a"), max_restarts=1, within_seconds=5, clock=clock)
    a = sup.child("a")
    for _ in range(5):
        with pytest.raises(RuntimeError):
            a.ask("boom", 5)
        assert sup.settle(5)  # the supervisor counted the restart at this time
        clock.advance(5.0)
    assert a.ask("x", 5) == ("a", 1, "x")
    assert sup.tree()["restarts"] == 5


def test_escalation_through_three_levels(start):
    clock = ManualClock()
    leaf = ChildSpec("leaf", Counter, kwargs={"label": "leaf"})
    middle = ChildSpec(
        "middle", Supervisor, kwargs={"children": [leaf], "max_restarts": 0, "within_seconds": 10}
    )
    top = ChildSpec(
        "top", Supervisor, kwargs={"children": [middle], "max_restarts": 1, "within_seconds": 10}
    )
    root = start(children=[top], max_restarts=5, within_seconds=10, clock=clock)
    leaf_ref = root.child("top/middle/leaf")
    top_ref, middle_ref = root.child("top"), root.child("top/middle")
    assert leaf_ref.ask("x", 5) == ("leaf", 1, "x")

    middle_ended = join_incarnation(middle_ref)
    with capture_logs() as logs:
        with pytest.raises(RuntimeError):
            leaf_ref.ask("boom", 5)  # middle gives up at once; top restarts middle
        middle_ended()
        assert top_ref.settle(5)  # top has restarted middle ...
        assert middle_ref.settle(5)  # ... and middle has started a fresh leaf
    assert leaf_ref.ask("y", 5) == ("leaf", 1, "y")  # the same Ref reaches the fresh leaf
    assert root.child("top/middle/leaf") is leaf_ref
    events = [(e["event"], e.get("supervisor")) for e in logs]
    assert ("garrison.supervisor.gave_up", "root/top/middle") in events
    assert ("garrison.supervisor.escalated", "root/top") in events

    top_ended = join_incarnation(top_ref)
    with capture_logs() as logs:
        with pytest.raises(RuntimeError):
            leaf_ref.ask("boom", 5)  # middle gives up again; top has used its one restart
        top_ended()
        assert root.settle(5)
        assert top_ref.settle(5)
        assert middle_ref.settle(5)
    events = [(e["event"], e.get("supervisor")) for e in logs]
    assert ("garrison.supervisor.gave_up", "root/top") in events
    assert ("garrison.supervisor.escalated", "root") in events
    assert leaf_ref.ask("z", 5) == ("leaf", 1, "z")  # root restarted top, which built it all
    assert root.tree()["children"][0]["restarts"] == 1


def test_supervisor_gave_up_error_names_the_supervisor():
    error = SupervisorGaveUp("root/top", 3, 5.0, RuntimeError("x"))
    assert "root/top" in str(error)
    assert "more than 3 restarts within 5s" in str(error)


# -- backoff ----------------------------------------------------------------------------------


def test_restart_backoff_delays_restarts_on_the_injected_clock(start):
    clock = ManualClock()
    sup = start(
        children=specs("a"),
        restart_backoff=(1.0, 4.0),
        max_restarts=100,
        within_seconds=1000,
        backoff_reset_after=100,
        clock=clock,
        seed=7,
    )
    a = sup.child("a")
    delays = []
    for _ in range(4):
        with capture_logs() as logs:
            with pytest.raises(RuntimeError):
                a.ask("boom", 5)
            assert sup.settle(5)
        scheduled = [e for e in logs if e["event"] == "garrison.supervisor.restart_scheduled"]
        assert len(scheduled) == 1
        delay = scheduled[0]["delay"]
        delays.append(delay)
        waiting = a.ask_future("during the delay")
        clock.advance(delay * 0.99)
        assert not waiting.done()
        assert not a.is_alive()
        clock.advance(delay * 0.02)
        assert waiting.get(5) == ("a", 1, "during the delay")
    assert 1.0 <= delays[0] <= 1.2
    assert 2.0 <= delays[1] <= 2.4
    assert delays[2] == pytest.approx(4.0) or 4.0 >= delays[2] >= 3.99
    assert delays[3] <= 4.0
    # a quiet period resets the backoff
    clock.advance(100)
    with capture_logs() as logs:
        with pytest.raises(RuntimeError):
            a.ask("boom", 5)
        assert sup.settle(5)
    delay = next(e["delay"] for e in logs if e["event"] == "garrison.supervisor.restart_scheduled")
    assert 1.0 <= delay <= 1.2
    clock.advance(delay)


def test_messages_past_the_restart_buffer_fail_with_actor_unavailable(start):
    clock = ManualClock()
    sup = start(
        children=specs("a", restart_buffer=3),
        restart_backoff=(1.0, 1.0),
        clock=clock,
    )
    a = sup.child("a")
    with pytest.raises(RuntimeError):
        a.ask("boom", 5)
    sup.settle(5)
    buffered = [a.ask_future(i) for i in range(3)]
    with pytest.raises(ActorUnavailable, match="restart buffer is full"):
        a.ask("one too many", 5)
    clock.advance(1.5)
    assert [f.get(5)[2] for f in buffered] == [0, 1, 2]


# -- shutdown and tree changes ----------------------------------------------------------------


def test_children_stop_in_reverse_start_order():
    sup = Supervisor.start("root", children=specs("a", "b", "c"))
    assert sup.stop(10)
    assert [label for kind, label in LOG if kind == "stop"] == ["c", "b", "a"]


def test_a_child_that_ignores_stop_is_abandoned_after_its_shutdown_timeout():
    sup = Supervisor.start("root", children=specs("stuck", shutdown_timeout=0.05) + specs("fine"))
    started, release = threading.Event(), threading.Event()
    blocked = sup.child("stuck").ask_future(("block", started, release))
    assert started.wait(5)
    with capture_logs() as logs:
        assert sup.stop(10)
    abandoned = [e for e in logs if e["event"] == "garrison.supervisor.child_abandoned"]
    assert [e["child"] for e in abandoned] == ["stuck"]
    release.set()
    assert blocked.get(5) == "released"


def test_start_child_and_terminate_child(start):
    sup = start(children=specs("a"))
    b = sup.start_child(ChildSpec("b", Counter, kwargs={"label": "b"}))
    assert b.ask("x", 5) == ("b", 1, "x")
    assert [c["name"] for c in sup.tree()["children"]] == ["a", "b"]
    with pytest.raises(ValueError, match="already has a child"):
        sup.start_child(ChildSpec("b", Counter))
    sup.terminate_child("b")
    with pytest.raises(ActorUnavailable):
        b.ask("after", 5)
    assert [c["name"] for c in sup.tree()["children"]] == ["a"]
    with pytest.raises(LookupError):
        sup.terminate_child("b")
    with pytest.raises(ValueError, match="constructor failed"):
        sup.start_child(ChildSpec("x", Exploding))


def test_tree_describes_nested_supervisors(start):
    nested = ChildSpec("workers", Supervisor, kwargs={"children": specs("w1", "w2")})
    sup = start(children=[*specs("a"), nested])
    tree = sup.tree()
    assert tree["name"] == "root"
    assert tree["state"] == "running"
    assert tree["restarts"] == 0
    workers = tree["children"][1]
    assert workers["name"] == "workers"
    assert [c["name"] for c in workers["children"]] == ["w1", "w2"]
    assert sup.child("workers/w2").ask("x", 5) == ("w2", 1, "x")
    with pytest.raises(LookupError):
        sup.child("a/w1")
    with pytest.raises(LookupError):
        sup.child("workers/nope")


def test_a_child_that_fails_to_construct_fails_supervisor_start_and_leaks_nothing():
    with pytest.raises(ValueError, match="constructor failed"):
        Supervisor.start("root", children=[*specs("a"), ChildSpec("bad", Exploding)])
    assert [kind for kind, _ in LOG] == ["start", "stop"]


# -- failure routing --------------------------------------------------------------------------


def test_route_failures_to_sends_unanswered_executes_to_the_fallback_child(start):
    def explode() -> None:
        raise AssertionError("never run")

    class ExecuteCrasher(Actor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("crashed on an Execute")

    sup = start(
        children=[ChildSpec("worker", ExecuteCrasher), ChildSpec("fallback", Sink)],
        route_failures_to="fallback",
    )
    operation = Execute(explode, name="explode")
    sup.child("worker").tell(operation)
    sup.child("worker").settle(5)
    received = sup.child("fallback").ask("received", 5)
    assert len(received) == 1
    failure = received[0]
    assert isinstance(failure, OperationFailed)
    assert failure.operation is operation
    assert isinstance(failure.error, RuntimeError)
    assert failure.source == "root/worker"


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"strategy": "one_for_some"}, "strategy"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"within_seconds": 0}, "within_seconds"),
        ({"restart_backoff": (2.0, 1.0)}, "restart_backoff"),
        ({"restart_backoff": (0, 1.0)}, "restart_backoff"),
        ({"restart_backoff": 3}, "restart_backoff"),
        ({"children": specs("a", "a")}, "children"),
        ({"children": ["not a spec"]}, "children"),
        ({"children": specs("a"), "route_failures_to": "b"}, "route_failures_to"),
    ],
)
def test_bad_supervisor_configuration_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        Supervisor.start("root", **kwargs)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "", "actor_class": Counter}, ValueError),
        ({"name": "a/b", "actor_class": Counter}, ValueError),
        ({"name": "a", "actor_class": dict}, TypeError),
        ({"name": "a", "actor_class": Counter, "restart": "sometimes"}, ValueError),
        ({"name": "a", "actor_class": Counter, "shutdown_timeout": 0}, ValueError),
        ({"name": "a", "actor_class": Counter, "restart_buffer": -1}, ValueError),
        ({"name": "a", "actor_class": Counter, "args": "x"}, TypeError),
    ],
)
def test_bad_child_specs_are_refused_at_construction(kwargs, error):
    with pytest.raises(error):
        ChildSpec(**kwargs)


def test_nested_supervisors_without_a_route_use_their_parents_route(start):
    class ExecuteCrasher(Actor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("crashed on an Execute")

    nested = ChildSpec("inner", Supervisor, kwargs={"children": [ChildSpec("w", ExecuteCrasher)]})
    dead = DeadLetters()
    sup = start(
        children=[nested, ChildSpec("fallback", Sink)],
        route_failures_to="fallback",
        dead_letters=dead,
    )
    sup.child("inner/w").tell(Execute(print, name="lost"))
    sup.child("inner/w").tell("not an Execute")
    sup.child("inner").settle(5)
    sup.child("inner/w").settle(5)
    received = sup.child("fallback").ask("received", 5)
    assert [(r.operation.name, r.source) for r in received] == [("lost", "root/inner/w")]
    assert [(d.message, d.recipient) for d in dead.recent()] == [("not an Execute", "root/inner/w")]


def test_a_childs_exit_notice_to_a_stopped_supervisor_is_no_dead_letter():
    # A child that stops on its own just before its supervisor stops sends its exit notice
    # to a closed mailbox (seen with a tiny switch interval): nobody needs it any more.
    dead = DeadLetters()
    mailbox = Mailbox("sup", dead)
    mailbox.close("the actor has stopped")
    assert not mailbox.offer(Envelope(_ChildExited("a", 1, None, will_restart=False)))
    assert dead.count == 0
