"""The HTTP client actor against plain ``httpx.Client``, from the same threads, in the same run.

A local uvicorn + starlette server (``/json``: a trivial JSON answer; ``/sleep``: awaits 2 ms,
then answers) runs in a child process on 127.0.0.1, so it does not share the callers' GIL.
For each endpoint, 8 caller threads send requests as fast as they can, through
``rt.http_client(...)`` (a generous GCRA rate limit, a circuit breaker, a bulkhead of 16
workers) and through one shared ``httpx.Client``; rounds of the two alternate so they share
the machine's noise. Each figure is the median over rounds (requests/s) or over all requests
(latency). Prints a table and writes benchmarks/results/http.json. The issue's target: the
client actor keeps >= 0.85x of plain httpx's requests/s.
"""

from __future__ import annotations

import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import structlog

from garrison import BulkheadConfig, CircuitBreakerConfig, RateLimitConfig, Runtime

THREADS = 8
ROUNDS = 5
ROUND_SECONDS = 1.0  # 5 rounds x 1 s = ~5 s per endpoint and client
WARMUP_SECONDS = 0.3
ENDPOINTS = ("/json", "/sleep")


# ---------------------------------------------------------------------------------------------
# The server (child process: ``bench_http.py --serve``)
# ---------------------------------------------------------------------------------------------


def serve() -> None:
    import uvicorn  # noqa: PLC0415  (only the child needs them)
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    async def answer(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def sleepy(_request: Request) -> JSONResponse:
        await asyncio.sleep(0.002)
        return JSONResponse({"ok": True, "slept_ms": 2})

    app = Starlette(routes=[Route("/json", answer), Route("/sleep", sleepy)])
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and
    # without it every keep-alive answer waits ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", access_log=False)
    server = uvicorn.Server(config)
    print(sock.getsockname()[1], flush=True)  # the parent waits for the port
    server.run(sockets=[sock])  # until SIGTERM/SIGINT (uvicorn's graceful shutdown)
    sock.close()


def start_server() -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10.0
    while True:  # the port is bound before uvicorn listens: wait for a first answer
        try:
            httpx.get(f"{url}/json", timeout=1.0).raise_for_status()
            return child, url
        except httpx.TransportError:
            if time.monotonic() > deadline or child.poll() is not None:
                child.kill()
                raise RuntimeError("the benchmark server did not start") from None
            time.sleep(0.02)


def stop_server(child: subprocess.Popen[str]) -> None:
    child.terminate()
    try:
        child.wait(10.0)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------


def run_threads(call: Callable[[], Any], seconds: float) -> tuple[float, list[float]]:
    """Call ``call`` from THREADS threads for ``seconds``; (requests/s, latencies in us)."""
    start_gate = threading.Barrier(THREADS + 1)
    stop = threading.Event()
    per_thread: list[list[float]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def caller(samples: list[float]) -> None:
        start_gate.wait()
        clock = time.perf_counter
        try:
            while not stop.is_set():
                t0 = clock()
                call()
                samples.append((clock() - t0) * 1e6)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=caller, args=(per_thread[i],), name=f"bench-caller-{i}")
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a caller failed: {errors[0]!r}") from errors[0]
    latencies = [us for samples in per_thread for us in samples]
    return len(latencies) / elapsed, latencies


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    child, url = start_server()
    rows: dict[str, dict[str, float]] = {}
    try:
        with Runtime(name="bench-http") as rt, httpx.Client(base_url=url) as bare:
            api = rt.http_client(
                "bench",
                base_url=url,
                rate_limit=RateLimitConfig(per_second=1_000_000, algorithm="gcra"),
                circuit_breaker=CircuitBreakerConfig(),
                bulkhead=BulkheadConfig(max_workers=16),
            )
            for endpoint in ENDPOINTS:
                clients: dict[str, Callable[[], Any]] = {
                    "garrison": lambda e=endpoint: api.get(e).raise_for_status(),
                    "httpx": lambda e=endpoint: bare.get(e).raise_for_status(),
                }
                rates: dict[str, list[float]] = {name: [] for name in clients}
                latencies: dict[str, list[float]] = {name: [] for name in clients}
                for call in clients.values():  # warm both pools up
                    run_threads(call, WARMUP_SECONDS)
                for _ in range(ROUNDS):
                    for name, call in clients.items():
                        rate, samples = run_threads(call, ROUND_SECONDS)
                        rates[name].append(rate)
                        latencies[name].extend(samples)
                g_rps = statistics.median(rates["garrison"])
                h_rps = statistics.median(rates["httpx"])
                g_us = statistics.median(latencies["garrison"])
                h_us = statistics.median(latencies["httpx"])
                rows[endpoint] = {
                    "garrison_rps": round(g_rps, 1),
                    "httpx_rps": round(h_rps, 1),
                    "ratio": round(g_rps / h_rps, 3),
                    "garrison_median_us": round(g_us, 1),
                    "httpx_median_us": round(h_us, 1),
                    "added_us": round(g_us - h_us, 1),
                }
            status = api.status()
            responses = status["http"]["responses"]
            api.close()
    finally:
        stop_server(child)

    print(
        f"{'endpoint':<8} {'garrison rps':>13} {'httpx rps':>10} {'ratio':>6} "
        f"{'garrison p50 us':>16} {'httpx p50 us':>13} {'added us':>9}"
    )
    for endpoint, row in rows.items():
        print(
            f"{endpoint:<8} {row['garrison_rps']:>13} {row['httpx_rps']:>10} {row['ratio']:>6} "
            f"{row['garrison_median_us']:>16} {row['httpx_median_us']:>13} {row['added_us']:>9}"
        )
    print(f"target: ratio >= 0.85 ({THREADS} threads, {ROUNDS} x {ROUND_SECONDS:g} s rounds)")
    out = Path(__file__).parent / "results" / "http.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "httpx": httpx.__version__,
                "threads": THREADS,
                "rounds": ROUNDS,
                "round_seconds": ROUND_SECONDS,
                "client": {
                    "rate_limit": "gcra 1e6/s",
                    "circuit_breaker": "default",
                    "bulkhead_workers": 16,
                },
                "server": "uvicorn + starlette, child process, 127.0.0.1",
                "garrison_responses": {str(k): v for k, v in responses.items()},
                "target_ratio": 0.85,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        serve()
    else:
        main()
