"""First steps with garrison: a runtime, worker actors, operations as messages.

Run it with ``make demo`` (or ``.venv/bin/python examples/first_steps.py``). It starts a
Runtime, sends real operations to worker actors (plain functions, coroutines, failing ones,
timer-delayed ones), shows that every operation gets exactly one outcome, runs a full
pipeline (retry, circuit breaker, rate limiter, timeout, bulkhead, fallback) in front of a
service that fails, goes down and recovers, and stops with no thread left behind.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time

import structlog

from garrison import (
    ActorUnavailable,
    BulkheadConfig,
    CircuitBreakerConfig,
    Execute,
    Future,
    Priority,
    RateLimitConfig,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.actors import WorkerActor


def fetch_user(user_id: int) -> dict[str, object]:
    """A stand-in downstream call: real work (a short wait), sometimes failing."""
    time.sleep(random.uniform(0.005, 0.02))
    if user_id % 5 == 0:
        raise ConnectionError(f"user service refused user {user_id}")
    return {"id": user_id, "name": f"user-{user_id}"}


async def fetch_profile(user_id: int) -> dict[str, object]:
    """A coroutine operation: runs on the runtime's event loop, not on a worker thread."""
    await asyncio.sleep(0.01)
    return {"id": user_id, "bio": f"profile of user {user_id}"}


class FlakyService:
    """A downstream that fails now and then, then goes down, then recovers."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.flaky = True
        self.lock = threading.Lock()

    def get(self, item: int) -> dict[str, object]:
        with self.lock:
            self.calls += 1
            calls, down, flaky = self.calls, self.down, self.flaky
        time.sleep(0.002)
        if down or (flaky and calls % 4 == 0):
            raise ConnectionError(f"service unavailable (call {calls})")
        return {"item": item, "ok": True}


def pipeline_demo(rt: Runtime) -> None:
    service = FlakyService()
    api = rt.pipeline(
        "inventory",
        rate_limit=RateLimitConfig(per_second=200, on_limit="wait", max_wait_time=5),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=5, recovery_timeout=0.3),
        retry=RetryConfig(max_attempts=3, base_delay=0.01, max_delay=0.05),
        timeout=TimeoutConfig(base_timeout=1.0),
        bulkhead=BulkheadConfig(max_workers=4, max_queue=100),
        fallback=lambda error, message: {"item": None, "fallback": type(error).__name__},
    )
    print(f"pipeline: {api}")
    results = [api.call(service.get, i) for i in range(20)]
    fallbacks = sum(1 for r in results if r.get("fallback"))
    print(
        f"20 calls to a service failing 1 call in 4: {20 - fallbacks} answered, "
        f"{fallbacks} fallbacks, {service.calls} service calls (retries included)"
    )
    service.down = True
    outage = [api.call(service.get, i) for i in range(20)]
    breaker = api.status()["circuit_breaker"]
    print(
        f"during an outage: fallbacks {[r.get('fallback') for r in outage[-3:]]} ...; "
        f"breaker {breaker['state']}; service calls so far {service.calls}"
    )
    service.down = service.flaky = False
    time.sleep(0.35)  # the demo waits out the breaker's recovery_timeout on the real clock
    recovered = [api.call(service.get, i) for i in range(5)]
    print(
        f"after recovery: {sum(1 for r in recovered if r.get('ok'))}/5 answered, "
        f"breaker {api.status()['circuit_breaker']['state']}"
    )


def main() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(40),  # errors and up
    )
    threads_before = threading.active_count()
    started = time.perf_counter()

    with Runtime(name="demo") as rt:
        workers = [rt.spawn(WorkerActor, name=f"worker-{i}") for i in range(4)]
        print(f"started {len(workers)} worker actors: {[w.name for w in workers]}")

        # 1. Twenty operations spread over the workers, all in flight at once.
        futures: list[tuple[int, Future[object]]] = []
        for user_id in range(1, 21):
            message = Execute(
                fetch_user,
                args=(user_id,),
                key=f"client-{user_id % 3}",
                priority=Priority.NORMAL,
                name="fetch_user",
            )
            futures.append((user_id, workers[user_id % 4].ask_future(message)))
        ok = failed = 0
        for user_id, future in futures:
            error = future.exception(timeout=5)
            if error is None:
                ok += 1
            else:
                failed += 1
                print(f"  user {user_id:>2}: {type(error).__name__}: {error}")
        print(f"fetch_user x20: {ok} succeeded, {failed} failed, every one answered once")

        # 2. A coroutine operation, awaited from asyncio without blocking the loop.
        async def await_profile() -> tuple[object, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.001)
                    ticks += 1

            task = asyncio.create_task(ticker())
            profile = await workers[0].ask_future(Execute(fetch_profile, args=(7,)))
            slow = await workers[1].ask_future(Execute(time.sleep, args=(0.05,)))
            task.cancel()
            return (profile, slow), ticks

        (profile, _), ticks = asyncio.run(await_profile())
        print(f"awaited {profile} (the event loop ticked {ticks} times meanwhile)")

        # 3. A timer: the scheduler delivers an operation 0.1 s from now, no sleeping actor.
        delivered = threading.Event()
        t0 = time.perf_counter()
        rt.scheduler.schedule(0.1, workers[2], Execute(delivered.set, name="timer"))
        delivered.wait(5)
        print(f"timer delivered its operation after {time.perf_counter() - t0:.3f}s")

        # 4. A stopped actor never leaves a caller hanging.
        workers[3].stop()
        try:
            workers[3].ask(Execute(fetch_user, args=(1,)), timeout=5)
        except ActorUnavailable as error:
            print(f"ask to a stopped worker: {type(error).__name__}: {error}")
        workers[3].tell(Execute(fetch_user, args=(2,)))
        print(f"tell to a stopped worker -> dead letters: {rt.dead_letters.count}")

        # 5. A whole pipeline in front of a service that goes down and comes back.
        pipeline_demo(rt)

    print(
        f"runtime stopped after {time.perf_counter() - started:.2f}s; threads before "
        f"{threads_before}, after {threading.active_count()}"
    )


if __name__ == "__main__":
    main()
