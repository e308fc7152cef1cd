"""Fused pipelines: one StageHost actor runs every stage, with no mailbox hop between them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from garrison import Execute, Future, Runtime
from garrison._ref import Ref, actor_of
from garrison.actors import BulkheadConfig
from garrison.actors._host import HostedRef, HostedStage, StageHost
from garrison.actors._stage import Stage
from garrison.errors import CircuitOpen, RateLimited, RetriesExhausted
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.supervision import ChildSpec, Restart
from garrison.testing import ManualClock

WAIT = 5.0


class Tracing(Stage):
    """Records the thread that handles each Execute, then passes it on."""

    stage = "tracing"

    def __init__(
        self,
        label: str,
        downstream: Ref | None = None,
        *,
        clock: Any = None,
        scheduler: Any = None,
        loop: Any = None,
    ) -> None:
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.label = label

    def on_stop(self) -> None:
        self.release_scheduler()

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        threads = message.kwargs["threads"]
        threads.append((self.label, threading.get_ident()))
        self.pass_on(message, reply)

    def status(self) -> dict[str, Any]:
        return {"stage": self.stage, "label": self.label}


class Boom(Exception):
    pass


def _threads(**kwargs: Any) -> list[tuple[str, int]]:
    return list(kwargs["threads"])


def test_every_stage_of_a_host_runs_on_the_host_thread() -> None:
    with Runtime(name="rt") as rt:
        host = rt.supervisor.start_child(
            ChildSpec(
                "host",
                StageHost,
                args=([HostedStage(name, Tracing, (name,)) for name in ("a", "b", "c")],),
                restart=Restart.PERMANENT,
            )
        )
        threads: list[tuple[str, int]] = []
        result = host.ask(Execute(_threads, kwargs={"threads": threads}), WAIT)
        actor = actor_of(host.actor_ref)
        assert isinstance(actor, StageHost)
        assert actor._thread is not None
        host_thread = actor._thread.ident
        # a, b and c each saw the operation, in order, on the host's own thread; the last
        # one ran it there too (no downstream), so the result lists all three
        assert [label for label, _ in result] == ["a", "b", "c"]
        assert {ident for _, ident in result} == {host_thread}
        # each stage is reachable on its own through a HostedRef
        refs = [HostedRef(host, index, name) for index, name in enumerate("abc")]
        assert [ref.ask(_status(), WAIT)["label"] for ref in refs] == ["a", "b", "c"]
        assert refs[1].actor_class is Tracing
        assert refs[1].is_alive()
        assert refs[1].settle(WAIT)
        assert refs[1] == HostedRef(host, 1, "b")
        assert refs[1] != refs[2]
        assert len({refs[0], refs[1], HostedRef(host, 1, "b")}) == 2
        with pytest.raises(TypeError, match="fused"):
            refs[2].stop()
        tree = rt.tree()["children"][0]
        assert [part["name"] for part in tree["children"]] == ["c", "b", "a"]


def _status() -> Any:
    from garrison._messages import GetStatus  # noqa: PLC0415

    return GetStatus()


def test_a_host_needs_stages() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        StageHost([])


def test_fused_and_actor_per_stage_pipelines_have_the_same_stages_and_statuses() -> None:
    with Runtime(name="rt", clock=ManualClock()) as rt:
        shapes = []
        for fused in (True, False):
            api = rt.pipeline(
                f"p{int(fused)}",
                fused=fused,
                retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
                circuit_breaker=CircuitBreakerConfig(failure_threshold=3),
                rate_limit=RateLimitConfig(per_second=100),
                fallback="n/a",
            )
            assert api.call(lambda: 7) == 7
            status = api.status()
            shapes.append((list(api.stages), {k: sorted(v) for k, v in status.items()}))
            assert all(isinstance(ref, HostedRef) is fused for ref in api.stages.values())
        assert shapes[0] == shapes[1]
        with pytest.raises(TypeError, match="fused must be True or False"):
            rt.pipeline("bad", fused="yes", retry=RetryConfig())  # type: ignore[arg-type]


def _crash_next(ref: Ref, hook: str) -> None:
    """Make the stage behind ``ref`` raise Boom the next time ``hook`` is called."""
    stage = actor_of(ref.actor_ref)
    assert isinstance(stage, Stage)

    def boom(*_args: Any) -> Any:
        vars(stage).pop(hook, None)
        raise Boom(f"{hook} crashed")

    setattr(stage, hook, boom)


def _wait_restarted(api: Pipeline, before: object) -> None:
    ref = api.stages["bulkhead"]
    assert isinstance(ref, HostedRef)
    for _ in range(500):
        host = actor_of(ref.host.actor_ref)
        if host is not before and ref.is_alive() and ref.settle(WAIT):
            return
        threading.Event().wait(0.01)
    raise AssertionError("the host was not restarted")


def test_a_stage_crash_restarts_every_stage_with_its_state() -> None:
    with Runtime(name="rt", clock=ManualClock()) as rt:
        api = rt.pipeline(
            "p",
            circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=60),
            rate_limit=RateLimitConfig(per_second=3, on_limit="reject"),
        )
        assert api.call(lambda: 1) == 1  # one call of three in this second
        breaker = rt.breakers.get("p")
        assert breaker is not None
        breaker.force_open()
        with pytest.raises(CircuitOpen):
            api.call(int)  # never reaches the limiter
        breaker.force_close()
        host = actor_of(api.stages["bulkhead"].host.actor_ref)  # type: ignore[attr-defined]
        _crash_next(api.stages["rate_limiter"], "handle_execute")
        with pytest.raises(Boom, match="handle_execute crashed"):
            api.call(int)  # the limiter's crash reaches the caller as the crash
        _wait_restarted(api, host)
        # The breaker kept its state (forced closed; the crash counted as one failure, of
        # two allowed) and the limiter its window (one call of three used in this second):
        # both were restored from their snapshots.
        assert api.status()["circuit_breaker"]["state"] == "closed"
        assert api.call(lambda: "back") == "back"
        assert api.call(lambda: "again") == "again"
        with pytest.raises(RateLimited):
            api.call(int)


def _raise() -> None:
    raise Boom("operation failed")


def test_an_outcome_arriving_after_a_host_restart_reaches_the_new_stages() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(WAIT)
        return "late"

    with Runtime(name="rt") as rt:
        api = rt.pipeline(
            "p",
            retry=RetryConfig(max_attempts=2, base_delay=0.0, jitter=False),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=5),
            bulkhead=BulkheadConfig(max_workers=2),
        )
        pending = api.submit(slow)
        assert started.wait(WAIT)
        host = actor_of(api.stages["bulkhead"].host.actor_ref)  # type: ignore[attr-defined]
        _crash_next(api.stages["retry"], "handle_execute")
        with pytest.raises(Boom):
            api.call(int)
        _wait_restarted(api, host)
        release.set()
        assert pending.get(WAIT) == "late"
        breaker = api.status()["circuit_breaker"]
        assert breaker["state"] == "closed"


def test_a_crash_while_handling_an_outcome_still_answers_the_caller() -> None:
    with Runtime(name="rt") as rt:
        retry = RetryConfig(max_attempts=3, base_delay=0.0, jitter=False, retry_exceptions=(Boom,))
        api = rt.pipeline("p", retry=retry, fallback=-1)
        _crash_next(api.stages["retry"], "handle_outcome")
        # retry's crash fails the outcome it was handling; the fallback stage (restarted
        # with the host) still turns that into its value
        assert api.call(_raise) == -1
        assert api.call(lambda: 5) == 5


def test_retries_exhausted_through_a_fused_pipeline() -> None:
    with Runtime(name="rt") as rt:
        retry = RetryConfig(max_attempts=2, base_delay=0.0, jitter=False, retry_exceptions=(Boom,))
        api = rt.pipeline("p", retry=retry)
        with pytest.raises(RetriesExhausted) as exhausted:
            api.call(_raise)
        assert exhausted.value.attempts == 2
