"""The reliability suite's profile, resource probes and figure reporting.

``GARRISON_RELIABILITY=ci`` (the default) or ``full`` chooses how long the suite runs (see
:data:`PROFILES`). Every test records the figures it measured with the ``figures`` fixture;
they are printed in a "reliability figures" section at the end of the run and written as
JSON to ``tests/reliability/.results/<profile>.json`` (gitignored).

These tests are deselected from the default run (``-m 'not reliability'`` in pyproject's
pytest options); ``make reliability`` runs them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).parent / ".results"


@dataclass(frozen=True, slots=True)
class Profile:
    """How hard and how long the reliability tests push."""

    name: str
    chaos_operations: int  # operations through the chaos pipelines
    overload_seconds: float  # how long 10x the capacity is offered
    soak_seconds: float  # how long the mixed soak load runs
    shutdown_rounds: int  # runtimes stopped under load
    fuzz_examples: int  # hypothesis examples per fuzz test


PROFILES = {
    "ci": Profile(
        "ci",
        chaos_operations=10_000,
        overload_seconds=4.0,
        soak_seconds=60.0,
        shutdown_rounds=3,
        fuzz_examples=150,
    ),
    "full": Profile(
        "full",
        chaos_operations=10_000,
        overload_seconds=30.0,
        soak_seconds=600.0,
        shutdown_rounds=10,
        fuzz_examples=1_000,
    ),
}


def current_profile() -> Profile:
    """The profile named by GARRISON_RELIABILITY (``ci`` when unset)."""
    name = os.environ.get("GARRISON_RELIABILITY", "ci") or "ci"
    try:
        return PROFILES[name]
    except KeyError:
        raise pytest.UsageError(
            f"GARRISON_RELIABILITY must be one of {sorted(PROFILES)}, got {name!r}"
        ) from None


@pytest.fixture(scope="session")
def profile() -> Profile:
    return current_profile()


# -- figures ---------------------------------------------------------------------------------

_FIGURES: dict[str, dict[str, Any]] = {}


class Figures:
    """What one test measured: ``figures["peak_rss_mb"] = 41.2``."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.values: dict[str, Any] = {}
        _FIGURES[test] = self.values

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = round(value, 6) if isinstance(value, float) else value

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            self[key] = value


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    profile = current_profile()
    terminalreporter.section(f"reliability figures (profile {profile.name})")
    for test, values in _FIGURES.items():
        terminalreporter.write_line(f"{test}:")
        for key, value in values.items():
            terminalreporter.write_line(f"    {key}: {value}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{profile.name}.json"
    document = {
        "profile": profile.name,
        "python": sys.version.split()[0],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tests": _FIGURES,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True, default=repr) + "\n")
    terminalreporter.write_line(f"(written to {path})")
