"""The live server of the HTTP client tests: uvicorn + starlette on 127.0.0.1, in a thread.

The server records every request it sees (monotonic and wall time, method, path, query), so
limits, priorities and Retry-After are asserted on the server's side of the wire. Endpoints
under ``/reset/{mode}/{tag}`` break the connection for the first ``n`` requests of a path
(``mode``: ``before``, a TCP reset before any byte of the answer; ``headers``, part of the
status line and headers then close; ``body``, the headers and part of a body then close),
which only the raw socket can do: a small ASGI wrapper in front of starlette reaches it
through uvicorn's h11 protocol (pinned with ``http="h11"``).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from garrison import Runtime
from garrison.http import HttpClient, build_http_client

# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    query: dict[str, str]
    monotonic: float
    wall: float


@dataclass
class Recorder:
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[Hit] = field(default_factory=list)
    per_path: Counter[str] = field(default_factory=Counter)
    outage: bool = False
    date_targets: dict[str, float] = field(default_factory=dict)

    def record(self, request: Request) -> int:
        hit = Hit(
            request.method,
            request.url.path,
            dict(request.query_params),
            time.monotonic(),
            time.time(),
        )
        with self.lock:
            self.hits.append(hit)
            self.per_path[hit.path] += 1
            return self.per_path[hit.path]

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
            self.per_path.clear()
            self.outage = False
            self.date_targets.clear()

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]


def make_app(recorder: Recorder) -> Starlette:
    async def ok(request: Request) -> Response:
        recorder.record(request)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
                "json": (await request.json()) if body else None,
                "x_test": request.headers.get("x-test"),
                "x_default": request.headers.get("x-default"),
            }
        )

    async def slow(request: Request) -> Response:
        recorder.record(request)
        await asyncio.sleep(float(request.query_params.get("delay", "0.3")))
        return JSONResponse({"slow": True})

    async def status(request: Request) -> Response:
        recorder.record(request)
        code = int(request.path_params["code"])
        after = request.query_params.get("after")
        headers = {"Retry-After": after} if after is not None else None
        return JSONResponse({"status": True}, status_code=code, headers=headers)

    async def burst(request: Request) -> Response:
        """The first ``n`` requests of a path fail with 500, then 200."""
        count = recorder.record(request)
        if count <= int(request.query_params.get("n", "3")):
            return JSONResponse({"error": "burst"}, status_code=500)
        return JSONResponse({"ok": True})

    async def limited(request: Request) -> Response:
        """The first ``n`` requests of a path get 429 Retry-After: ``after`` seconds."""
        count = recorder.record(request)
        if count <= int(request.query_params.get("n", "1")):
            after = request.query_params.get("after", "1")
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": after})
        return JSONResponse({"ok": True})

    async def limited_date(request: Request) -> Response:
        """The first request of a path gets 429 with Retry-After as an HTTP date."""
        count = recorder.record(request)
        if count == 1:
            target = math.ceil(time.time()) + 1.0  # HTTP dates have whole seconds
            with recorder.lock:
                recorder.date_targets[request.url.path] = target
            header = email.utils.formatdate(target, usegmt=True)
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": header})
        return JSONResponse({"ok": True})

    async def limited_past(request: Request) -> Response:
        """The first request of a path gets 429 with Retry-After as an HTTP date in the past."""
        count = recorder.record(request)
        if count == 1:
            header = email.utils.formatdate(time.time() - 3600.0, usegmt=True)
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": header})
        return JSONResponse({"ok": True})

    async def cookie_set(request: Request) -> Response:
        recorder.record(request)
        response = JSONResponse({"set": True})
        response.set_cookie("session", request.query_params.get("value", "s1"))
        return response

    async def cookie_echo(request: Request) -> Response:
        recorder.record(request)
        await asyncio.sleep(float(request.query_params.get("delay", "0")))
        return JSONResponse({"session": request.cookies.get("session")})

    async def outage(request: Request) -> Response:
        recorder.record(request)
        if recorder.outage:
            return JSONResponse({"error": "down"}, status_code=503)
        return JSONResponse({"ok": True})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route("/ok", ok, methods=methods),
            Route("/ok/{rest:path}", ok, methods=methods),
            Route("/slow", slow, methods=methods),
            Route("/status/{code:int}", status, methods=methods),
            Route("/burst/{tag}", burst),
            Route("/limited/{tag}", limited),
            Route("/limited-date/{tag}", limited_date),
            Route("/limited-past/{tag}", limited_past),
            Route("/outage", outage),
            Route("/cookie/set", cookie_set),
            Route("/cookie/echo/{tag}", cookie_echo),
        ]
    )


RESET_MODES = ("before", "headers", "body")
_PARTIAL = {
    "headers": b"HTTP/1.1 200 OK\r\nContent-Type: appl",
    "body": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        b'\r\n{"partial": '
    ),
}


def with_resets(app: Any, recorder: Recorder) -> Any:
    """Serve ``/reset/{mode}/{tag}?n=K`` here (the first K requests of a path break), the rest
    with ``app``."""

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/reset/"):
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        await request.body()  # the whole request has arrived before the connection breaks
        count = recorder.record(request)
        mode = path.split("/")[2]
        if count > int(request.query_params.get("n", "1")) or mode not in RESET_MODES:
            await JSONResponse({"ok": True, "method": request.method})(scope, receive, send)
            return
        # uvicorn's h11 protocol passes its RequestResponseCycle.send: the cycle owns the
        # transport (asyncio), the only way to break a connection mid-answer.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        assert transport is not None, "uvicorn no longer exposes the transport: update the test"
        if mode == "before":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # RST, nothing sent
        else:
            transport.write(_PARTIAL[mode])
            transport.close()  # flushes what was written, then FIN
        while (await receive())["type"] != "http.disconnect":
            pass  # uvicorn sees the disconnect and does not answer 500 on a closed socket

    return outer


@dataclass
class Server:
    url: str
    recorder: Recorder


@pytest.fixture(scope="module")
def live_server() -> Iterator[Server]:
    recorder = Recorder()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        with_resets(make_app(recorder), recorder),
        http="h11",
        log_level="warning",
        lifespan="off",
        ws="none",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="test-http-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        assert thread.is_alive(), "the test server died while starting"
        assert time.monotonic() < deadline, "the test server did not start within 10 s"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}", recorder)
    finally:
        server.should_exit = True
        thread.join(10.0)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


@pytest.fixture
def server(live_server: Server) -> Server:
    live_server.recorder.reset()
    return live_server


@pytest.fixture
def wait_for_retired_workers() -> Callable[[HttpClient], None]:
    """Wait (bounded) until the workers a timeout retired came back from their calls."""

    def wait(api: HttpClient) -> None:
        deadline = time.monotonic() + 5.0
        while api.pipeline.status()["bulkhead"]["stuck_workers"]:
            assert time.monotonic() < deadline, "the retired worker never came back"
            time.sleep(0.02)

    return wait


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(name="http-test") as runtime:
        yield runtime


@pytest.fixture
def client(rt: Runtime, server: Server) -> Iterator[Callable[..., HttpClient]]:
    """Build clients on ``rt`` against the server (``base_url`` may be overridden)."""
    made: list[HttpClient] = []

    def make(name: str = "api", **options: Any) -> HttpClient:
        base_url = options.pop("base_url", server.url)
        api = build_http_client(rt, name, base_url, **options)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()
