"""Helpers shared by the bulkhead reviews: gated operations, a fused bulkhead, its books."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from garrison import Runtime
from garrison._ref import actor_of
from garrison.actors import BulkheadConfig
from garrison.actors._host import HostedRef, StageHost
from garrison.actors.bulkhead import BulkheadActor
from garrison.pipeline import Pipeline

WAIT = 5.0


class Gate:
    """Operations that block until released, telling the test when they started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._started = threading.Semaphore(0)

    def fn(self, value: Any = None) -> Callable[[], Any]:
        def blocked() -> Any:
            self._started.release()
            assert self.release.wait(WAIT)
            return value

        return blocked

    def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert self._started.acquire(timeout=WAIT)


def fused(rt: Runtime, **config: Any) -> tuple[Pipeline, BulkheadActor]:
    """A pipeline whose only stage is its bulkhead (callers admit through try_admit), started."""
    api = rt.pipeline("p", bulkhead=BulkheadConfig(**config))
    assert api.ref.settle(WAIT)
    return api, bulkhead_of(api)


def bulkhead_of(api: Pipeline) -> BulkheadActor:
    """The bulkhead stage of ``api``'s current host."""
    ref = api.stages["bulkhead"]
    assert isinstance(ref, HostedRef)
    host = actor_of(ref.host.actor_ref)
    assert isinstance(host, StageHost)
    (stage,) = [s for s in host.stages if isinstance(s, BulkheadActor)]
    return stage


def books_balance(status: dict[str, Any], workers: int) -> None:
    """Nothing in use, queued or stuck; every worker idle."""
    assert (status["in_use"], status["queued"], status["idle_workers"]) == (0, 0, workers)
    assert status["stuck_workers"] == 0
