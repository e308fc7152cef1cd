"""The concurrency tests, run again with ``sys.setswitchinterval(1e-6)``.

Python switches threads every 5 ms by default, which hides most races between two lines of
code; at 1 µs a thread can lose the interpreter between almost any two bytecodes. This test
runs the chaos tests (supervision, pipelines, and this suite's 10,000-operation chaos) and
the tests that hammer actors, refs, futures, the scheduler and pipelines from several
threads in a separate pytest process whose whole session runs at that interval (the
``_helpers.tiny_switch`` plugin sets it and restores it), and fails with that run's report
if any of them fails. The no-leak fixture of tests/conftest.py applies there as everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.reliability

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
RESULTS = TESTS / "reliability" / ".results"
SELECTION = [
    "tests/supervision/test_chaos.py",
    "tests/pipeline/test_pipeline_chaos.py",
    "tests/supervision/test_supervisor.py",
    "tests/core/test_ref.py",
    "tests/core/test_future.py",
    "tests/core/test_scheduler.py",
    "tests/core/test_runtime.py",
    "tests/actors",
    "tests/pipeline/test_pipeline.py",
    "tests/pipeline/test_seed_scenarios.py",
]


def run_under_tiny_switch(paths: list[str], figures: Any, log_name: str) -> None:
    """Run ``paths`` in a pytest process at a 1 µs switch interval; fail with its report."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "_helpers.tiny_switch",
        "-p",
        "no:cacheprovider",
        "-m",
        "",  # no marker filter: reliability tests may be in the selection
        *paths,
    ]
    started = time.monotonic()
    run = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840, check=False
    )
    took = time.monotonic() - started
    lines = run.stdout.strip().splitlines()
    summary = next(
        (line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), ""
    )
    figures.update(selection=paths, summary=summary.strip("= "), seconds=round(took, 1))
    log = RESULTS / log_name
    log.parent.mkdir(exist_ok=True)
    log.write_text(run.stdout + run.stderr)
    # The first failure says the most (a leak fails every later test's teardown too).
    first = run.stdout.find("\n___")
    report = f"full output: {log}\n" + run.stdout[first : first + 6000] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "switch interval: 1e-06 s" in run.stdout, report


@pytest.mark.timeout(900)
def test_concurrency_tests_pass_with_a_one_microsecond_switch_interval(figures: Any) -> None:
    run_under_tiny_switch(SELECTION, figures, "switch_interval.log")


@pytest.mark.timeout(600)
def test_chaos_at_scale_with_a_one_microsecond_switch_interval(figures: Any) -> None:
    run_under_tiny_switch(
        ["tests/reliability/test_chaos_at_scale.py"], figures, "switch_interval_chaos.log"
    )
