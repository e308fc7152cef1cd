"""Every example in ``examples/`` runs to completion and tells its story.

Each example runs as a subprocess (``--quick`` when it takes it, so the whole file stays well
under a minute), must exit 0, and must print the phrases listed for it in ``EXPECTED``, which
show it did what it says (an example not listed is only checked for its exit code).
``examples/daemon.py`` has its own test (``test_daemon.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED: dict[str, list[str]] = {
    "first_steps.py": ["fetch_user x20", "after recovery", "runtime stopped"],
    "supervision_tree.py": ["sessions crashed", "one_for_all restart", "after stop"],
    "seed_rate_limited_api.py": ["the 1s window is full", "served in priority order: True"],
    "seed_custom_throttling.py": [
        "alice sent 8: 5 admitted, 3 rejected",
        "bob   sent 3: 3 admitted",
    ],
    "seed_exponential_backoff.py": [
        "success after 4 attempt(s)",
        "not retried",
        "RetriesExhausted",
    ],
    "seed_retry_with_breaker.py": ["garrison.breaker.opened", "CircuitOpen", "breaker: closed"],
    "seed_breaker_manager.py": [
        "circuit_open Service temporarily unavailable",
        "Using cached data",
    ],
    "seed_bulkheads.py": ["3 rejected", "3 refused at once", "at most 3 queries ran"],
    "seed_adaptive_timeouts.py": ["mean", "CUT OFF", "not learned from"],
    "seed_reliability_config.py": ["a typo is refused", "breaker opens after 3 failures", "open"],
    "seed_monitoring.py": [
        '"alert": true',
        "garrison.retry.multiple_retries",
        "garrison.reliability_metric",
        "garrison_retry_",
    ],
    "seed_fallbacks.py": ["'used_fallback': True", "Both primary and fallback failed", "re-raised"],
}


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if p.name != "daemon.py")


@pytest.mark.timeout(70)
@pytest.mark.parametrize("path", examples(), ids=lambda p: p.name)
def test_example_runs(path: Path) -> None:
    command = [sys.executable, str(path)]
    if "--quick" in path.read_text(encoding="utf-8"):
        command.append("--quick")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=EXAMPLES.parent, check=False
    )
    assert done.returncode == 0, f"{path.name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    for phrase in EXPECTED.get(path.name, []):
        assert phrase in done.stdout, f"{path.name}: {phrase!r} not in its output:\n{done.stdout}"
