"""monitor=True: the seed's per-operation reliability metric, as a structlog event."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from garrison import (
    CircuitBreakerConfig,
    CircuitOpen,
    FallbackConfig,
    RetriesExhausted,
    RetryConfig,
    Runtime,
)
from garrison.testing import ManualClock


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("flaky")
        return "ok"


def metrics(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "garrison.reliability_metric"]


def drive(api: Any, clock: ManualClock, future: Any) -> Any:
    """Advance the clock past each retry delay until the operation has its outcome."""
    for _ in range(20):
        if future.done():
            break
        for stage in api.stages.values():
            stage.settle(5)
        clock.advance(1.0)
    return future.exception(5)


def test_each_operation_logs_one_reliability_metric():
    clock = ManualClock()
    with Runtime(clock=clock) as rt:
        api = rt.pipeline(
            "api",
            retry=RetryConfig(max_attempts=3, base_delay=1.0, jitter=False),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=30),
            monitor=True,
        )
        with capture_logs() as logs:
            assert api.call(Flaky(0)) == "ok"
        [event] = metrics(logs)
        assert event["status"] == "success"
        assert event["pipeline"] == "api"
        assert event["attempts"] == 1
        assert event["circuit_state"] == "closed"
        assert event["response_time"] == 0.0  # the runtime's clock did not move
        assert event["fallback"] is None

        with capture_logs() as logs:
            error = drive(api, clock, api.submit(Flaky(10)))
        assert isinstance(error, RetriesExhausted)
        assert isinstance(error.last_error, CircuitOpen)
        [event] = metrics(logs)
        # two failures open the breaker; the third attempt is refused by it
        assert (event["status"], event["circuit_state"]) == ("circuit_open", "open")
        assert event["attempts"] == 3


def test_a_fallback_answer_is_reported_as_such():
    with Runtime(clock=ManualClock()) as rt:
        api = rt.pipeline("cached", fallback=FallbackConfig(value={"stale": True}), monitor=True)
        with capture_logs() as logs:
            assert api.call(Flaky(1)) == {"stale": True}
        [event] = metrics(logs)
        assert (event["status"], event["fallback"]) == ("fallback", "value")


def test_without_monitor_nothing_is_logged_per_operation():
    with Runtime(clock=ManualClock()) as rt:
        api = rt.pipeline("quiet", retry=RetryConfig(max_attempts=2, base_delay=1.0))
        with capture_logs() as logs:
            assert api.call(Flaky(0)) == "ok"
        assert metrics(logs) == []
