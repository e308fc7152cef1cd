"""Seed section "Adaptive Timeout Management": a timeout that follows mean + 2 stdev.

Run with ``.venv/bin/python examples/seed_adaptive_timeouts.py`` (``--quick`` halves every
latency and the base timeout, for the test suite; the run takes 2-4 s). A pipeline's timeout
stage uses the seed's rule: after 5 successful calls the timeout is ``mean + 2 * stdev`` of
the recent response times, never below ``base_timeout`` nor above ``5 * base_timeout``. A
local async service answers with varying latency and slows down; the timeout follows it.
Then one request hangs: it is cut off at the learned timeout (the coroutine is cancelled)
and not learned from, and the next calls go on as before.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import structlog

from garrison import OperationTimeout, Runtime, TimeoutConfig

# seconds at scale 1: five warm-up calls, a service slowing down, a hang, back to normal
LATENCIES = [0.03, 0.08, 0.02, 0.08, 0.05, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16]
LATENCIES += [1.50, 0.12, 0.14]


async def mock_operation(item: int, latency: float) -> dict[str, object]:
    """The seed's mock: a real asynchronous wait of ``latency`` seconds."""
    await asyncio.sleep(latency)
    return {"processed": item}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter latencies")
    scale = 1.0 if parser.parse_args().quick else 2.0
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    base = 0.1 * scale
    with Runtime(name="adaptive-timeouts") as rt:
        api = rt.pipeline("slow_service", timeout=TimeoutConfig(base_timeout=base, adaptive=True))
        print(f"base_timeout {base:.2f}s (also the floor), cap {5 * base:.2f}s, 5 samples first")
        cut = 0
        for item, needed in enumerate(LATENCIES, 1):
            latency = needed * scale
            s = api.status()["timeout"]
            if s["samples"] < 5:
                rule = f"base timeout ({s['samples']} samples)"
            else:
                rule = f"max(base, mean {s['mean']:.3f} + 2 x stdev {s['stdev']:.3f})"
            t0 = time.perf_counter()
            try:
                api.call(mock_operation, item, latency)
                outcome = f"ok in {time.perf_counter() - t0:.3f}s"
            except OperationTimeout:
                cut += 1
                outcome = f"CUT OFF after {time.perf_counter() - t0:.3f}s"
            print(
                f"call {item:>2}: needs {latency:.3f}s, timeout {s['timeout']:.3f}s = {rule}"
                f" -> {outcome}"
            )
        s = api.status()["timeout"]
        print(
            f"final timeout {s['timeout']:.3f}s from {s['samples']} samples "
            f"(mean {s['mean']:.3f}s, stdev {s['stdev']:.3f}s); {s['timeouts']} timeout(s), "
            f"{s['completed']} completed; timed-out calls are not learned from"
        )
        print(
            f"{cut} call(s) cut off; the hang cost {s['timeout']:.2f}s instead of "
            f"{LATENCIES[12] * scale:.2f}s"
        )


if __name__ == "__main__":
    main()
