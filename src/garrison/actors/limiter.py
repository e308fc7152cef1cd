"""The rate-limiter actor: multi-window limits per client, a priority queue, throttling.

Each :class:`~garrison.Execute` is checked against the limits of its ``key`` (one bucket per
client) by a pure :class:`~garrison.policies.rate.RateLimitPolicy`:

- admitted: handed on at once (to the downstream, or run);
- over the limit with ``on_limit="reject"``: ``RateLimited(retry_after)`` at once;
- over the limit with ``on_limit="wait"``: queued in a bounded priority queue (``HIGH``
  before ``NORMAL`` before ``LOW``, FIFO within a priority, plain FIFO when
  ``priority_queue=False``) and admitted by a timer on the injected clock at the moment a
  slot frees, never polled. A full queue answers ``QueueFull``; a request still waiting after
  ``queue_timeout`` gets ``QueueTimeout``; one whose wait would exceed ``max_wait_time`` is
  refused at once with ``RateLimited``.

Throttle strategies shape how the limiter backs off (``throttle_strategy``):

- ``fixed``: a rejected caller is told the exact time at which it would fit;
- ``exponential``: consecutive rejections of one key stretch that time by
  ``backoff_multiplier`` each (capped at ``max_wait_time``), so hammering clients back off;
- ``adaptive``: a :class:`RateLimitFeedback` (the HTTP client sends one on 429/503, users may
  too) divides the effective rate by ``backoff_multiplier`` (never below
  ``min_rate_fraction``), and the rate recovers additively, a tenth of the configured rate
  per recovery interval (the shortest window), never above the configured limits (AIMD).

Whatever the strategy, a feedback carrying ``retry_after`` pauses admissions for that long
(the server's ``Retry-After`` is honoured).

With a ``backend`` (a Redis backend, see :mod:`garrison.backends`) the windows live in Redis
under the limiter's ``name``, shared by every process that uses the same backend and name;
the queue, the throttling and the timers stay in this actor. When its mailbox is deep the
actor takes the Executes queued behind the first one and decides them in one Redis round
trip (a pipeline), in order; a ``_Flush`` it sends itself marks the end of the batch (fused
in a pipeline, it goes behind what the pipeline's host has queued).

Requests waiting in the queue when the actor stops or crashes fail with
:class:`~garrison.errors.ActorUnavailable`; the windows survive a supervised restart
(``snapshot()``/``restore()``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from pykka._envelope import Envelope

from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute, Priority
from garrison._ref import Ref
from garrison._scheduler import Scheduler, TimerHandle
from garrison.actors._stage import Stage
from garrison.backends._protocol import Backend, SharedLimits
from garrison.errors import (
    ActorUnavailable,
    BackendUnavailable,
    QueueFull,
    QueueTimeout,
    RateLimited,
)
from garrison.observability.events import emit
from garrison.policies.rate import Decision, RateLimitConfig, RateLimitPolicy

__all__ = ["RateLimitFeedback", "RateLimiterActor"]

_STREAKS_KEPT = 10_000
_RECOVERY_STEP = 0.1
_BATCH_DEPTH = 2
"""With a backend: start a batch when at least this many messages wait behind an Execute."""
_BATCH_MAX = 64
"""With a backend: the most Executes decided in one Redis round trip."""
_REFUSALS = (TypeError, ValueError, BackendUnavailable)
"""What a policy raises instead of deciding: a cost no window can ever admit, or a backend
that is down with ``on_limit_error="closed"``."""


@dataclass(frozen=True, slots=True)
class RateLimitFeedback:
    """The service signalled overload (an HTTP 429 or 503, say): slow down.

    ``retry_after`` (seconds, optional) pauses every admission for that long. With
    ``throttle_strategy="adaptive"`` the effective rate is also cut (see the module doc).
    """

    retry_after: float | None = None
    reason: str = "overloaded"


@dataclass(frozen=True, slots=True)
class _Drain:
    key: Hashable


@dataclass(frozen=True, slots=True)
class _Recover:
    token: int


@dataclass(frozen=True, slots=True)
class _Flush:
    """The end of a batch: every Execute queued before it has joined the batch."""

    token: int


class _Waiting:
    """One queued request."""

    __slots__ = ("done", "enqueued_at", "message", "order", "reply")

    def __init__(
        self, message: Execute, reply: Future[Any], order: tuple[int, int], now: float
    ) -> None:
        self.message = message
        self.reply = reply
        self.order = order
        self.enqueued_at = now
        self.done = False

    def __lt__(self, other: _Waiting) -> bool:
        return self.order < other.order


class _KeyQueue:
    """The requests of one key waiting for a slot, with one timer for the next event."""

    __slots__ = ("cost", "deadlines", "entries", "live", "timer")

    def __init__(self) -> None:
        self.entries: list[_Waiting] = []  # heap by (priority, seq)
        self.deadlines: list[tuple[float, int, _Waiting]] = []  # heap by deadline
        self.live = 0
        self.cost = 0
        self.timer: TimerHandle | None = None

    def head(self) -> _Waiting | None:
        entries = self.entries
        while entries and entries[0].done:
            heapq.heappop(entries)
        return entries[0] if entries else None

    def earliest_deadline(self) -> float | None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][2].done:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None


class RateLimiterActor(Stage):
    """Admits, queues or rejects operations per client key; see the module docstring."""

    stage = "rate_limiter"

    def __init__(
        self,
        config: RateLimitConfig,
        downstream: Ref | None = None,
        *,
        name: str | None = None,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
        backend: Backend | None = None,
    ) -> None:
        if not isinstance(config, RateLimitConfig):
            raise TypeError(f"config must be a RateLimitConfig, got {config!r}")
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        self.config = config
        self.name = name if name is not None else ""
        self.policy: RateLimitPolicy | SharedLimits
        self._shared: SharedLimits | None = None
        if backend is None:
            self.policy = RateLimitPolicy(config)
        else:
            if not self.name:
                raise ValueError(
                    "a rate limiter with a backend needs a name: its windows are kept under it"
                )
            self.policy = self._shared = backend.rate_policy(config, self.name)
        self._batch: list[tuple[Execute, Future[Any]]] | None = None
        self._batch_token = 0
        self.batches = 0
        self._queues: dict[Hashable, _KeyQueue] = {}
        self._waiting = 0
        self._seq = itertools.count()
        self._streaks: OrderedDict[Hashable, int] = OrderedDict()
        self._paused_until = -math.inf
        self._recover_token = itertools.count(1)
        self._recovering: tuple[int, TimerHandle] | None = None
        self._interval = min(w.seconds / w.limit for w in config.windows)
        self._recovery_interval = config.windows[0].seconds
        self.admitted = 0
        self.rejected = 0
        self.queue_full = 0
        self.queue_timeouts = 0
        self.feedbacks = 0

    def on_start(self) -> None:
        """Keep a Ref to itself for timers; resume recovering a throttled rate."""
        if not self.name:
            self.name = self.mailbox.name.rsplit("/", 1)[-1]
        if self.policy.rate_factor < 1.0 and self.config.throttle_strategy == "adaptive":
            self._schedule_recovery()

    # -- operations ---------------------------------------------------------------------------

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Admit, queue or reject ``message`` against its key's limits."""
        if self._shared is not None and self._batched(message, reply):
            return
        self._decide(message, reply, None)

    def _batched(self, message: Execute, reply: Future[Any]) -> bool:
        """Join (or start) a batch when the mailbox is deep; True if ``message`` joined."""
        batch = self._batch
        if batch is None:
            if self.mailbox.qsize() < _BATCH_DEPTH:
                return False
            self._batch = [(message, reply)]
            self._batch_token += 1
            self._tell_behind_backlog(_Flush(self._batch_token))
            return True
        batch.append((message, reply))
        if len(batch) >= _BATCH_MAX:
            self._flush()
        return True

    def _tell_behind_backlog(self, message: Any) -> None:
        """Send ``message`` to this actor behind everything already queued for it.

        Fused in a pipeline's :class:`~garrison.actors._host.StageHost`, a message a stage
        sends itself is handled as soon as the current one is done, before the host reads
        its mailbox: a ``_Flush`` sent that way would end every batch at one request. It
        goes through the host's mailbox instead, behind the Executes waiting there.
        """
        self.mailbox.offer_behind(Envelope(message))

    def _flush(self) -> None:
        """Decide the batch: one Redis round trip for the requests that go to the policy."""
        batch, self._batch = self._batch, None
        if not batch or self._shared is None:
            return
        self.batches += 1
        now = self.clock.monotonic()
        paused = now < self._paused_until
        direct = [
            i
            for i, (message, _) in enumerate(batch)
            if not paused and self._queue_empty(message.key)
        ]
        decided = self._shared.acquire_many(
            [(batch[i][0].key, batch[i][0].cost) for i in direct], now
        )
        outcomes: dict[int, Decision | BaseException] = dict(zip(direct, decided, strict=True))
        for i, (message, reply) in enumerate(batch):
            self._decide(message, reply, outcomes.get(i))

    def _queue_empty(self, key: Hashable) -> bool:
        queue = self._queues.get(key)
        return queue is None or queue.head() is None

    def _decide(
        self, message: Execute, reply: Future[Any], decided: Decision | BaseException | None
    ) -> None:
        """Admit, queue or reject ``message``; ``decided``: the policy's answer, if taken."""
        now = self.clock.monotonic()
        key = message.key
        cost = message.cost
        queue = self._queues.get(key)
        paused = now < self._paused_until
        if decided is not None or ((queue is None or queue.head() is None) and not paused):
            try:
                if decided is None:
                    decision = self.policy.acquire(key, now, cost)
                elif isinstance(decided, BaseException):
                    raise decided
                else:
                    decision = decided
            except _REFUSALS as error:  # a cost no window admits, or a backend down
                reply.try_set_exception(error)
                return
            if decision.allowed:
                self._admit(key, message, reply, now)
                return
            wait, label = decision.retry_after, decision.limit_label
        else:
            wait, label = self._estimated_wait(key, queue, now, cost), "queue"
        if paused:
            wait = max(wait, self._paused_until - now)
        if self.config.on_limit == "reject":
            self._reject(reply, key, wait, label)
            return
        max_wait = self.config.max_wait_time
        if max_wait is not None and wait > max_wait:
            self._reject(reply, key, wait, label)
            return
        if self._waiting >= self.config.queue_size:
            self.queue_full += 1
            reply.try_set_exception(
                QueueFull(self.config.queue_size, queue=f"rate limiter {self.name!r} queue")
            )
            return
        self._enqueue(key, message, reply, now, wait)

    def _estimated_wait(
        self, key: Hashable, queue: _KeyQueue | None, now: float, cost: int
    ) -> float:
        """How long a newcomer would wait behind the requests already queued for ``key``.

        Exact (if nothing else is admitted meanwhile) when the queued cost and the
        newcomer's fit in one window's limit; otherwise the head's wait plus the queued cost
        at the sustained rate of the tightest window.
        """
        ahead = queue.cost if queue is not None else 0
        total = ahead + cost
        try:
            if total <= min(self.policy.effective_limits()):
                return self.policy.peek(key, now, total).retry_after
            head_wait = self.policy.peek(key, now, cost).retry_after
        except _REFUSALS:
            head_wait = 0.0
        return head_wait + ahead * self._interval / max(self.policy.rate_factor, 1e-9)

    def _admit(self, key: Hashable, message: Execute, reply: Future[Any], now: float) -> None:
        """Hand on an operation admitted at ``now``."""
        self.admitted += 1
        self._streaks.pop(key, None)
        self.pass_on(message, reply)

    def _reject(self, reply: Future[Any], key: Hashable, wait: float, label: str) -> None:
        self.rejected += 1
        strategy = self.config.throttle_strategy
        if strategy == "exponential":
            streak = self._streaks.pop(key, 0) + 1
            self._streaks[key] = streak
            if len(self._streaks) > _STREAKS_KEPT:
                self._streaks.popitem(last=False)
            wait *= self.config.backoff_multiplier ** (streak - 1)
            cap = self.config.max_wait_time
            if cap is not None:
                wait = min(wait, max(cap, 0.0))
        reply.try_set_exception(
            RateLimited(wait, key=key if key is not None else None, limit=label)
        )

    # -- the waiting queue --------------------------------------------------------------------

    def _enqueue(
        self, key: Hashable, message: Execute, reply: Future[Any], now: float, wait: float
    ) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KeyQueue()
        priority = int(message.priority) if self.config.priority_queue else int(Priority.NORMAL)
        entry = _Waiting(message, reply, (priority, next(self._seq)), now)
        heapq.heappush(queue.entries, entry)
        heapq.heappush(queue.deadlines, (now + self.config.queue_timeout, entry.order[1], entry))
        queue.live += 1
        queue.cost += message.cost
        self._waiting += 1
        self._arm(key, queue, now + max(wait, 0.0))

    def _arm(self, key: Hashable, queue: _KeyQueue, when: float) -> None:
        """Make sure the key's timer fires no later than ``when`` (and the next deadline)."""
        deadline = queue.earliest_deadline()
        if deadline is not None:
            when = min(when, deadline)
        timer = queue.timer
        if timer is not None and timer.active and timer.due <= when:
            return
        if timer is not None:
            timer.cancel()
        delay = max(0.0, when - self.clock.monotonic())
        queue.timer = self.schedule(delay, _Drain(key))

    def _drain(self, key: Hashable) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.timer = None
        now = self.clock.monotonic()
        self._expire(queue, now)
        next_slot: float | None = None
        while (head := queue.head()) is not None:
            if now < self._paused_until:
                next_slot = self._paused_until
                break
            try:
                decision = self.policy.acquire(key, now, head.message.cost)
            except _REFUSALS as error:
                self._finish(queue, heapq.heappop(queue.entries))
                head.reply.try_set_exception(error)
                continue
            if not decision.allowed:
                next_slot = now + decision.retry_after
                break
            self._finish(queue, heapq.heappop(queue.entries))
            self._admit(key, head.message, head.reply, now)
        if queue.live == 0:
            del self._queues[key]
            return
        self._arm(key, queue, next_slot if next_slot is not None else now)

    def _expire(self, queue: _KeyQueue, now: float) -> None:
        deadlines = queue.deadlines
        while deadlines and (deadlines[0][2].done or deadlines[0][0] <= now):
            _, _, entry = heapq.heappop(deadlines)
            if entry.done:
                continue
            self._finish(queue, entry)
            self.queue_timeouts += 1
            entry.reply.try_set_exception(
                QueueTimeout(now - entry.enqueued_at, queue=f"rate limiter {self.name!r} queue")
            )

    def _finish(self, queue: _KeyQueue, entry: _Waiting) -> None:
        if not entry.done:
            entry.done = True
            queue.live -= 1
            queue.cost -= entry.message.cost
            self._waiting -= 1

    # -- feedback and recovery ----------------------------------------------------------------

    def _feedback(self, feedback: RateLimitFeedback) -> None:
        now = self.clock.monotonic()
        self.feedbacks += 1
        factor = self.policy.rate_factor
        if self.config.throttle_strategy == "adaptive":
            factor = self.policy.set_rate_factor(
                max(self.config.min_rate_fraction, factor / self.config.backoff_multiplier)
            )
            self._schedule_recovery()
        retry_after = feedback.retry_after
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
            for key, queue in self._queues.items():
                self._arm(key, queue, self._paused_until)
        emit(
            "garrison.limiter.throttled",
            level="warning",
            limiter=self.name,
            reason=feedback.reason,
            rate_factor=round(factor, 4),
            retry_after=retry_after,
        )

    def _schedule_recovery(self) -> None:
        if self._recovering is not None:
            self._recovering[1].cancel()
        token = next(self._recover_token)
        handle = self.schedule(self._recovery_interval, _Recover(token))
        self._recovering = (token, handle)

    def _recover(self, tick: _Recover) -> None:
        if self._recovering is None or self._recovering[0] != tick.token:
            return
        self._recovering = None
        factor = self.policy.set_rate_factor(min(1.0, self.policy.rate_factor + _RECOVERY_STEP))
        if factor < 1.0:
            self._schedule_recovery()
        emit("garrison.limiter.recovering", level="debug", limiter=self.name, rate_factor=factor)

    # -- messages, status, lifecycle ----------------------------------------------------------

    def handle_other(self, message: Any) -> Any:
        """Timers and feedback; anything else is refused with a TypeError."""
        if isinstance(message, _Drain):
            self._drain(message.key)
            return None
        if isinstance(message, RateLimitFeedback):
            self._feedback(message)
            return None
        if isinstance(message, _Recover):
            self._recover(message)
            return None
        if isinstance(message, _Flush):
            if message.token == self._batch_token:
                self._flush()
            return None
        return super().handle_other(message)

    def runs_inline(self) -> bool:
        """True when it has a downstream (it never runs operations itself then) and keeps
        its windows in memory, not in a backend (see :meth:`Stage.runs_inline`)."""
        return self.downstream is not None and self._shared is None

    def status(self) -> dict[str, Any]:
        """Configured and effective limits, queue depth by priority, counters, key count."""
        depth = {p.name.lower(): 0 for p in Priority}
        for queue in self._queues.values():
            for entry in queue.entries:
                if not entry.done:
                    depth[Priority(entry.order[0]).name.lower()] += 1
        windows = self.config.windows
        effective = self.policy.effective_limits()
        now = self.clock.monotonic()
        return {
            "stage": self.stage,
            "name": self.name,
            "algorithm": self.config.algorithm,
            "on_limit": self.config.on_limit,
            "throttle_strategy": self.config.throttle_strategy,
            "limits": {w.label: w.limit for w in windows},
            "effective_limits": {w.label: n for w, n in zip(windows, effective, strict=True)},
            "rate_factor": self.policy.rate_factor,
            "paused_for": max(0.0, self._paused_until - now),
            "waiting": self._waiting,
            "queue_depth": depth,
            "admitted": self.admitted,
            "rejected": self.rejected,
            "queue_full": self.queue_full,
            "queue_timeouts": self.queue_timeouts,
            "feedbacks": self.feedbacks,
            "keys": self.policy.key_count(),
            **self._shared_status(),
        }

    def _shared_status(self) -> dict[str, Any]:
        if self._shared is None:
            return {}
        return {"shared": self._shared.backend_status(), "batches": self.batches}

    def snapshot(self) -> dict[str, Any]:
        """The windows and the rate factor, for a supervised restart."""
        return {"policy": self.policy.snapshot(), "paused_until": self._paused_until}

    def restore(self, state: dict[str, Any]) -> None:
        """Take over a predecessor's windows and rate factor."""
        self.policy.restore(state["policy"])
        self._paused_until = state["paused_until"]

    def on_stop(self) -> None:
        """Fail every waiting request and release the timers."""
        self._abandon("the rate limiter stopped")

    def on_failure(self, *_exc: Any) -> None:
        """Fail every waiting request: their callers must not wait for a dead limiter."""
        self._abandon("the rate limiter crashed")

    def _abandon(self, reason: str) -> None:
        batch, self._batch = self._batch, None
        for _, reply in batch or ():
            reply.try_set_exception(ActorUnavailable(self.mailbox.name, reason))
        for queue in self._queues.values():
            if queue.timer is not None:
                queue.timer.cancel()
            for entry in queue.entries:
                if not entry.done:
                    entry.done = True
                    entry.reply.try_set_exception(ActorUnavailable(self.mailbox.name, reason))
        self._queues.clear()
        self._waiting = 0
        if self._recovering is not None:
            self._recovering[1].cancel()
            self._recovering = None
        self.release_scheduler()
