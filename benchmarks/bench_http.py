"""The HTTP client actor against plain ``httpx.Client``, from the same threads, in the same run.

A local uvicorn + starlette server (``/json``: a trivial JSON answer; ``/sleep``: awaits 2 ms,
then answers) runs in a child process on 127.0.0.1, so it does not share the callers' GIL.
For each endpoint, 8 caller threads send requests as fast as they can through:

- ``garrison``: ``rt.http_client(...)`` (a generous GCRA rate limit, a circuit breaker, a
  bulkhead of 16 workers; each worker sends with its own ``httpx.Client``);
- ``async``: the design the issue asked to compare, one ``httpx.AsyncClient`` on the
  runtime's event loop (``rt.loop``), requests as coroutine operations through a pipeline
  with the same stages;
- ``httpx``: one shared ``httpx.Client`` (the issue's reference: target >= 0.85x);
- ``httpx-local``: bare httpx with one client per caller thread (a second reference, since
  garrison's workers each have their own).

Rounds of the four alternate so they share the machine's noise. Each figure is the median
over rounds (requests/s, CPU per request) or over all requests (latency). CPU per request is
read from each thread's CPU clock, summed by thread group (callers, workers, each stage
actor, the event loop), and from /proc for the server (Linux). Prints a table and writes
benchmarks/results/http.json. ``--profile`` instead profiles the client actor under load in
every thread (cProfile on thread CPU clocks) and prints the hot spots per request.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
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
# The stages of the client actor (and of the async variant): generous, so none refuses.
STAGES: dict[str, Any] = {
    "rate_limit": RateLimitConfig(per_second=1_000_000, algorithm="gcra"),
    "circuit_breaker": CircuitBreakerConfig(),
    "bulkhead": BulkheadConfig(max_workers=16),
}


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
# CPU per request, by thread
# ---------------------------------------------------------------------------------------------


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by group (precise thread clocks).

    A group is a thread's name without its trailing number: ``bench-caller``,
    ``WorkerActor``, ``BulkheadActor``, the runtime's event ``loop``.
    """
    groups: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ProcessLookupError):
            continue  # the thread ended meanwhile
        name = thread.name.rstrip("0123456789").rstrip("-")
        name = "loop" if name.endswith("loop") else name
        groups[name] = groups.get(name, 0.0) + seconds
    return groups


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, clock ticks: approximate) of another process (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------


class Round:
    """One round's figures: requests/s, latencies (us), CPU us per request by thread group."""

    def __init__(self, rate: float, latencies: list[float], cpu: dict[str, float]) -> None:
        self.rate = rate
        self.latencies = latencies
        self.cpu = cpu


def run_threads(call: Callable[[], Any], seconds: float, server_pid: int) -> Round:
    """Call ``call`` from THREADS threads for ``seconds``."""
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
    cpu_before, server_before = thread_cpu(), process_cpu(server_pid)
    began = time.perf_counter()
    time.sleep(seconds)
    cpu_after, server_after = thread_cpu(), process_cpu(server_pid)  # callers still alive
    count = sum(len(samples) for samples in per_thread)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a caller failed: {errors[0]!r}") from errors[0]
    latencies = [us for samples in per_thread for us in samples]
    cpu = {
        group: (cpu_after[group] - cpu_before.get(group, 0.0)) / max(count, 1) * 1e6
        for group in cpu_after
    }
    cpu = {group: us for group, us in cpu.items() if us > 0.0}
    cpu["server"] = (server_after - server_before) / max(count, 1) * 1e6
    return Round(len(latencies) / elapsed, latencies, cpu)


class AsyncOnLoop:
    """The rejected design, for the comparison: one ``httpx.AsyncClient`` on ``rt.loop``.

    Requests are coroutine operations through a pipeline with the same stages; the bulkhead
    runs them on the runtime's event loop instead of on workers.
    """

    def __init__(self, rt: Runtime, url: str) -> None:
        self.pipeline = rt.pipeline("bench-async", **STAGES)
        self.loop = rt.loop.loop()

        async def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=url)

        self.client = asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    async def _send(self, endpoint: str) -> httpx.Response:
        response = await self.client.get(endpoint)
        return response.raise_for_status()

    def get(self, endpoint: str) -> httpx.Response:
        return self.pipeline.call(self._send, endpoint)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result()


class PerThreadHttpx:
    """A reference: bare httpx with one ``httpx.Client`` per caller thread (as garrison's
    workers have), sharing one SSL context."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.context = httpx.create_ssl_context()
        self.local = threading.local()
        self.lock = threading.Lock()
        self.clients: list[httpx.Client] = []

    def get(self, endpoint: str) -> httpx.Response:
        client: httpx.Client | None = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(base_url=self.url, verify=self.context)
            with self.lock:
                self.clients.append(client)
        return client.get(endpoint)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def median_cpu(rounds: list[Round]) -> dict[str, float]:
    groups = {group for one in rounds for group in one.cpu}
    return {
        group: round(statistics.median(one.cpu.get(group, 0.0) for one in rounds), 1)
        for group in sorted(groups)
    }


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    child, url = start_server()
    rows: dict[str, dict[str, Any]] = {}
    try:
        with Runtime(name="bench-http") as rt, httpx.Client(base_url=url) as bare:
            api = rt.http_client("bench", base_url=url, **STAGES)
            on_loop = AsyncOnLoop(rt, url)
            local = PerThreadHttpx(url)
            for endpoint in ENDPOINTS:
                clients: dict[str, Callable[[], Any]] = {
                    "garrison": lambda e=endpoint: api.get(e).raise_for_status(),
                    "async": lambda e=endpoint: on_loop.get(e),
                    "httpx": lambda e=endpoint: bare.get(e).raise_for_status(),
                    "httpx-local": lambda e=endpoint: local.get(e).raise_for_status(),
                }
                rounds: dict[str, list[Round]] = {name: [] for name in clients}
                for call in clients.values():  # warm the pools up
                    run_threads(call, WARMUP_SECONDS, child.pid)
                for _ in range(ROUNDS):
                    for name, call in clients.items():
                        rounds[name].append(run_threads(call, ROUND_SECONDS, child.pid))
                rps = {name: statistics.median(r.rate for r in rs) for name, rs in rounds.items()}
                p50 = {
                    name: statistics.median(us for r in rs for us in r.latencies)
                    for name, rs in rounds.items()
                }
                rows[endpoint] = {
                    "garrison_rps": round(rps["garrison"], 1),
                    "httpx_rps": round(rps["httpx"], 1),
                    "ratio": round(rps["garrison"] / rps["httpx"], 3),
                    "async_on_loop_rps": round(rps["async"], 1),
                    "async_ratio": round(rps["async"] / rps["httpx"], 3),
                    "httpx_local_rps": round(rps["httpx-local"], 1),
                    "ratio_vs_httpx_local": round(rps["garrison"] / rps["httpx-local"], 3),
                    "garrison_median_us": round(p50["garrison"], 1),
                    "httpx_median_us": round(p50["httpx"], 1),
                    "added_us": round(p50["garrison"] - p50["httpx"], 1),
                    "cpu_us_per_request": {name: median_cpu(rs) for name, rs in rounds.items()},
                }
            status = api.status()
            responses = status["http"]["responses"]
            api.close()
            on_loop.close()
            local.close()
    finally:
        stop_server(child)
    report(rows, responses)


def report(rows: dict[str, dict[str, Any]], responses: dict[int, int]) -> None:
    print(
        f"{'endpoint':<8} {'garrison rps':>13} {'httpx rps':>10} {'ratio':>6} "
        f"{'async rps':>10} {'ratio':>6} {'local rps':>10} {'ratio':>6} "
        f"{'garrison p50 us':>16} {'httpx p50 us':>13} {'added us':>9}"
    )
    for endpoint, row in rows.items():
        print(
            f"{endpoint:<8} {row['garrison_rps']:>13} {row['httpx_rps']:>10} {row['ratio']:>6} "
            f"{row['async_on_loop_rps']:>10} {row['async_ratio']:>6} "
            f"{row['httpx_local_rps']:>10} {row['ratio_vs_httpx_local']:>6} "
            f"{row['garrison_median_us']:>16} {row['httpx_median_us']:>13} {row['added_us']:>9}"
        )
    print(
        f"target: garrison / httpx >= 0.85 ({THREADS} threads, {ROUNDS} x {ROUND_SECONDS:g} s "
        "rounds); async: httpx.AsyncClient on rt.loop through the same stages (vs httpx); "
        "local: bare httpx with a client per thread (garrison vs it)"
    )
    print("\nCPU us per request by thread group (median over rounds):")
    for endpoint, row in rows.items():
        for name, groups in row["cpu_us_per_request"].items():
            client = sum(us for group, us in groups.items() if group != "server")
            parts = ", ".join(f"{group} {us:g}" for group, us in groups.items())
            print(f"  {endpoint:<7} {name:<9} client total {client:7.1f}: {parts}")
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
                "async": "the same stages, httpx.AsyncClient on rt.loop (coroutine operations)",
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


# ---------------------------------------------------------------------------------------------
# --profile
# ---------------------------------------------------------------------------------------------


def profile() -> None:
    """Profile the client actor under load in every thread (cProfile, thread CPU clocks)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    child, url = start_server()
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profiling(*_args: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(profiler)
        profiler.enable()

    try:
        threading.setprofile(start_profiling)  # every thread started from now on profiles
        try:
            with Runtime(name="bench-http-profile") as rt:
                api = rt.http_client("bench", base_url=url, **STAGES)
                calls = len(run_threads(lambda: api.get("/json"), 3.0, child.pid).latencies)
                api.close()
        finally:
            threading.setprofile(None)
    finally:
        stop_server(child)
    stats = pstats.Stats(profilers[0], stream=io.StringIO())
    for profiler in profilers[1:]:
        stats.add(profiler)
    entries = [
        (tottime, n, f"{Path(file).name}:{line}({name})")
        for (file, line, name), (_, n, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    entries.sort(reverse=True)
    by_module: dict[str, float] = {}
    for tottime, _, where in entries:
        module = where.split(":")[0]
        by_module[module] = by_module.get(module, 0.0) + tottime
    busy = sum(tottime for tottime, _, _ in entries)
    print(f"{calls} requests from {THREADS} threads, CPU time of every thread (profiled):")
    print(f"{busy / calls * 1e6:.1f} us per request under the profiler (which inflates it)")
    print(f"{'us/req':>8} {'calls/req':>10}  function")
    for tottime, n, where in entries[:30]:
        print(f"{tottime / calls * 1e6:>8.2f} {n / calls:>10.1f}  {where}")
    print(f"\n{'us/req':>8}  module")
    for module, tottime in sorted(by_module.items(), key=lambda item: -item[1])[:20]:
        print(f"{tottime / calls * 1e6:>8.2f}  {module}")


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        serve()
    elif "--profile" in sys.argv[1:]:
        profile()
    else:
        main()
