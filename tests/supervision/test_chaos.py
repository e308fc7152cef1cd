"""Chaos: supervised children crash at random while thousands of messages are in flight.

What must hold whatever the interleaving:

- every ask gets exactly one outcome, within a bounded wait: the echoed payload, or the
  crash's own ``RuntimeError`` for the message that crashed (``ActorUnavailable`` only if a
  restart buffer overflowed, which the buffers here are too large for);
- every message is handled exactly once, and only the crashing message is lost to a crash:
  messages queued behind it or sent while the child restarts reach the next incarnation, in
  each sender's order;
- a crashing tell goes to the supervisor's dead letters, and nothing else does;
- after ``stop()`` no thread is left behind.

Nothing here sleeps to let time pass: waits are bounded ``Future.get`` / ``join`` calls.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers.chaos import Chaos, outcome, quiet_logs, settle_threads
from garrison import Actor, ActorUnavailable, DeadLetters, Future, Ref
from garrison._actor import SafeLoop
from garrison._ref import actor_of
from garrison.supervision import ChildSpec, Strategy, Supervisor, SupervisorRef

WAIT = 20.0  # the bound on any single wait; a healthy run needs a small fraction of it
NEVER_GIVE_UP = {"max_restarts": 1_000_000, "within_seconds": 1.0}
BIG_BUFFER = 1_000_000


@dataclass(frozen=True, slots=True)
class Msg:
    payload: tuple[int, int]  # (sender, sequence number)
    crash: bool


class Handled:
    """Shared across incarnations (passed in kwargs): every payload any incarnation handled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.payloads: Counter[tuple[int, int]] = Counter()

    def add(self, payload: tuple[int, int]) -> None:
        with self._lock:
            self.payloads[payload] += 1


class GarrisonChaos(Actor):
    def __init__(self, handled: Handled) -> None:
        super().__init__()
        self.handled = handled

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Msg):
            return message
        self.handled.add(message.payload)
        if message.crash:
            raise Chaos(f"chaos on {message.payload}")
        return message.payload


class PlainChaos(pykka.ThreadingActor):
    """A user's own pykka actor: the supervisor puts garrison's receive loop in front of it."""

    def __init__(self, handled: Handled) -> None:
        super().__init__()
        self.handled = handled

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Msg):
            return message
        self.handled.add(message.payload)
        if message.crash:
            raise Chaos(f"chaos on {message.payload}")
        return message.payload


@dataclass
class Sent:
    asks: list[tuple[str, Msg, Future[Any]]] = field(default_factory=list)
    tells: list[tuple[str, Msg]] = field(default_factory=list)


def run_senders(
    refs: dict[str, Ref], threads: int, per_thread: int, seed: int, crash_rate: float
) -> tuple[Sent, Counter[int]]:
    """Send from ``threads`` threads at once; return what was sent and per-future outcomes."""
    names = sorted(refs)
    barrier = threading.Barrier(threads, timeout=WAIT)
    sent = [Sent() for _ in range(threads)]
    completions: Counter[int] = Counter()
    completions_lock = threading.Lock()
    errors: list[BaseException] = []

    def count(future: Future[Any]) -> None:
        with completions_lock:
            completions[id(future)] += 1

    def sender(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        mine = sent[index]
        try:
            barrier.wait()
            for seq in range(per_thread):
                name = names[rng.randrange(len(names))]
                msg = Msg((index, seq), rng.random() < crash_rate)
                if rng.random() < 0.5:
                    future = refs[name].ask_future(msg)
                    future.add_done_callback(count)
                    mine.asks.append((name, msg, future))
                else:
                    refs[name].tell(msg)
                    mine.tells.append((name, msg))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    workers = [
        threading.Thread(target=sender, args=(i,), name=f"chaos-sender-{i}") for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert not [w.name for w in workers if w.is_alive()], "a sender hung"
    assert not errors, errors
    merged = Sent()
    for part in sent:
        merged.asks.extend(part.asks)
        merged.tells.extend(part.tells)
    return merged, completions


def start_chaos_supervisor(
    strategy: Strategy, dead_letters: DeadLetters, handled: Handled, shutdown_timeout: float
) -> SupervisorRef:
    return Supervisor.start(
        "chaos",
        strategy=strategy,
        dead_letters=dead_letters,
        children=[
            ChildSpec(
                name,
                cls,
                kwargs={"handled": handled},
                restart_buffer=BIG_BUFFER,
                shutdown_timeout=shutdown_timeout,
            )
            for name, cls in [
                ("g0", GarrisonChaos),
                ("p0", PlainChaos),
                ("g1", GarrisonChaos),
                ("p1", PlainChaos),
            ]
        ],
        **NEVER_GIVE_UP,
    )


def check_chaos(strategy: Strategy, per_thread: int, shutdown_timeout: float) -> None:
    """Four senders, four children (two garrison, two plain pykka), ~10 % crashing messages."""
    threads = 4
    baseline = set(threading.enumerate())
    dead_letters = DeadLetters(keep=100_000)
    handled = Handled()
    with quiet_logs():
        sup = start_chaos_supervisor(strategy, dead_letters, handled, shutdown_timeout)
        try:
            refs = {name: sup.child(name) for name in ("g0", "p0", "g1", "p1")}
            sent, completions = run_senders(
                refs, threads=threads, per_thread=per_thread, seed=20261127, crash_rate=0.1
            )

            # Every ask resolves: one bounded wait for the lot.
            deadline = time.monotonic() + WAIT
            outcomes = [
                outcome(future, max(0.0, deadline - time.monotonic())) for _, _, future in sent.asks
            ]
            hung = [
                msg
                for (_, msg, _), (kind, _) in zip(sent.asks, outcomes, strict=True)
                if kind == "hung"
            ]
            assert not hung, f"{len(hung)} asks never resolved, e.g. {hung[:5]}"

            # Flush: every tell was queued before these asks, so once they are answered every
            # tell has been handled.
            for ref in refs.values():
                assert ref.ask("flush", timeout=WAIT) == "flush"
            tree = sup.tree()
        finally:
            stopped = sup.stop()
        assert stopped

    # Exactly one outcome per ask, and the right one.
    assert all(completions[id(future)] == 1 for _, _, future in sent.asks)
    unavailable = [
        msg
        for (_, msg, _), (kind, error) in zip(sent.asks, outcomes, strict=True)
        if kind == "error" and isinstance(error, ActorUnavailable)
    ]
    assert unavailable == [], "a restart buffer overflowed although it is huge"
    for (_, msg, _), (kind, result) in zip(sent.asks, outcomes, strict=True):
        if msg.crash:
            assert kind == "error", (msg, result)
            assert isinstance(result, Chaos), (msg, result)
            assert str(result) == f"chaos on {msg.payload}"
        else:
            assert (kind, result) == ("value", msg.payload)

    # Every message (ask or tell) was handled exactly once: nothing lost, nothing replayed.
    everything = [msg.payload for _, msg, _ in sent.asks] + [msg.payload for _, msg in sent.tells]
    assert len(everything) == threads * per_thread
    assert handled.payloads == Counter(everything)

    # Crashing tells, and only they, went to dead letters.
    crashing_tells = [(name, msg) for name, msg in sent.tells if msg.crash]
    assert dead_letters.count == len(crashing_tells)
    letters = dead_letters.recent()
    assert sorted((letter.recipient, letter.message.payload) for letter in letters) == sorted(
        (f"chaos/{name}", msg.payload) for name, msg in crashing_tells
    )
    assert all(letter.reason == "its handler crashed" for letter in letters)
    assert all(isinstance(letter.error, Chaos) for letter in letters)

    crashes = [name for name, msg, _ in sent.asks if msg.crash] + [n for n, _ in crashing_tells]
    assert crashes, "the seed produced no crash: the test would prove nothing"
    assert all(c["state"] == "running" for c in tree["children"])
    if strategy is Strategy.ONE_FOR_ONE:  # one restart per crash, of the crashed child only
        assert tree["restarts"] == len(crashes)
        per_child = Counter(crashes)
        assert {c["name"]: c["restarts"] for c in tree["children"]} == {
            name: per_child[name] for name in refs
        }
    else:
        # A sibling that crashes while a group restart is under way is restarted with the
        # group, so there may be fewer restarts than crashes, never more.
        assert 0 < tree["restarts"] <= len(crashes)

    # No thread left behind: not the children's, nor their crashed incarnations'.
    leftover = settle_threads(baseline, WAIT)
    assert leftover == [], [t.name for t in leftover]
    assert threading.active_count() == len(baseline)


# -- chaos --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_random_crashes_under_load_lose_nothing() -> None:
    """ONE_FOR_ONE: 4 threads x 2,500 asks and tells, ~1,000 of them crashing a child."""
    check_chaos(Strategy.ONE_FOR_ONE, per_thread=2_500, shutdown_timeout=WAIT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_group_restarts_under_load_lose_nothing(strategy: Strategy) -> None:
    """Group strategies, smaller: siblings are stopped and restarted with their queues kept.

    With the default shutdown timeout: a group restart must not wait for a sibling that
    crashed concurrently (see
    ``test_group_restart_does_not_wait_for_a_sibling_that_already_crashed``).
    """
    check_chaos(strategy, per_thread=150, shutdown_timeout=5.0)


# -- restart race: order across incarnations ----------------------------------------------------


class RecorderMixin:
    """Records (sender, seq, incarnation) of every message; every 50th message crashes.

    The record, the message count and the incarnation number survive restarts through
    ``snapshot()`` / ``restore()``, which the supervisor calls around a restart.
    """

    CRASH_EVERY = 50

    def init_record(self) -> None:
        self.log: list[tuple[int, int, int]] = []
        self.count = 0
        self.incarnation = 0

    def snapshot(self) -> tuple[list[tuple[int, int, int]], int, int]:
        return (list(self.log), self.count, self.incarnation)

    def restore(self, state: tuple[list[tuple[int, int, int]], int, int]) -> None:
        log, count, incarnation = state
        self.log = list(log)
        self.count = count
        self.incarnation = incarnation + 1

    def record(self, message: Any) -> Any:
        if message == "dump":
            return (list(self.log), self.count, self.incarnation)
        sender, seq = message
        self.count += 1
        if self.count % self.CRASH_EVERY == 0:
            raise Chaos(f"crash #{self.count // self.CRASH_EVERY} on {message}")
        self.log.append((sender, seq, self.incarnation))
        return message


class GarrisonRecorder(RecorderMixin, Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init_record()

    def on_receive(self, message: Any) -> Any:
        return self.record(message)


class PlainRecorder(RecorderMixin, pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.init_record()

    def on_receive(self, message: Any) -> Any:
        return self.record(message)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("actor_class", [GarrisonRecorder, PlainRecorder])
def test_restart_race_keeps_each_senders_order(actor_class: type[pykka.Actor]) -> None:
    threads, per_thread = 3, 2_000
    baseline = set(threading.enumerate())
    dead_letters = DeadLetters()
    with quiet_logs():
        sup = Supervisor.start(
            "race",
            dead_letters=dead_letters,
            children=[ChildSpec("rec", actor_class, restart_buffer=BIG_BUFFER)],
            **NEVER_GIVE_UP,
        )
        try:
            ref = sup.child("rec")
            barrier = threading.Barrier(threads, timeout=WAIT)
            futures: list[list[Future[Any]]] = [[] for _ in range(threads)]
            errors: list[BaseException] = []

            def hammer(sender: int) -> None:
                try:
                    barrier.wait()
                    mine = futures[sender]
                    for seq in range(per_thread):
                        mine.append(ref.ask_future((sender, seq)))
                        if seq % 400 == 399:  # now and then wait, so restarts meet fresh sends
                            mine[-1].exception(WAIT)
                except BaseException as error:
                    errors.append(error)

            workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(WAIT)
            assert not any(w.is_alive() for w in workers), "a sender hung"
            assert not errors, errors
            results = [[outcome(f, WAIT) for f in mine] for mine in futures]
            log, count, incarnation = ref.ask("dump", timeout=WAIT)
        finally:
            stopped = sup.stop()
        assert stopped

    total = threads * per_thread
    crashes = total // RecorderMixin.CRASH_EVERY
    assert not [r for mine in results for r in mine if r[0] == "hung"]
    assert count == total
    assert incarnation == crashes  # one new incarnation per crash, state carried over
    failed = {
        (sender, seq)
        for sender, mine in enumerate(results)
        for seq, (kind, result) in enumerate(mine)
        if kind == "error"
    }
    assert len(failed) == crashes
    for sender, mine in enumerate(results):
        for seq, (kind, result) in enumerate(mine):
            if kind == "error":
                assert isinstance(result, Chaos), result
            else:
                assert result == (sender, seq)
    # Each sender's surviving messages were seen once each, in the order sent, and the
    # incarnations handling them only ever move forward.
    for sender in range(threads):
        seen = [seq for s, seq, _ in log if s == sender]
        assert seen == sorted(set(seen)), f"sender {sender}: out of order or duplicated"
        assert set(seen) == {seq for seq in range(per_thread) if (sender, seq) not in failed}
    incarnations = [inc for _, _, inc in log]
    assert incarnations == sorted(incarnations)
    # (the very last message crashes, so the last incarnation records nothing)
    assert total % RecorderMixin.CRASH_EVERY == 0
    assert set(incarnations) == set(range(crashes))
    assert dead_letters.count == 0  # asks only: every crash answered its asker
    assert settle_threads(baseline, WAIT) == []


# -- property: any small schedule of asks, tells and crashes -----------------------------------


ops_strategy = st.lists(
    st.tuples(st.sampled_from(["g", "p"]), st.booleans(), st.booleans()),  # child, ask?, crash?
    min_size=1,
    max_size=30,
)


@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None)
@given(
    ops=ops_strategy,
    strategy=st.sampled_from(list(Strategy)),
)
def test_any_schedule_gives_each_message_its_outcome(
    ops: list[tuple[str, bool, bool]], strategy: Strategy
) -> None:
    dead_letters = DeadLetters(keep=1000)
    handled = Handled()
    kwargs = {"handled": handled}
    with quiet_logs():
        sup = Supervisor.start(
            "prop",
            strategy=strategy,
            dead_letters=dead_letters,
            children=[
                ChildSpec("g", GarrisonChaos, kwargs=kwargs),
                ChildSpec("p", PlainChaos, kwargs=kwargs),
            ],
            **NEVER_GIVE_UP,
        )
        try:
            refs = {"g": sup.child("g"), "p": sup.child("p")}
            asks: list[tuple[Msg, Future[Any]]] = []
            for seq, (name, is_ask, crash) in enumerate(ops):
                msg = Msg((0, seq), crash)
                if is_ask:
                    asks.append((msg, refs[name].ask_future(msg)))
                else:
                    refs[name].tell(msg)
            results = [outcome(future, WAIT) for _, future in asks]
            for ref in refs.values():
                assert ref.ask("flush", timeout=WAIT) == "flush"
            tree = sup.tree()
        finally:
            sup.stop()
    for (msg, _), (kind, result) in zip(asks, results, strict=True):
        if msg.crash:
            assert kind == "error"
            assert isinstance(result, Chaos)
        else:
            assert (kind, result) == ("value", msg.payload)
    assert handled.payloads == Counter({(0, seq): 1 for seq in range(len(ops))})
    assert dead_letters.count == sum(1 for _, is_ask, crash in ops if crash and not is_ask)
    crashes = sum(1 for _, _, crash in ops if crash)
    if strategy is Strategy.ONE_FOR_ONE:
        assert tree["restarts"] == crashes
    else:
        assert tree["restarts"] <= crashes
        assert (tree["restarts"] > 0) == (crashes > 0)


# -- known bugs ---------------------------------------------------------------------------------


class Gate(pykka.ThreadingActor):
    """Holds its supervisor's thread in its constructor until ``release`` is set."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        entered.set()
        release.wait(WAIT)


@pytest.mark.timeout(60)
def test_group_restart_does_not_wait_for_a_sibling_that_already_crashed() -> None:
    shutdown_timeout = 1.5
    with quiet_logs() as events:
        sup = Supervisor.start(
            "group",
            strategy=Strategy.ONE_FOR_ALL,
            children=[
                ChildSpec(
                    name,
                    GarrisonChaos,
                    kwargs={"handled": Handled()},
                    shutdown_timeout=shutdown_timeout,
                )
                for name in ("a", "b")
            ],
            **NEVER_GIVE_UP,
        )
        helper: threading.Thread | None = None
        release = threading.Event()
        try:
            a, b = sup.child("a"), sup.child("b")
            # Keep the supervisor busy (in start_child) while both children crash, so that
            # b's crash is still unprocessed when the supervisor restarts the group for a.
            entered = threading.Event()
            spec = ChildSpec("gate", Gate, kwargs={"entered": entered, "release": release})
            helper = threading.Thread(target=sup.start_child, args=(spec, WAIT))
            helper.start()
            assert entered.wait(WAIT)
            for ref, n in ((a, 0), (b, 1)):
                old = actor_of(ref.actor_ref)
                assert isinstance(old, SafeLoop)
                with pytest.raises(Chaos):
                    ref.ask(Msg((9, n), crash=True), timeout=WAIT)
                assert old._thread is not None
                old._thread.join(WAIT)  # its exit listener has run: the notice is queued
                assert not old._thread.is_alive()
            release.set()
            helper.join(WAIT)
            # The group restart should take milliseconds, not the shutdown timeout.
            assert a.ask("flush", timeout=shutdown_timeout / 3) == "flush"
            assert b.ask("flush", timeout=shutdown_timeout / 3) == "flush"
        finally:
            release.set()
            if helper is not None:
                helper.join(WAIT)
            sup.stop()
    assert not [e for e in events if e["event"] == "garrison.supervisor.child_abandoned"]
