"""Shared (Redis) rate-limit decisions: garrison's one-script-per-decision against peers.

Starts its own redis-server (no persistence, a free loopback port) and measures, in one
run, the cost of one decision (µs, median of several rounds; ratios matter, not absolute
numbers, as this machine is shared and noisy):

- ``PING``: a redis-py round trip (``client.ping()``: the pool, redis-py's command machinery
  and the socket), the floor of any decision made through the client as ``limits`` makes
  them; and a PING on a connection of the thread's own (send and read only), the floor of
  a round trip at all;
- garrison, 1 and 3 windows: ``SharedRatePolicy.acquire`` (what ``RateLimiterActor`` calls:
  the link check plus one EVALSHA of the algorithm's Lua script on the calling thread's own
  connection, Redis TIME as the clock), for ``sliding_log``, ``gcra`` and
  ``sliding_window``;
- garrison, 3 windows, batched: ``acquire_many`` of 32 requests in one pipeline (what the
  actor does when its mailbox is deep), per decision;
- ``limits`` 5.x ``RedisStorage``: ``MovingWindowRateLimiter.hit`` (and the sliding-window
  counter), one ``hit()`` per window, so 3 windows are 3 separate, non-atomic round trips.

Every call is admitted (windows 100/s, 1000/m, 10000/h over 10,000 rotating keys: each key
is hit about once a second). Needs the benchmark extra (``limits``) and ``redis-server``.
Writes benchmarks/results/bench_redis.json.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog
from limits import RateLimitItemPerHour, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from garrison.backends import BackendConfig
from garrison.backends._backend import RedisBackend
from garrison.policies.rate import RateLimitConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "redis"))
from _server import RedisServer

ROUNDS = 5
CALLS = 2000
KEYS = [f"client-{i}" for i in range(10_000)]
ONE = {"1s": 100}
THREE = {"1s": 100, "1m": 1000, "1h": 10_000}
BATCH = 32


def per_call_us(fn: Callable[[str], object], calls: int = CALLS) -> float:
    """Median over rounds of the µs per call of ``fn(key)`` with rotating keys."""
    samples = []
    offset = 0
    for _ in range(ROUNDS):
        keys = [KEYS[(offset + i) % len(KEYS)] for i in range(calls)]
        offset += calls
        started = time.perf_counter()
        for key in keys:
            fn(key)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return round(statistics.median(samples), 2)


def batched_us(policy: Any) -> float:
    samples = []
    offset = 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for start in range(0, CALLS, BATCH):
            batch = [(KEYS[(offset + start + i) % len(KEYS)], 1) for i in range(BATCH)]
            policy.acquire_many(batch, 0.0)
        offset += CALLS
        samples.append((time.perf_counter() - started) / CALLS * 1e6)
    return round(statistics.median(samples), 2)


def garrison_rows(backend: RedisBackend) -> dict[str, float]:
    rows: dict[str, float] = {}
    for algorithm in ("sliding_log", "gcra", "sliding_window"):
        for label, windows in (("1 window", ONE), ("3 windows", THREE)):
            config = RateLimitConfig(limits=windows, algorithm=algorithm)
            policy = backend.rate_policy(config, f"bench-{algorithm}-{len(windows)}")
            rows[f"garrison {algorithm}, {label}"] = per_call_us(
                lambda key, p=policy: p.acquire(key, 0.0)
            )
        config = RateLimitConfig(limits=THREE, algorithm=algorithm)
        policy = backend.rate_policy(config, f"bench-{algorithm}-batched")
        rows[f"garrison {algorithm}, 3 windows, batched by {BATCH}"] = batched_us(policy)
    assert backend.link.health.up, "Redis failed during the benchmark"
    return rows


def limits_rows(url: str) -> dict[str, float]:
    storage = RedisStorage(url)
    one = [RateLimitItemPerSecond(100)]
    three = [
        RateLimitItemPerSecond(100),
        RateLimitItemPerMinute(1000),
        RateLimitItemPerHour(10_000),
    ]
    rows: dict[str, float] = {}
    for name, strategy in (
        ("moving window", MovingWindowRateLimiter(storage)),
        ("sliding window counter", SlidingWindowCounterRateLimiter(storage)),
    ):
        for label, items in (("1 window", one), ("3 windows", three)):

            def hit(key: str, s: Any = strategy, items: list[Any] = items) -> bool:
                return all(s.hit(item, key) for item in items)

            rows[f"limits {name}, {label}"] = per_call_us(hit)
    return rows


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_redis needs redis-server (Debian package redis-server)")
    server = RedisServer(binary).start()
    backend = RedisBackend(BackendConfig(server.url, socket_timeout=1.0), runtime="bench")
    started = time.perf_counter()
    try:
        ping = per_call_us(lambda _key: backend.link.client.ping())
        rows = {"redis PING (redis-py round trip)": ping}
        own = backend.link.client.connection_pool.make_connection()
        rows["redis PING (own connection: send, read)"] = per_call_us(
            lambda _key: (own.send_command("PING"), own.read_response())
        )
        own.disconnect()
        rows.update(garrison_rows(backend))
        rows.update(limits_rows(server.url))
    finally:
        backend.close()
        server.stop()
    ours = rows["garrison sliding_log, 3 windows"]
    theirs = rows["limits moving window, 3 windows"]
    one = round(rows["garrison sliding_log, 1 window"] / rows["limits moving window, 1 window"], 3)
    results = {
        "python": platform.python_version(),
        "redis-py": version("redis"),
        "limits": version("limits"),
        "rounds": ROUNDS,
        "calls_per_round": CALLS,
        "setup": (
            f"one local redis-server; windows {ONE} and {THREE}; {len(KEYS)} rotating keys, "
            "every call admitted"
        ),
        "decision_us": rows,
        "ratio_vs_ping": {k: round(v / ping, 2) for k, v in rows.items()},
        "garrison_3_windows_vs_limits_moving_window_3_hits": round(ours / theirs, 3),
        "garrison_1_window_vs_limits_moving_window_1_hit": one,
        "target": "garrison 3 windows <= 0.6x limits' moving window (3 hits)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{'decision':<52}{'µs':>9}{'x PING':>9}")
    for name, value in rows.items():
        print(f"{name:<52}{value:>9.2f}{value / ping:>9.2f}")
    print(
        "\ngarrison sliding_log (3 windows, one script) / limits moving window (3 hits): "
        f"{results['garrison_3_windows_vs_limits_moving_window_3_hits']}x (target <= 0.6x)"
    )
    print(f"garrison sliding_log (1 window) / limits moving window (1 hit): {one}x")
    out = Path(__file__).parent / "results" / "bench_redis.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
