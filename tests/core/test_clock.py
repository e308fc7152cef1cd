"""Clocks: SystemClock and the ManualClock that tests move by hand."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison import Clock, SystemClock
from garrison.testing import ManualClock


def test_system_clock_reads_time_monotonic():
    clock = SystemClock()
    before = time.monotonic()
    reading = clock.monotonic()
    after = time.monotonic()
    assert before <= reading <= after
    assert isinstance(clock, Clock)
    assert repr(clock) == "SystemClock()"


def test_system_clock_never_goes_backwards():
    clock = SystemClock()
    readings = [clock.monotonic() for _ in range(1000)]
    assert readings == sorted(readings)


def test_manual_clock_is_a_clock():
    assert isinstance(ManualClock(), Clock)


def test_manual_clock_starts_at_zero_by_default():
    clock = ManualClock()
    assert clock.monotonic() == 0.0
    assert type(clock.monotonic()) is float


def test_manual_clock_start_value():
    clock = ManualClock(100)
    assert clock.monotonic() == 100.0
    assert type(clock.monotonic()) is float
    assert ManualClock(start=-5.5).monotonic() == -5.5
    assert repr(ManualClock(2.5)) == "ManualClock(now=2.5)"


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf])
def test_manual_clock_refuses_a_non_finite_start(start: float):
    with pytest.raises(ValueError, match="start must be a finite number"):
        ManualClock(start)


def test_manual_clock_does_not_move_by_itself():
    clock = ManualClock(3.0)
    assert [clock.monotonic() for _ in range(5)] == [3.0] * 5


def test_advance_moves_forward_by_the_step():
    clock = ManualClock(10.0)
    clock.advance(2.5)
    assert clock.monotonic() == 12.5
    clock.advance(1)
    assert clock.monotonic() == 13.5
    assert type(clock.monotonic()) is float
    clock.advance(0)
    assert clock.monotonic() == 13.5


def test_advance_to_moves_to_an_absolute_time():
    clock = ManualClock(1.0)
    clock.advance_to(7.25)
    assert clock.monotonic() == 7.25
    clock.advance_to(7.25)  # staying put is allowed
    assert clock.monotonic() == 7.25


def test_advance_to_the_past_is_refused_and_changes_nothing():
    clock = ManualClock(5.0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance_to(4.0)
    assert clock.monotonic() == 5.0


@pytest.mark.parametrize("step", [-1, -0.001, -math.inf, math.nan, math.inf])
def test_advance_refuses_negative_and_non_finite_steps(step: float):
    clock = ManualClock(2.0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(step)
    assert clock.monotonic() == 2.0


@pytest.mark.parametrize("when", [math.nan, math.inf])
def test_advance_to_refuses_non_finite_targets(when: float):
    clock = ManualClock(2.0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance_to(when)
    assert clock.monotonic() == 2.0


@pytest.mark.parametrize("step", [True, False, "1", None, [1], 1j])
def test_advance_refuses_non_numbers_and_bools(step: Any):
    clock = ManualClock(2.0)
    with pytest.raises(TypeError, match="seconds must be a number"):
        clock.advance(step)
    assert clock.monotonic() == 2.0


@given(
    start=st.floats(min_value=-1e6, max_value=1e6),
    steps=st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1e4),
            st.integers(min_value=0, max_value=10**4),
            st.floats(max_value=-1e-9),  # refused
            st.sampled_from([math.nan, math.inf, True]),  # refused
        ),
        max_size=30,
    ),
)
def test_manual_clock_never_goes_backwards(start: float, steps: list[Any]):
    clock = ManualClock(start)
    expected = float(start)
    previous = clock.monotonic()
    for step in steps:
        valid = (
            not isinstance(step, bool)
            and isinstance(step, int | float)
            and math.isfinite(step)
            and step >= 0
        )
        if valid:
            clock.advance(step)
            expected += step
        else:
            with pytest.raises((ValueError, TypeError)):
                clock.advance(step)
        now = clock.monotonic()
        assert now == expected
        assert now >= previous
        previous = now
