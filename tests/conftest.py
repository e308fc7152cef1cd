"""Test discipline shared by every garrison test.

- Every test must leave no thread and no pykka actor behind (``no_leaks``, autouse).
- hypothesis profiles: ``default`` (fast, for ``make test``) and ``ci`` (thorough), chosen
  with the HYPOTHESIS_PROFILE environment variable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pykka
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

LEAK_GRACE_SECONDS = 3.0


def _settle_threads(before: set[threading.Thread], grace: float) -> list[threading.Thread]:
    """Wait (bounded) for threads started during the test to end; return those still alive."""
    deadline = time.monotonic() + grace
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        remaining = deadline - time.monotonic()
        if not extra or remaining <= 0:
            return extra
        extra[0].join(min(remaining, 0.05))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves threads or pykka actors running."""
    before = set(threading.enumerate())
    yield
    actors = pykka.ActorRegistry.get_all()
    if actors:
        pykka.ActorRegistry.stop_all(block=True, timeout=2.0)
    leaked = _settle_threads(before, LEAK_GRACE_SECONDS)
    problems = []
    if actors:
        problems.append(f"actors left running: {[str(a) for a in actors]}")
    if leaked:
        problems.append(f"threads left running: {[t.name for t in leaked]}")
    if problems:
        pytest.fail("; ".join(problems))
