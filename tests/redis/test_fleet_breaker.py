"""Breaker trips and probes shared by runtimes of one process (each a process of the fleet).

Each runtime has its own ManualClock, so recovery waits pass when the test says; Redis and
the fleet threads work in real time, which the test waits for with bounded waits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _fleet import drained, wait_until

from garrison import CircuitBreakerConfig, CircuitOpen, Runtime
from garrison.backends import BackendConfig
from garrison.testing import ManualClock

BREAKER = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30)


class Member:
    def __init__(self, url: str, namespace: str, quorum: int = 1) -> None:
        self.clock = ManualClock(start=100.0)
        self.rt = Runtime(
            name=namespace,
            clock=self.clock,
            backend=BackendConfig(url, fleet_trip_quorum=quorum),
        ).start()
        self.api = self.rt.pipeline("svc", circuit_breaker=BREAKER)
        assert self.rt.backend is not None
        assert self.rt.backend.fleet.subscribed.wait(5)
        drained(self.rt)

    def state(self) -> str:
        return str(self.api.status()["circuit_breaker"]["state"])

    def probe(self) -> str:
        return str(self.api.status()["circuit_breaker"]["fleet_probe"])

    def fail(self) -> None:
        with pytest.raises(ZeroDivisionError):
            self.api.call(lambda: 1 / 0)


@pytest.fixture
def fleet(redis_server: Any, namespace: str) -> Iterator[Callable[..., Member]]:
    members: list[Member] = []

    def make(quorum: int = 1) -> Member:
        members.append(Member(redis_server.url, namespace, quorum))
        return members[-1]

    yield make
    for member in members:
        member.rt.stop()


def test_a_trip_opens_the_others_and_one_probe_closes_them_all(fleet: Any):
    a, b = fleet(), fleet()
    a.fail()
    assert a.state() == "open"
    assert wait_until(lambda: b.state() == "open")
    with pytest.raises(CircuitOpen):
        b.api.call(lambda: "not called")

    a.clock.advance(30)  # a's wait is over: it asks for the fleet's probe lock and gets it
    assert wait_until(lambda: a.probe() == "granted")
    b.clock.advance(30)  # b's too, but a holds the lock: b stays open
    assert wait_until(lambda: b.probe() == "denied")
    assert b.state() == "open"
    with pytest.raises(CircuitOpen):
        b.api.call(lambda: "not called")

    assert a.api.call(lambda: "probe") == "probe"  # a's probe succeeds: a closes, b follows
    assert a.state() == "closed"
    assert wait_until(lambda: b.state() == "closed")
    assert b.api.call(lambda: "ok") == "ok"


def test_a_failed_fleet_probe_opens_the_others_again(fleet: Any):
    a, b = fleet(), fleet()
    a.fail()
    assert wait_until(lambda: b.state() == "open")
    a.clock.advance(30)
    assert wait_until(lambda: a.probe() == "granted")
    b.clock.advance(30)
    assert wait_until(lambda: b.probe() == "denied")
    a.fail()  # the probe fails: a re-opens, releases the lock and publishes the trip
    assert a.state() == "open"
    assert wait_until(lambda: b.api.status()["circuit_breaker"]["retry_after"] == 30)
    assert b.state() == "open"  # b's wait restarted from the new trip


def test_a_quorum_of_two_needs_two_processes(fleet: Any):
    a, b, c = fleet(2), fleet(2), fleet(2)
    a.fail()
    assert wait_until(lambda: c.rt.backend is not None and c.rt.backend.fleet.trips_received == 1)
    drained(c.rt)
    assert c.state() == "closed"  # one process tripped: not enough
    b.fail()
    assert wait_until(lambda: c.state() == "open")


def test_a_breaker_that_starts_later_reads_the_recent_trips(fleet: Any):
    a = fleet()
    a.fail()
    assert a.rt.backend is not None
    assert wait_until(lambda: a.rt.backend is not None and a.rt.backend.fleet.trips_published == 1)
    late = fleet()
    assert wait_until(lambda: late.state() == "open")
