"""Operations with planned misbehaviour, and the threads that send them through a pipeline.

Each operation has an id and a plan drawn from a seeded rng; the plan says what the
downstream does when the operation runs:

- ``ok``: returns ``("ok", op_id)`` at once; ``slow``: the same after 1-8 ms;
- ``fail``: always raises :class:`OpError` (a ConnectionError, so the retry stage retries it);
- ``flaky``: raises OpError on its first run, then returns;
- ``stuck``: runs ``stuck_for`` seconds with a per-call timeout of ``per_call_timeout``;
- ``hang``: blocks ``hang_for`` seconds (far past its per-call timeout), holding its worker.

:class:`Workload` counts how many times each operation ran (across threads, retries and
restarts), which is what "no operation runs twice unless retried" is checked against.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _helpers.chaos import WAIT, outcome
from garrison import Future
from garrison._messages import Execute
from garrison.pipeline import Pipeline

__all__ = ["OpError", "Sent", "Workload", "run_senders"]


class OpError(ConnectionError):
    """An operation's own failure (a ConnectionError, so the retry stage retries it)."""


class Workload:
    """The operations: their plans, and how many times each one ran (any thread)."""

    def __init__(
        self,
        count: int,
        seed: int,
        plans: Sequence[tuple[str, float]],
        *,
        stuck_for: float = 0.025,
        per_call_timeout: float = 0.008,
        hang_for: tuple[float, float] = (0.2, 0.6),
    ) -> None:
        rng = random.Random(seed)
        names = [name for name, _ in plans]
        weights = [weight for _, weight in plans]
        self.plans = rng.choices(names, weights, k=count)
        self.delays = [rng.uniform(0.001, 0.008) for _ in range(count)]
        self.hangs = [rng.uniform(*hang_for) for _ in range(count)]
        self.stuck_for = stuck_for
        self.per_call_timeout = per_call_timeout
        self.runs: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.released = threading.Event()  # set: hanging operations return at once

    def op(self, op_id: int) -> tuple[str, int]:
        with self._lock:
            self.runs[op_id] += 1
            run = self.runs[op_id]
        plan = self.plans[op_id]
        if plan == "slow":
            time.sleep(self.delays[op_id])
        elif plan == "stuck":
            time.sleep(self.stuck_for)
        elif plan == "hang":
            self.released.wait(self.hangs[op_id])
        elif plan == "fail" or (plan == "flaky" and run == 1):
            raise OpError(f"op {op_id} failed (run {run})")
        return ("ok", op_id)

    def timeout_of(self, op_id: int) -> float | None:
        """The per-call timeout of operation ``op_id`` (only stuck and hanging ones have one)."""
        return self.per_call_timeout if self.plans[op_id] in ("stuck", "hang") else None

    def execute(self, op_id: int) -> Execute:
        """The message of operation ``op_id`` (for tells)."""
        return Execute(self.op, args=(op_id,), name=f"op-{op_id}", timeout=self.timeout_of(op_id))

    def submit(self, api: Pipeline, op_id: int) -> Future[Any]:
        """Ask the pipeline to run operation ``op_id`` (through its public API)."""
        view = api.options(name=f"op-{op_id}", timeout=self.timeout_of(op_id))
        return view.submit(self.op, op_id)


@dataclass
class Sent:
    asks: list[tuple[int, Future[Any]]] = field(default_factory=list)
    tells: list[int] = field(default_factory=list)


def run_senders(
    api: Pipeline,
    workload: Workload,
    seed: int,
    *,
    threads: int,
    per_thread: int,
    window: int,
    send_pause: tuple[float, float],
    first_id: int = 0,
    ask_share: float = 0.6,
    wait: float = WAIT,
) -> tuple[Sent, Counter[int], list[int]]:
    """Send operations ``first_id ...`` from ``threads`` threads, ``per_thread`` each.

    A share ``ask_share`` are asks (``api.submit``), the rest tells
    (``api.ref.tell(Execute)``). A sender keeps at most ``window`` asks outstanding and pauses
    ``send_pause`` seconds (uniform) between sends. Returns what was sent, how many times each
    ask's future completed (by ``id(future)``), and the asks that never resolved.
    """
    barrier = threading.Barrier(threads, timeout=wait)
    parts = [Sent() for _ in range(threads)]
    completions: Counter[int] = Counter()
    completions_lock = threading.Lock()
    hung: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + wait

    def count(future: Future[Any]) -> None:
        with completions_lock:
            completions[id(future)] += 1

    def sender(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        mine = parts[index]
        outstanding: list[tuple[int, Future[Any]]] = []
        try:
            barrier.wait()
            for seq in range(per_thread):
                op_id = first_id + index * per_thread + seq
                time.sleep(rng.uniform(*send_pause))  # spread the run while chaos goes on
                if rng.random() < ask_share:
                    future = workload.submit(api, op_id)
                    future.add_done_callback(count)
                    mine.asks.append((op_id, future))
                    outstanding.append((op_id, future))
                    if len(outstanding) > window:
                        oldest, first = outstanding.pop(0)
                        if outcome(first, deadline - time.monotonic())[0] == "hung":
                            hung.append(oldest)
                            return
                else:
                    api.ref.tell(workload.execute(op_id))
                    mine.tells.append(op_id)
        except BaseException as error:
            errors.append(error)

    workers = [
        threading.Thread(target=sender, args=(i,), name=f"{api.name}-sender-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(wait)
    assert not [t.name for t in workers if t.is_alive()], "a sender hung"
    assert not errors, errors
    sent = Sent()
    for part in parts:
        sent.asks.extend(part.asks)
        sent.tells.extend(part.tells)
    return sent, completions, hung
