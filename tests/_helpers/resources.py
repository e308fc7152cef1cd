"""Resource probes for the reliability tests: RSS, thread counts, least-squares slopes."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

__all__ = ["MB", "Sampler", "rss_bytes", "slope"]

MB = 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points (0.0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


class Sampler:
    """Samples RSS and the thread count every ``interval`` seconds on a thread of its own."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, rss, threads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reliability-sampler")
        self._started = 0.0

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        self.samples.append(
            (time.monotonic() - self._started, rss_bytes(), threading.active_count())
        )

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    @property
    def peak_rss(self) -> int:
        return max(rss for _, rss, _ in self.samples)

    def after(self, fraction: float) -> list[tuple[float, int, int]]:
        """The samples of the run's last ``1 - fraction`` (past the warm-up)."""
        if not self.samples:
            return []
        end = self.samples[-1][0]
        return [s for s in self.samples if s[0] >= end * fraction]
