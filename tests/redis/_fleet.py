"""Helpers of the Redis tests: bounded waits for what the backend's threads do in real time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from garrison import Runtime


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def drained(rt: Runtime) -> None:
    """Wait until the backend's io thread has done everything queued so far."""
    assert rt.backend is not None
    done = threading.Event()
    rt.backend.fleet._jobs.put(done.set)
    assert done.wait(5)
