"""The Stage base: passing operations on, observing outcomes, never losing one."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from garrison import Execute, Future, GetStatus, Runtime
from garrison.actors import WorkerActor
from garrison.actors._stage import Stage


class Counting(Stage):
    """Observes every outcome and counts successes and failures before answering."""

    stage = "counting"

    def __init__(self, downstream=None, **kwargs: Any) -> None:
        super().__init__(downstream, **kwargs)
        self.ok = 0
        self.failed = 0

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        self.pass_on_observed(message, reply, context=message.name)

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        if outcome.exception(0) is None:
            self.ok += 1
        else:
            self.failed += 1
        super().handle_outcome(context, outcome, reply)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "ok": self.ok, "failed": self.failed}


def fail() -> None:
    raise ValueError("nope")


def test_a_stage_without_downstream_runs_the_operation():
    with Runtime() as rt:
        stage = rt.spawn(Stage)
        assert stage.ask(Execute(lambda: 42), timeout=5) == 42
        with pytest.raises(ValueError, match="nope"):
            stage.ask(Execute(fail), timeout=5)
        assert stage.ask(GetStatus(), timeout=5) == {"stage": "stage"}


def test_observed_outcomes_update_state_before_the_caller_sees_them():
    with Runtime() as rt:
        worker = rt.spawn(WorkerActor)
        stage = rt.spawn(Counting, worker)
        assert stage.ask(Execute(lambda: "x"), timeout=5) == "x"
        # read-your-writes: the count already includes the call we just waited for
        assert stage.ask(GetStatus(), timeout=5)["ok"] == 1
        with pytest.raises(ValueError, match="nope"):
            stage.ask(Execute(fail), timeout=5)
        assert stage.ask(GetStatus(), timeout=5) == {"stage": "counting", "ok": 1, "failed": 1}


def test_an_outcome_arriving_after_the_stage_stopped_still_reaches_the_caller():
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(5)
        return "late"

    with Runtime() as rt:
        worker = rt.spawn(WorkerActor)
        stage = rt.spawn(Counting, worker)
        future = stage.ask_future(Execute(slow))
        assert started.wait(5)
        assert stage.stop(5)
        release.set()
        assert future.get(5) == "late"


def test_downstream_must_be_a_ref():
    with pytest.raises(TypeError, match=r"garrison\.Ref"):
        Stage("not a ref")  # type: ignore[arg-type]
