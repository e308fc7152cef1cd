"""A long-running service embedding garrison: metrics, health, status, work, graceful drain.

Run it with ``.venv/bin/python examples/daemon.py --port 8080`` (``--port 0`` picks a free
port). The first line on stdout says where it listens::

    listening on http://127.0.0.1:8080

It serves, on 127.0.0.1 only (starlette on uvicorn, the ``daemon`` extra):

- ``GET /metrics``: Prometheus text, garrison's families (``garrison.observability.metrics``,
  collected off the event loop) plus this service's ``daemon_work_requests_total``;
- ``GET /healthz``: ``200 {"status": "ok"}`` while running, ``503 {"status": "draining"}``
  once a shutdown has begun;
- ``GET /status``: JSON with the supervision tree (``rt.tree()``), each pipeline's
  ``status()`` and the work counters (``garrison status http://127.0.0.1:8080`` renders it);
- ``POST /work`` with ``{"n": 3, "delay": 0.2, "fail": false}``: runs a simulated downstream
  call (it sleeps ``delay`` seconds, default a few ms, and raises ``ConnectionError`` when
  ``fail``) through the ``downstream`` pipeline (retry, circuit breaker, rate limiter,
  timeout, bulkhead) with ``await api.acall(...)`` and answers ``200 {"n": 3, "value": 6,
  ...}``; ``502`` when the call failed, ``503`` when garrison refused it (breaker open, rate
  limited, bulkhead full) or the service is draining, ``504`` when it timed out.

On SIGTERM or SIGINT it drains: new work is refused (``/work`` and ``/healthz`` answer 503),
operations in flight get up to ``--drain-timeout`` seconds (default 10) to finish and be
answered, then uvicorn stops, the runtime stops, and the last line on stdout is::

    drained: 30/30 in-flight operations completed

(operations completed / operations accepted since start; fewer completed means the deadline
passed and the rest were answered 503). The exit status is 0. A second signal skips the wait.

Logs are JSON lines on stderr: the example configures structlog (garrison never does) and
routes uvicorn's stdlib logging through the same renderer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from garrison import (
    ActorUnavailable,
    OperationTimeout,
    Rejected,
    RetriesExhausted,
    Runtime,
)
from garrison.observability.metrics import metrics_app

HOST = "127.0.0.1"
PIPELINE = "downstream"
MAX_DELAY = 5.0

# The seed's reliability_config layout, inline; a file works the same way
# (Runtime.from_config("reliability.toml")).
CONFIG: dict[str, Any] = {
    "runtime": {"name": "garrison-daemon"},
    "rate_limiting": {"per_second": 500, "per_minute": 20_000},
    "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": 5.0},
    "retry": {
        "max_attempts": 3,
        "base_delay": 0.02,
        "max_delay": 0.2,
        "retry_exceptions": ["ConnectionError"],
    },
    "timeout": {"base_timeout": 10.0, "adaptive": False},
    "bulkhead": {"max_workers": 16, "max_concurrent": 16, "max_queue": 500},
}

log = structlog.get_logger("daemon")


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr, for structlog events (garrison's) and stdlib logging (uvicorn's)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


# -- the simulated downstream -----------------------------------------------------------------


def call_downstream(n: int, delay: float, fail: bool) -> dict[str, Any]:
    """A stand-in for a remote call: runs on one of the bulkhead's worker threads."""
    started = time.monotonic()
    time.sleep(delay)
    if fail:
        raise ConnectionError(f"downstream refused item {n}")
    return {"n": n, "value": n * 2, "took": round(time.monotonic() - started, 4)}


def jsonable(value: Any) -> Any:
    """``value`` with only JSON types: inf/-inf as strings, nan as null, the rest as str."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return str(value)


# -- the service ------------------------------------------------------------------------------


class Daemon:
    """The HTTP endpoints, the work counters and the drain."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.api = rt.pipeline(PIPELINE)  # built from CONFIG's defaults
        self.registry = CollectorRegistry()
        self.served = Counter(
            "daemon_work_requests",
            "POST /work requests by outcome (ok, failed, rejected, timeout, draining, bad_request)",
            ["outcome"],
            registry=self.registry,
        )
        self.metrics = metrics_app(rt, registry=self.registry, timeout=1.0)
        self.draining = False
        self.accepted = 0
        self.completed = 0
        self.abandoned = 0
        self.operations: set[asyncio.Task[Any]] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.app = Starlette(
            routes=[
                Route("/metrics", self.metrics),  # an ASGI app: GET/HEAD, collected in a thread
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/status", self.status, methods=["GET"]),
                Route("/work", self.work, methods=["POST"]),
            ]
        )

    @property
    def in_flight(self) -> int:
        return self.accepted - self.completed - self.abandoned

    async def healthz(self, request: Request) -> JSONResponse:
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def status(self, request: Request) -> JSONResponse:
        def read() -> dict[str, Any]:  # asks actors and waits: off the event loop
            tree = self.rt.tree() if self.rt.state == "running" else None
            pipelines = {}
            for name, pipeline in self.rt.pipelines().items():
                try:
                    pipelines[name] = pipeline.status(timeout=2.0)
                except Exception as error:
                    pipelines[name] = {"error": f"{type(error).__name__}: {error}"}
            return {"tree": tree, "pipelines": pipelines}

        body = await asyncio.to_thread(read)
        body["runtime"] = {"name": self.rt.name, "state": self.rt.state}
        body["draining"] = self.draining
        body["work"] = {
            "accepted": self.accepted,
            "completed": self.completed,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
        }
        return JSONResponse(jsonable(body))

    async def work(self, request: Request) -> JSONResponse:
        if self.draining:
            self.served.labels("draining").inc()
            return JSONResponse({"error": "draining: not accepting work"}, status_code=503)
        try:
            body = await request.json()
            n, delay, fail = self._parse(body)
        except (ValueError, TypeError) as error:
            self.served.labels("bad_request").inc()
            return JSONResponse({"error": str(error)}, status_code=400)
        if self.draining:  # a shutdown began while the body was read
            self.served.labels("draining").inc()
            return JSONResponse({"error": "draining: not accepting work"}, status_code=503)
        # Accepted: from here on this request is answered, whatever happens.
        self.accepted += 1
        self.idle.clear()
        operation = asyncio.ensure_future(
            self.api.options(name="call_downstream").acall(call_downstream, n, delay, fail)
        )
        self.operations.add(operation)
        try:
            status, answer, outcome = await self._outcome(operation)
        finally:
            self.operations.discard(operation)
            if self.in_flight == 0:
                self.idle.set()
        self.served.labels(outcome).inc()
        return JSONResponse(jsonable(answer), status_code=status)

    async def _outcome(self, operation: asyncio.Future[Any]) -> tuple[int, Any, str]:
        try:
            result = await operation
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the request itself was cancelled (the server is going down)
            # the drain deadline passed, or a second signal came (see drain())
            self.abandoned += 1
            answer = {"error": "abandoned: the service stopped before the operation finished"}
            return 503, answer, "abandoned"
        except Rejected as error:  # breaker open, rate limited, bulkhead full
            self.completed += 1
            retry_after = getattr(error, "retry_after", None)
            return 503, {"error": str(error), "retry_after": retry_after}, "rejected"
        except OperationTimeout as error:
            self.completed += 1
            return 504, {"error": str(error)}, "timeout"
        except (RetriesExhausted, ConnectionError, ActorUnavailable) as error:
            self.completed += 1
            return 502, {"error": f"{type(error).__name__}: {error}"}, "failed"
        self.completed += 1
        return 200, result, "ok"

    @staticmethod
    def _parse(body: Any) -> tuple[int, float, bool]:
        if not isinstance(body, dict):
            raise TypeError('expected a JSON object like {"n": 1}')
        n = body.get("n")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an integer, got {n!r}")
        delay = body.get("delay", random.uniform(0.002, 0.01))
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise TypeError(f"delay must be a number of seconds, got {delay!r}")
        if not 0 <= delay <= MAX_DELAY:
            raise ValueError(f"delay must be between 0 and {MAX_DELAY} seconds, got {delay}")
        fail = body.get("fail", False)
        if not isinstance(fail, bool):
            raise TypeError(f"fail must be true or false, got {fail!r}")
        return n, float(delay), fail

    async def drain(self, deadline: float, force: asyncio.Event) -> None:
        """Refuse new work, then wait (until ``deadline`` or ``force``) for work in flight."""
        self.draining = True
        log.info("daemon.draining", in_flight=self.in_flight, accepted=self.accepted)
        waiters = [asyncio.ensure_future(self.idle.wait()), asyncio.ensure_future(force.wait())]
        try:
            await asyncio.wait(
                waiters,
                timeout=max(deadline - time.monotonic(), 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self.operations:  # the deadline passed: answer the rest with 503
            log.warning("daemon.drain_deadline_passed", abandoning=len(self.operations))
            for operation in list(self.operations):
                operation.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 1.0)


class QuietSignalsServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (it drains before it stops)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.set_inheritable(True)
    return sock


async def serve(rt: Runtime, port: int, drain_timeout: float) -> int:
    daemon = Daemon(rt)
    sock = bind(port)
    config = uvicorn.Config(
        daemon.app,
        host=HOST,
        port=sock.getsockname()[1],
        log_level="warning",
        log_config=None,  # keep our JSON logging
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5.0,
    )
    server = QuietSignalsServer(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    started_by = time.monotonic() + 10.0
    while not server.started and not serving.done() and time.monotonic() < started_by:
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5.0)
        print(f"daemon: could not serve on {HOST}:{port}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    print(f"listening on http://{HOST}:{port}", flush=True)
    log.info("daemon.listening", url=f"http://{HOST}:{port}", pid=os.getpid())

    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        log.info("daemon.signal", signal=signum.name, again=stop.is_set())
        if stop.is_set():
            force.set()  # a second signal: do not wait for work in flight
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, serving}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        started_draining = time.monotonic()
        await daemon.drain(started_draining + drain_timeout, force)
        server.should_exit = True
        await serving
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    await asyncio.to_thread(rt.stop)
    log.info(
        "daemon.stopped",
        accepted=daemon.accepted,
        completed=daemon.completed,
        abandoned=daemon.abandoned,
        drain_seconds=round(time.monotonic() - started_draining, 3),
    )
    print(
        f"drained: {daemon.completed}/{daemon.accepted} in-flight operations completed",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight operations may take to finish on SIGTERM (default: 10)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535 or not args.drain_timeout >= 0:
        parser.error("--port must be 0..65535 and --drain-timeout >= 0")
    configure_logging()
    rt = Runtime.from_config(CONFIG).start()
    try:
        return asyncio.run(serve(rt, args.port, args.drain_timeout))
    finally:
        rt.stop()  # idempotent; covers a failed start


if __name__ == "__main__":
    sys.exit(main())
