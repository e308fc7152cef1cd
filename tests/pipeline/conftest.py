"""Fixtures shared by the pipeline tests: a ManualClock and a runtime driven by it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from garrison import Runtime
from garrison.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """The runtime's ManualClock, for tests whose outcome depends on moving it."""
    return ManualClock()


@pytest.fixture
def rt(clock: ManualClock) -> Iterator[Runtime]:
    with Runtime(name="rt", clock=clock) as runtime:
        yield runtime
