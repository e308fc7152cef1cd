"""A pytest plugin (``-p _helpers.tiny_switch``) that runs a whole session with the
interpreter's thread switch interval at 1 µs, and restores it afterwards.

Races between threads that a 5 ms switch interval all but hides show up there; the
reliability suite runs the concurrency tests under it (tests/reliability/test_switch_interval.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

TINY = 1e-6
_saved: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    _saved.append(sys.getswitchinterval())
    sys.setswitchinterval(TINY)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved:
        sys.setswitchinterval(_saved.pop())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"switch interval: {sys.getswitchinterval():g} s")


@contextmanager
def tiny_switch() -> Iterator[None]:
    """Run the block with the thread switch interval at 1 µs (restored afterwards)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(TINY)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
