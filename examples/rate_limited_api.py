"""Seed section "Rate Limited API Calls", end to end over real HTTP: ``rt.http_client``.

Run with ``.venv/bin/python examples/rate_limited_api.py`` (``--quick``: a smaller burst, for
the test suite; a few seconds either way). It starts a tiny uvicorn + starlette API on
127.0.0.1 that answers ``429 Too Many Requests`` with ``Retry-After: 1`` now and then (its
6th and 16th requests), and builds the seed's ``RateLimitedAPINode`` as
``rt.http_client("api_client", ...)`` with the seed's options as keyword arguments (10/s,
100/min, 1000/h, adaptive throttling, a priority queue, ``retry_on_rate_limit``, 3 retries).

A burst of low-priority requests fills the 1 s window and queues in the limiter; then the
seed's ``request_many`` (high, normal, low) arrives and its high and normal requests overtake
the queued burst (its low one waits its turn behind it). Each 429 pauses the limiter for the
server's Retry-After, slows the adaptive throttle down, and is retried no earlier than the
server asked (a retry queues in the limiter again). The server's own timestamps show it.
Last, a 503 "down for maintenance" asking for an hour (``Retry-After: 3600``) is not waited
for: it fails at once with ``RetryAfterTooLong``, and the limiter pauses only for
``max_retry_after`` (by default the seed's ``max_wait_time``, 60 s).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from garrison import Runtime
from garrison.http import RetryAfterTooLong

RETRY_AFTER = 1  # seconds, in the server's 429 answers
LIMITED_HITS = (6, 16)  # the server's n-th requests that get a 429


@dataclass
class LocalAPI:
    """The stand-in for https://api.example.com; records (time, path, status) of each hit."""

    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[tuple[float, str, int]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def data(request: Request) -> JSONResponse:
            with self.lock:
                count = len(self.hits) + 1
                status = 429 if count in LIMITED_HITS else 200
                self.hits.append((time.monotonic() - self.started, request.url.path, status))
            if status == 429:
                return JSONResponse(
                    {"error": "slow down"}, 429, headers={"Retry-After": str(RETRY_AFTER)}
                )
            return JSONResponse({"id": request.path_params["item"], "hit": count})

        async def maintenance(_request: Request) -> JSONResponse:
            return JSONResponse({"error": "maintenance"}, 503, headers={"Retry-After": "3600"})

        return Starlette(routes=[Route("/data/{item}", data), Route("/maintenance", maintenance)])


class Server:
    """uvicorn on a free 127.0.0.1 port, in a thread; ``with`` stops it and joins the thread."""

    def __init__(self, app: Starlette) -> None:
        # IPPROTO_TCP so that asyncio sets TCP_NODELAY (else ~40 ms per keep-alive answer)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="local-api"
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10.0
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local API did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10.0)
        self.sock.close()


def describe(outcome: httpx.Response | BaseException) -> str:
    if isinstance(outcome, httpx.Response):
        return f"{outcome.status_code} {outcome.json()}"
    return f"{type(outcome).__name__}: {outcome}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller burst (test suite)")
    burst_size = 20 if parser.parse_args().quick else 24
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    api = LocalAPI()
    with Server(api.app()) as server, Runtime(name="rate-limited-api") as rt:
        client = rt.http_client(
            "api_client",
            base_url=server.url,
            rate_limit_per_second=10,
            rate_limit_per_minute=100,
            rate_limit_per_hour=1000,
            throttle_strategy="adaptive",
            backoff_multiplier=1.5,
            max_wait_time=60.0,
            queue_size=1000,
            queue_timeout=300,
            priority_queue=True,
            retry_on_rate_limit=True,
            max_retries=3,
            retry_delay=0.2,  # the seed's is 5.0; a 429 waits max(this, Retry-After)
        )
        print(f"local API at {server.url}; client {client!r}")

        t0 = time.monotonic()
        burst = [client.submit("GET", f"/data/b{i}", priority="low") for i in range(burst_size)]
        time.sleep(0.05)  # the burst is in: the 1 s window is full, the rest queues
        depth = client.status()["rate_limiter"]["queue_depth"]
        print(f"burst of {burst_size} low-priority requests; {depth} wait in the limiter")

        seed_requests: list[dict[str, Any]] = [
            {"endpoint": "/data/1", "priority": "high"},
            {"endpoint": "/data/2", "priority": "normal"},
            {"endpoint": "/data/3", "priority": "low"},
        ]
        outcomes = client.request_many(seed_requests)
        print(f"request_many answered in {time.monotonic() - t0:.2f}s, in input order:")
        for request, outcome in zip(seed_requests, outcomes, strict=True):
            print(f"  {request['priority']:>6} {request['endpoint']}: {describe(outcome)}")
        burst_outcomes: list[httpx.Response | BaseException] = []
        for future in burst:
            try:
                burst_outcomes.append(future.get(timeout=30))
            except Exception as error:  # an outcome like any other
                burst_outcomes.append(error)
        ok = sum(isinstance(o, httpx.Response) and o.status_code == 200 for o in burst_outcomes)
        print(f"burst: {ok}/{burst_size} answered 200 after {time.monotonic() - t0:.2f}s")

        with api.lock:
            hits = list(api.hits)
        print("what the server saw (t, path, status):")
        for at, path, status in hits:
            print(f"  t={at:5.2f}s {path:<10} {status}")
        first = {}
        for at, path, _status in hits:
            first.setdefault(path, at)
        seed_at = max(first["/data/1"], first["/data/2"])
        overtaken = sum(first[f"/data/b{i}"] > seed_at for i in range(burst_size))
        print(
            f"high and normal were sent before {overtaken} earlier low-priority burst "
            f"requests: {overtaken > 0}; the seed's low one waited its turn, sent at "
            f"t={first['/data/3']:.2f}s"
        )
        for at, path, status in hits:
            if status != 429:
                continue
            retry = next(t for t, p, s in hits if p == path and t > at)
            print(
                f"429 on {path} at t={at:.2f}s (Retry-After: {RETRY_AFTER}) -> retried at "
                f"t={retry:.2f}s, {retry - at:.2f}s later: honoured {retry - at >= RETRY_AFTER}"
            )

        status = client.status()
        limiter = status["rate_limiter"]
        print(
            f"limiter: {limiter['feedbacks']} feedback(s) from 429s, rate factor "
            f"{limiter['rate_factor']:.2f} (adaptive), effective limits "
            f"{limiter['effective_limits']}, admitted {limiter['admitted']}, "
            f"rejected {limiter['rejected']}"
        )
        print(f"client: responses by status {status['http']['responses']}")

        t1 = time.monotonic()
        try:
            client.get("/maintenance")
        except RetryAfterTooLong as error:
            print(
                f"503 with Retry-After: {error.retry_after:g}s -> {type(error).__name__} after "
                f"{time.monotonic() - t1:.2f}s; the limiter pauses {error.max_retry_after:g}s "
                f"(max_retry_after), not an hour"
            )
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(f"runtime and server stopped; threads left: {len(left)} {left}")


if __name__ == "__main__":
    main()
