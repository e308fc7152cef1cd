"""garrison's events: a broken logging configuration never crashes the code that logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from garrison import Runtime
from garrison.observability.events import emit
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.testing import ManualClock


class Broken(Exception):
    pass


def explode(_logger: Any, _method: str, _event: dict[str, Any]) -> Any:
    raise Broken("this processor always fails")


@pytest.fixture
def broken_logging() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.configure(processors=[explode])
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("broken_logging")
def test_emit_falls_back_to_stderr_when_structlog_fails(capsys: pytest.CaptureFixture[str]):
    emit("garrison.test.event", level="warning", answer=42, error=ValueError("bad"))
    err = capsys.readouterr().err
    assert "[warning] garrison.test.event answer=42 error='ValueError: bad'" in err
    assert "structlog failed: Broken: this processor always fails" in err


@pytest.mark.usefixtures("broken_logging")
def test_actors_keep_working_when_logging_is_broken(capsys: pytest.CaptureFixture[str]):
    with Runtime(name="rt", clock=ManualClock()) as rt:
        api = rt.pipeline("api", circuit_breaker=CircuitBreakerConfig(failure_threshold=1))
        with pytest.raises(ZeroDivisionError):
            api.call(lambda: 1 / 0)  # opens the breaker: an event the logger cannot log
        assert api.status()["circuit_breaker"]["state"] == "open"
        assert rt.tree()["children"][0]["restarts"] == 0  # nothing crashed
    assert "garrison.breaker.opened" in capsys.readouterr().err
