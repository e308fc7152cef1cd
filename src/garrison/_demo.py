"""``garrison demo``: pipelines in front of a simulated flaky service, with a live dashboard.

A :class:`Runtime` runs two pipelines:

- ``external_api`` with every stage (fallback, retry, circuit breaker, rate limiter, timeout,
  bulkhead) in front of a simulated HTTP API;
- ``database`` with a circuit breaker, a timeout and a small bulkhead in front of a
  simulated database.

Client threads call them for ``duration`` seconds while the simulation goes through four
phases (fractions of the duration): healthy; an error burst (API errors and 429s from a
degraded capacity, database lock contention: slow queries); an API outage; a recovery. A 429
is answered the way an HTTP client actor would: ``RateLimitFeedback(retry_after=...)`` to
the pipeline's rate limiter. Half-way through, the demo crashes the ``external_api`` retry
stage once and its supervisor restarts it.

The dashboard is a rich ``Live`` view on a terminal (~4 refreshes a second) and one plain
line a second otherwise. At the end: a summary table, ``report.json`` and, with matplotlib,
``timeline.png`` in the output folder. The runtime always stops (also on Ctrl-C), leaving
no thread behind. structlog is configured for the run only (events are captured for the
dashboard and the report instead of printed) and restored afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import random
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from garrison._messages import Execute, GetStatus
from garrison._ref import Ref, actor_of
from garrison._runtime import Runtime
from garrison.actors._stage import Stage
from garrison.actors.bulkhead import BulkheadConfig
from garrison.actors.limiter import RateLimitFeedback
from garrison.errors import (
    ActorUnavailable,
    AskTimeout,
    BulkheadFull,
    CircuitOpen,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    RetriesExhausted,
)
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

__all__ = ["run"]

TICK = 0.25  # seconds between two samples / dashboard refreshes
CALL_WAIT = 5.0  # the longest a client waits for one call's outcome
INJECT_AT = 0.5  # fraction of the duration at which the retry stage is crashed
MAX_EVENTS = 2000  # notable events kept for the report


# -- the simulation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start: float  # fraction of the duration
    description: str


PHASES = (
    Phase("healthy", 0.0, "latency 10-40 ms with jitter, 2% errors"),
    Phase(
        "error burst",
        0.15,
        "api: 30% errors and 429s (degraded capacity); database: lock contention",
    ),
    Phase("outage", 0.35, "api: down (connection refused); database: healthy"),
    Phase("recovery", 0.6, "api and database healthy again"),
)


class TooManyRequests(Exception):
    """An HTTP 429 from the simulated API, with its Retry-After."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests (Retry-After: {retry_after:g}s)")
        self.retry_after = retry_after


class InjectedCrash(RuntimeError):
    """The error the demo's one injected crash raises inside a stage actor."""


class _CrashRequest:
    """The message that makes a stage armed by :func:`inject_crash` crash."""

    __slots__ = ()


class Scenario:
    """Real time since the start, and the phase it falls in."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.started = time.monotonic()

    def restart(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phase(self, at: float | None = None) -> Phase:
        fraction = (self.elapsed() if at is None else at) / self.duration
        current = PHASES[0]
        for phase in PHASES:
            if fraction >= phase.start:
                current = phase
        return current


class FlakyApi:
    """A simulated HTTP API: jittery latency, error bursts, 429s, an outage, a recovery."""

    BURST_CAPACITY = 18  # requests per CAPACITY_WINDOW during the error burst
    CAPACITY_WINDOW = 0.5
    RETRY_AFTER = 0.2

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self.requests = 0
        self.errors = 0
        self.throttled = 0

    def _draw(self) -> tuple[float, float]:
        with self._lock:
            return self._rng.random(), self._rng.gauss(0.0, 1.0)

    def request(self, request_id: int) -> dict[str, Any]:
        phase = self.scenario.phase().name
        luck, noise = self._draw()
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.CAPACITY_WINDOW:
                self._recent.popleft()
            over_capacity = phase == "error burst" and len(self._recent) > self.BURST_CAPACITY
            if over_capacity:
                self.throttled += 1
        if phase == "outage":
            time.sleep(0.002)
            self._failed()
            raise ConnectionError("connection refused")
        if over_capacity:
            time.sleep(0.003)
            raise TooManyRequests(self.RETRY_AFTER)
        base = 0.035 if phase == "error burst" else 0.02
        time.sleep(max(0.002, base + 0.008 * noise))
        error_rate = 0.3 if phase == "error burst" else 0.02
        if luck < error_rate:
            self._failed()
            raise ConnectionError("503 upstream error")
        return {"id": request_id, "ok": True}

    def _failed(self) -> None:
        with self._lock:
            self.errors += 1


class FlakyDatabase:
    """A simulated database: jittery latency, slow queries under lock contention."""

    SLOW_QUERY = 0.35

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.queries = 0
        self.slow = 0

    def query(self, query_id: int) -> dict[str, Any]:
        phase = self.scenario.phase().name
        with self._lock:
            self.queries += 1
            luck, noise = self._rng.random(), self._rng.gauss(0.0, 1.0)
            slow = phase == "error burst" and luck < 0.3
            if slow:
                self.slow += 1
        if slow:
            time.sleep(self.SLOW_QUERY)
            return {"id": query_id, "rows": 1}
        time.sleep(max(0.002, 0.015 + 0.005 * noise))
        if luck > 0.99:
            raise ConnectionError("database connection reset")
        return {"id": query_id, "rows": 1}


# -- outcomes ----------------------------------------------------------------------------------

REJECTION_CAUSES = ("circuit_open", "rate_limited", "bulkhead_full")


def classify(error: BaseException) -> str:
    """The cause of a failed call, as the dashboard counts it."""
    if isinstance(error, RetriesExhausted) and error.last_error is not None:
        error = error.last_error
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, RateLimited | QueueFull | QueueTimeout):
        return "rate_limited"
    if isinstance(error, BulkheadFull):
        return "bulkhead_full"
    if isinstance(error, OperationTimeout):
        return "timeout"
    if isinstance(error, ActorUnavailable | InjectedCrash):
        return "unavailable"
    if isinstance(error, TooManyRequests):
        return "throttled"
    if isinstance(error, ConnectionError):
        return "service_error"
    return "other"


class Tally:
    """Client-side outcome counts per pipeline (thread-safe)."""

    def __init__(self, names: list[str]) -> None:
        self._lock = threading.Lock()
        self._counts = {name: Counter[str]() for name in names}
        self._causes = {name: Counter[str]() for name in names}

    def record(self, name: str, outcome: str, cause: str | None = None) -> None:
        with self._lock:
            counts = self._counts[name]
            counts["calls"] += 1
            counts[outcome] += 1
            if cause is not None:
                self._causes[name][cause] += 1
                if cause in REJECTION_CAUSES:
                    counts["rejected"] += 1

    def snapshot(self, name: str) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self._counts[name]), dict(self._causes[name])


class Monotonic:
    """Counters that survive an actor restart (a restarted stage starts counting at zero)."""

    def __init__(self) -> None:
        self._base: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def __call__(self, key: str, value: int) -> int:
        last = self._last.get(key, 0)
        if value < last:
            self._base[key] = self._base.get(key, 0) + last
        self._last[key] = value
        return self._base.get(key, 0) + value


# -- events -------------------------------------------------------------------------------------

NOTABLE = (
    "garrison.breaker.",
    "garrison.actor.crashed",
    "garrison.supervisor.restarted",
    "garrison.supervisor.gave_up",
    "garrison.limiter.throttled",
    "garrison.runtime.root_failed",
)
_FIELDS = ("service", "to_state", "reason", "actor", "supervisor", "child", "error", "limiter")


class EventLog:
    """A structlog processor that keeps notable events and counts all, printing none."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.counts: Counter[str] = Counter()
        self.notable: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.unseen: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def __call__(self, logger: object, method: str, event_dict: Any) -> Any:
        name = str(event_dict.get("event", ""))
        with self._lock:
            self.counts[name] += 1
        if name.startswith(NOTABLE):
            record: dict[str, Any] = {"t": round(self.scenario.elapsed(), 2), "event": name}
            for key in _FIELDS:
                if key in event_dict:
                    record[key] = str(event_dict[key])
            self.add(record)
        raise structlog.DropEvent

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.notable.append(record)
            self.unseen.append(record)

    def take_unseen(self) -> list[dict[str, Any]]:
        with self._lock:
            records = list(self.unseen)
            self.unseen.clear()
            return records


def describe_event(record: Mapping[str, Any]) -> str:
    """One short line for an event record."""
    name = str(record["event"])
    if name.startswith("garrison.breaker."):
        return f"breaker {record.get('service')}: {record.get('to_state', name.rsplit('.', 1)[1])}"
    if name == "garrison.actor.crashed":
        return f"crash: {record.get('actor')} ({record.get('error')})"
    if name == "garrison.supervisor.restarted":
        return f"restarted: {record.get('supervisor')}/{record.get('child')}"
    if name == "garrison.limiter.throttled":
        return f"429 -> RateLimitFeedback to limiter {record.get('limiter')}"
    if name == "demo.inject":
        return str(record.get("text"))
    return f"{name} {record.get('reason', '')}".strip()


@contextlib.contextmanager
def structlog_capture(log: EventLog) -> Iterator[None]:
    """Route garrison's events into ``log`` for the run; restore the previous config after."""
    was_configured = structlog.is_configured()
    previous = structlog.get_config()
    structlog.configure(
        processors=[log],
        wrapper_class=structlog.make_filtering_bound_logger(20),  # info and up
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**previous)
        else:
            structlog.reset_defaults()


# -- crash injection ----------------------------------------------------------------------------


def inject_crash(ref: Ref, timeout: float = 5.0) -> bool:
    """Crash the stage actor behind ``ref`` once; True if it crashed.

    The running incarnation's ``handle_other`` is shadowed by an instance attribute that
    raises :class:`InjectedCrash` for a :class:`_CrashRequest` (and passes every other
    message on); the demo then asks it one. The crash happens in the actor's own thread, as
    a bug in the stage would; its supervisor restarts it; the new incarnation is a new object
    without the shadowing attribute.
    """
    actor = actor_of(ref.actor_ref)
    if not isinstance(actor, Stage) or actor.actor_stopped.is_set():
        return False
    real = actor.handle_other

    def handle_other(message: Any) -> Any:
        if isinstance(message, _CrashRequest):
            vars(actor).pop("handle_other", None)
            raise InjectedCrash(f"crash injected into {ref.name} by garrison demo")
        return real(message)

    setattr(actor, "handle_other", handle_other)  # noqa: B010 (shadows the method)
    try:
        ref.ask(_CrashRequest(), timeout)
    except InjectedCrash:
        return True
    except (ActorUnavailable, AskTimeout):
        return False
    finally:
        vars(actor).pop("handle_other", None)
    return False


# -- sampling -----------------------------------------------------------------------------------

BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


class Sampler:
    """Reads every pipeline's status and the tree; keeps the timeline."""

    def __init__(self, rt: Runtime, pipelines: dict[str, Pipeline], tally: Tally) -> None:
        self.rt = rt
        self.pipelines = pipelines
        self.tally = tally
        self.status: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in pipelines}
        self.restarts: dict[str, int] = dict.fromkeys(pipelines, 0)
        self.timeline: list[dict[str, Any]] = []
        self._counters = Monotonic()
        self.tree: dict[str, Any] = {}

    def sample(self, at: float, phase: str) -> dict[str, Any]:
        for name, pipeline in self.pipelines.items():
            for stage, ref in pipeline.stages.items():
                with contextlib.suppress(ActorUnavailable, AskTimeout):
                    self.status[name][stage] = ref.ask(GetStatus(), 1.0)
        with contextlib.suppress(ActorUnavailable, AskTimeout, RuntimeError):
            self.tree = self.rt.supervisor.tree(1.0)
        for entry in self.tree.get("children", []):
            name = str(entry.get("name", "")).removeprefix("pipeline:")
            if name in self.restarts:
                own = int(entry.get("restarts", 0))
                children = sum(int(c.get("restarts", 0)) for c in entry.get("children", []))
                self.restarts[name] = own + children
        row = {
            "t": round(at, 3),
            "phase": phase,
            "pipelines": {name: self.metrics(name) for name in self.pipelines},
        }
        self.timeline.append(row)
        return row

    def metrics(self, name: str) -> dict[str, Any]:
        status = self.status[name]
        counts, causes = self.tally.snapshot(name)
        breaker = status.get("circuit_breaker", {})
        limiter = status.get("rate_limiter")
        bulkhead = status.get("bulkhead", {})
        retry = status.get("retry")
        timeout = status.get("timeout")
        count = self._counters
        return {
            "breaker": breaker.get("state"),
            "calls": counts.get("calls", 0),
            "ok": counts.get("ok", 0),
            "fallbacks": counts.get("fallback", 0),
            "failed": counts.get("failed", 0),
            "rejected": counts.get("rejected", 0),
            "causes": causes,
            "retries": (
                count(f"{name}.retries", int(retry.get("retries_scheduled", 0)))
                if retry is not None
                else None
            ),
            "timeouts": (
                count(f"{name}.timeouts", int(timeout.get("timeouts", 0)))
                if timeout is not None
                else None
            ),
            "restarts": self.restarts[name],
            "limiter_queue": (
                sum(int(v) for v in limiter.get("queue_depth", {}).values())
                if limiter is not None
                else None
            ),
            "rate_factor": (
                round(float(limiter.get("rate_factor", 1.0)), 3) if limiter is not None else None
            ),
            "paused_for": (
                round(float(limiter.get("paused_for", 0.0)), 3) if limiter is not None else None
            ),
            "bulkhead_in_use": bulkhead.get("in_use"),
            "bulkhead_max": bulkhead.get("max_concurrent"),
            "bulkhead_queued": bulkhead.get("queued"),
            "bulkhead_rejected": bulkhead.get("rejected"),
        }


# -- rendering ----------------------------------------------------------------------------------


def _opt(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def plain_line(at: float, phase: str, row: Mapping[str, Any]) -> str:
    """One summary line (no escape codes)."""
    parts = [f"[{at:5.1f}s] {phase:<11}"]
    for name, m in row["pipelines"].items():
        text = (
            f"{name}: breaker={_opt(m['breaker']):<9} ok={m['ok']} fb={m['fallbacks']} "
            f"failed={m['failed']} rej={m['rejected']} retries={_opt(m['retries'])} "
            f"timeouts={_opt(m['timeouts'])} restarts={m['restarts']}"
        )
        if m["limiter_queue"] is not None:
            text += f" limiter q={m['limiter_queue']} x{m['rate_factor']:.2f}"
        text += f" bulkhead {_opt(m['bulkhead_in_use'])}/{_opt(m['bulkhead_max'])}"
        text += f"+{_opt(m['bulkhead_queued'])}"
        parts.append(text)
    return " | ".join(parts)


SUMMARY_ROWS = (
    ("calls", "calls"),
    ("ok", "ok"),
    ("fallbacks", "fallbacks"),
    ("failed", "failed"),
    ("retries", "retries"),
    ("timeouts", "timeouts"),
    ("rejected", "rejected"),
    ("restarts", "restarts"),
    ("breaker opened", "breaker_opened"),
    ("breaker at the end", "breaker"),
)


def summary_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the summary: one row per count, one column per pipeline + total."""
    names = list(report["pipelines"])
    headers = ["", *names, "total"]
    totals = report["counts"]
    rows = []
    for title, key in SUMMARY_ROWS:
        cells = [_opt(report["pipelines"][name]["counts"].get(key)) for name in names]
        cells.append("" if key == "breaker" else _opt(totals.get(key)))
        rows.append([title, *cells])
    return headers, rows


def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


class Dashboard:
    """The rich Live view."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo

    def render(self) -> Any:
        from rich import box  # noqa: PLC0415 (the cli extra)
        from rich.console import Group  # noqa: PLC0415
        from rich.panel import Panel  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        demo = self.demo
        at = min(demo.scenario.elapsed(), demo.duration)
        phase = demo.scenario.phase(at)
        header = Text.assemble(
            ("garrison demo", "bold"),
            f"  t={at:5.1f}s / {demo.duration:g}s  ",
            (f"phase: {phase.name}", "bold magenta"),
            f"  ({phase.description})",
        )
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
        table.add_column("", no_wrap=True)
        row = demo.sampler.timeline[-1] if demo.sampler.timeline else None
        metrics: dict[str, Any] = row["pipelines"] if row is not None else {}
        for name in demo.pipelines:
            table.add_column(name, justify="right", no_wrap=True)
        colors = {"closed": "green", "half_open": "yellow", "open": "bold red"}

        def limiter(m: Mapping[str, Any]) -> str:
            if m["limiter_queue"] is None:
                return "-"
            paused = " paused" if m["paused_for"] else ""
            return f"{m['limiter_queue']} / x{m['rate_factor']:.2f}{paused}"

        cells: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
            ("breaker", lambda m: f"[{colors.get(str(m['breaker']), 'white')}]{m['breaker']}[/]"),
            ("limiter queue / rate", limiter),
            (
                "bulkhead in use / queued",
                lambda m: (
                    f"{_opt(m['bulkhead_in_use'])}/{_opt(m['bulkhead_max'])}"
                    f" / {_opt(m['bulkhead_queued'])}"
                ),
            ),
            ("ok", lambda m: str(m["ok"])),
            ("fallbacks", lambda m: str(m["fallbacks"])),
            ("failed", lambda m: str(m["failed"])),
            ("retries", lambda m: _opt(m["retries"])),
            ("timeouts", lambda m: _opt(m["timeouts"])),
            ("rejected", lambda m: str(m["rejected"])),
            ("restarts", lambda m: str(m["restarts"])),
        ]
        for title, cell in cells:
            table.add_row(
                title, *(cell(metrics[n]) if n in metrics else "" for n in demo.pipelines)
            )
        events = Text()
        for record in list(demo.events.notable)[-8:]:
            events.append(f"{record['t']:6.2f}s  {describe_event(record)}\n")
        return Group(
            header,
            table,
            Panel(events, title="events", title_align="left", height=10),
        )


# -- the run ------------------------------------------------------------------------------------


class Demo:
    """One demo run: the runtime, the pipelines, the clients, the sampling."""

    def __init__(self, duration: float, seed: int) -> None:
        self.duration = duration
        self.seed = seed
        self.scenario = Scenario(duration)
        self.events = EventLog(self.scenario)
        self.api_service = FlakyApi(self.scenario, seed)
        self.db_service = FlakyDatabase(self.scenario, seed + 1)
        self.stop = threading.Event()
        self.tally = Tally(["external_api", "database"])
        self.threads: list[threading.Thread] = []
        self.client_errors: list[BaseException] = []
        self.injected: dict[str, Any] = {"at": None, "pipeline": "external_api", "stage": "retry"}
        self.rt: Runtime | None = None
        self.pipelines: dict[str, Pipeline] = {}
        self.sampler: Sampler
        self.feedback_sent = 0
        self._feedback_lock = threading.Lock()

    # -- setup --

    def build(self, rt: Runtime) -> None:
        recovery = max(0.2, self.duration * 0.05)
        api = rt.pipeline(
            "external_api",
            fallback=self._fallback,
            retry=RetryConfig(
                max_attempts=3,
                base_delay=0.05,
                max_delay=0.4,
                deadline=1.5,
                retry_exceptions=(ConnectionError, TimeoutError, TooManyRequests),
            ),
            circuit_breaker=CircuitBreakerConfig(
                failure_threshold=5,
                recovery_timeout=recovery,
                error_rate_threshold=0.6,
                min_calls=10,
                window_size=20,
                ignore_exceptions=(TooManyRequests,),
            ),
            rate_limit=RateLimitConfig(
                per_second=60,
                on_limit="wait",
                queue_size=20,
                max_wait_time=0.5,
                queue_timeout=1.0,
                throttle_strategy="adaptive",
                backoff_multiplier=1.5,
                min_rate_fraction=0.25,
            ),
            timeout=TimeoutConfig(base_timeout=0.3, adaptive=False),
            bulkhead=BulkheadConfig(max_workers=4, max_queue=8),
        )
        database = rt.pipeline(
            "database",
            circuit_breaker=CircuitBreakerConfig(
                failure_threshold=5,
                recovery_timeout=recovery,
                error_rate_threshold=0.5,
                min_calls=10,
                window_size=20,
            ),
            timeout=TimeoutConfig(base_timeout=0.15, adaptive=False),
            bulkhead=BulkheadConfig(max_workers=2, max_queue=1),
        )
        self.pipelines = {"external_api": api, "database": database}
        self.sampler = Sampler(rt, self.pipelines, self.tally)
        limiter = api.stages["rate_limiter"]

        def call_api(request_id: int) -> dict[str, Any]:
            try:
                return self.api_service.request(request_id)
            except TooManyRequests as error:
                # what an HTTP client does with a 429: tell the limiter to slow down
                limiter.tell(RateLimitFeedback(retry_after=error.retry_after, reason="429"))
                with self._feedback_lock:
                    self.feedback_sent += 1
                raise

        self._call_api = call_api

    @staticmethod
    def _fallback(error: BaseException, message: Execute) -> dict[str, Any]:
        return {"fallback": True, "cause": classify(error)}

    def start_clients(self) -> None:
        plan: list[tuple[str, Callable[[int], Any], float]] = [
            ("external_api", self._call_api, 0.015),
            ("external_api", self._call_api, 0.015),
            ("external_api", self._call_api, 0.02),
            ("database", self.db_service.query, 0.02),
            ("database", self.db_service.query, 0.03),
            ("database", self.db_service.query, 0.03),
        ]
        ids = itertools.count(1)
        for index, (name, op, pace) in enumerate(plan):
            thread = threading.Thread(
                target=self._client,
                args=(name, op, pace, ids, random.Random(self.seed * 100 + index)),
                name=f"garrison-demo-client-{index}",
                daemon=True,
            )
            self.threads.append(thread)
            thread.start()

    def _client(
        self,
        name: str,
        op: Callable[[int], Any],
        pace: float,
        ids: Iterator[int],
        rng: random.Random,
    ) -> None:
        pipeline = self.pipelines[name].options(key=None, name=name)
        try:
            while not self.stop.is_set():
                future = pipeline.submit(op, next(ids))
                try:
                    error = future.exception(CALL_WAIT)
                except AskTimeout:
                    self.tally.record(name, "failed", "hung")
                    continue
                if error is not None:
                    self.tally.record(name, "failed", classify(error))
                else:
                    value = future.get(0)
                    if isinstance(value, dict) and value.get("fallback"):
                        self.tally.record(name, "fallback", str(value.get("cause")))
                    else:
                        self.tally.record(name, "ok")
                self.stop.wait(pace * rng.uniform(0.5, 1.5))
        except BaseException as error:  # reported in the summary; never silently lost
            self.client_errors.append(error)

    def inject(self) -> None:
        at = self.scenario.elapsed()
        ref = self.pipelines["external_api"].stages["retry"]
        self.events.add(
            {"t": round(at, 2), "event": "demo.inject", "text": "injecting a crash into "
             "external_api/retry"}
        )  # fmt: skip
        crashed = inject_crash(ref)
        settled = self.pipelines["external_api"].supervisor.settle(5.0) if crashed else False
        self.injected.update(at=round(at, 3), crashed=crashed, restarted=settled and ref.is_alive())

    # -- teardown --

    def stop_clients(self, timeout: float = CALL_WAIT + 2.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- report --

    def report(self, elapsed: float, interrupted: bool, started_at: str) -> dict[str, Any]:
        final = self.sampler.timeline[-1]["pipelines"] if self.sampler.timeline else {}
        opened = Counter(
            str(r.get("service"))
            for r in self.events.notable
            if r["event"] == "garrison.breaker.opened"
        )
        pipelines: dict[str, Any] = {}
        totals: Counter[str] = Counter()
        for name, pipeline in self.pipelines.items():
            m = final.get(name, {})
            counts = {
                key: m.get(key)
                for key in (
                    "calls", "ok", "fallbacks", "failed", "retries", "timeouts", "rejected",
                    "restarts",
                )
            }  # fmt: skip
            counts["breaker_opened"] = opened.get(name, 0)
            counts["breaker"] = m.get("breaker")
            for key, value in counts.items():
                if isinstance(value, int) and key != "breaker":
                    totals[key] += value
            pipelines[name] = {
                "stages": list(pipeline.stages),
                "counts": counts,
                "causes": m.get("causes", {}),
                "final_status": self.sampler.status[name],
            }
        return {
            "garrison_demo": 1,
            "started_at": started_at,
            "duration": self.duration,
            "elapsed": round(elapsed, 3),
            "interrupted": interrupted,
            "seed": self.seed,
            "phases": [
                {
                    "name": p.name,
                    "start": round(p.start * self.duration, 3),
                    "end": round(
                        (PHASES[i + 1].start if i + 1 < len(PHASES) else 1.0) * self.duration, 3
                    ),
                    "description": p.description,
                }
                for i, p in enumerate(PHASES)
            ],
            "counts": {**totals, "rate_limit_feedback": self.feedback_sent},
            "simulation": {
                "api_requests": self.api_service.requests,
                "api_errors": self.api_service.errors,
                "api_429s": self.api_service.throttled,
                "db_queries": self.db_service.queries,
                "db_slow_queries": self.db_service.slow,
            },
            "injected_restart": self.injected,
            "pipelines": pipelines,
            "tree": self.sampler.tree,
            "events": list(self.events.notable),
            "event_counts": dict(self.events.counts),
            "client_errors": [f"{type(e).__name__}: {e}" for e in self.client_errors],
            "timeline": self.sampler.timeline,
        }


def _default_out() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path.cwd() / f"garrison-demo-{stamp}"
    candidate = base
    for n in itertools.count(2):
        if not candidate.exists():
            return candidate
        candidate = base.with_name(f"{base.name}-{n}")
    raise AssertionError("unreachable")


def breaker_steps(
    report: Mapping[str, Any], name: str, end: float
) -> tuple[list[float], list[int]]:
    """The breaker's state over time, from its transition events (samples miss short ones)."""
    times, levels = [0.0], [0]
    for record in report["events"]:
        state = record.get("to_state")
        if record.get("service") == name and str(record["event"]).startswith("garrison.breaker."):
            times.append(float(record["t"]))
            levels.append(BREAKER_LEVEL.get(str(state), 2))
    times.append(end)
    levels.append(levels[-1])
    return times, levels


def per_second(times: list[float], values: list[int], window: float = 1.0) -> list[float]:
    """The rate of a cumulative count, over a trailing window (0.25 s samples are too noisy)."""
    rates = []
    first = 0
    for i, now in enumerate(times):
        while times[first] < now - window and first < i:
            first += 1
        span = now - times[first]
        rates.append((values[i] - values[first]) / span if span > 0 else 0.0)
    return rates


def write_plot(report: Mapping[str, Any], path: Path) -> str | None:
    """Write the timeline plot; None when written, else why not."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed (pip install 'garrison[demo]')"
    timeline = report["timeline"]
    if len(timeline) < 2:
        return "too few samples for a plot"
    times = [row["t"] for row in timeline]
    names = list(report["pipelines"])
    figure = Figure(figsize=(10, 7.5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg backend, without pyplot's global state
    axes = figure.subplots(3, 1, sharex=True)
    for name in names:
        steps_t, steps_y = breaker_steps(report, name, times[-1])
        axes[0].step(steps_t, steps_y, where="post", label=name)
        for axis, key in ((axes[1], ("ok", "fallbacks")), (axes[2], ("rejected",))):
            values = [sum(int(row["pipelines"][name][k] or 0) for k in key) for row in timeline]
            rates = per_second(times, values)
            label = f"{name} ({' + '.join(key)})"
            axis.plot(times, rates, label=label)
    axes[0].set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    axes[0].set_title("circuit breaker state")
    axes[1].set_title("throughput (answers per second, 1 s window)")
    axes[2].set_title("rejections per second (breaker, limiter, bulkhead; 1 s window)")
    axes[2].set_xlabel("seconds")
    colors = ("#e8f5e9", "#fff3e0", "#ffebee", "#e3f2fd")
    for axis in axes:
        for phase, color in zip(report["phases"], colors, strict=False):
            axis.axvspan(phase["start"], phase["end"], color=color, zorder=0)
        injected = report["injected_restart"].get("at")
        if injected is not None:
            axis.axvline(injected, color="black", linestyle="--", linewidth=1)
        axis.legend(loc="upper right", fontsize="small")
    figure.suptitle("garrison demo: " + ", ".join(p["name"] for p in report["phases"]))
    figure.savefig(path, format="png", dpi=100)
    return None


def run(
    *,
    duration: float = 20.0,
    out: Path | None = None,
    plot: bool = True,
    live: bool = False,
    seed: int = 7,
) -> int:
    """Run the demo; return the exit code (0, or 130 after Ctrl-C)."""
    out_dir = out if out is not None else _default_out()
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    demo = Demo(duration, seed)
    console: Any = None
    if live:
        from rich.console import Console  # noqa: PLC0415 (the cli extra)

        console = Console()
    say: Callable[[str], None] = (
        (lambda text: console.print(text, highlight=False, markup=False))
        if console is not None
        else (lambda text: print(text, flush=True))
    )
    say(
        f"garrison demo: {duration:g}s, pipelines external_api (all stages) and database "
        f"(breaker, timeout, bulkhead); phases: " + ", ".join(p.name for p in PHASES)
    )
    interrupted = False
    elapsed = 0.0
    rt = Runtime(name="garrison-demo", max_restarts=20, within_seconds=10.0)
    with structlog_capture(demo.events):
        try:
            rt.start()
            demo.build(rt)
            demo.scenario.restart()  # the demo's clock starts with the clients
            demo.start_clients()
            _drive(demo, console)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            elapsed = demo.scenario.elapsed()
            with _sigint_ignored():
                demo.stop_clients()
                with contextlib.suppress(Exception):
                    demo.sampler.sample(elapsed, demo.scenario.phase(min(elapsed, duration)).name)
                rt.stop()
    report = demo.report(elapsed, interrupted, started_at)
    report_path = out_dir / "report.json"
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    _print_summary(report, console, say)
    if interrupted:
        say("interrupted (Ctrl-C): the runtime stopped cleanly; the report covers the run so far")
    say(f"report: {report_path}")
    if plot:
        reason = write_plot(report, out_dir / "timeline.png")
        say(f"plot:   {out_dir / 'timeline.png'}" if reason is None else f"no plot: {reason}")
    else:
        say("no plot (--no-plot)")
    say(f"output folder: {out_dir}")
    return 130 if interrupted else 0


def _drive(demo: Demo, console: Any) -> None:
    """Sample and show the dashboard until the duration is over."""
    next_line = 1.0
    injected = False

    def step() -> None:
        nonlocal next_line, injected
        at = demo.scenario.elapsed()
        if not injected and at >= demo.duration * INJECT_AT:
            injected = True
            demo.inject()
        row = demo.sampler.sample(at, demo.scenario.phase(at).name)
        if console is None:
            for record in demo.events.take_unseen():
                print(f"[{record['t']:5.1f}s]   ! {describe_event(record)}", flush=True)
            if at >= next_line:
                print(plain_line(at, row["phase"], row), flush=True)
                next_line += 1.0

    if console is None:
        while demo.scenario.elapsed() < demo.duration:
            step()
            demo.stop.wait(TICK)
        return
    from rich.live import Live  # noqa: PLC0415 (the cli extra)

    dashboard = Dashboard(demo)
    with Live(dashboard.render(), console=console, refresh_per_second=4, transient=False) as live:
        while demo.scenario.elapsed() < demo.duration:
            step()
            live.update(dashboard.render())
            demo.stop.wait(TICK)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not interrupt the shutdown (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_summary(report: Mapping[str, Any], console: Any, say: Callable[[str], None]) -> None:
    headers, rows = summary_table(report)
    if console is not None:
        from rich.table import Table  # noqa: PLC0415 (the cli extra)

        table = Table(title="garrison demo summary", title_justify="left")
        for index, header in enumerate(headers):
            table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        say("")
        say("summary:")
        say(plain_table(headers, rows))
    counts = report["counts"]
    injected = report["injected_restart"]
    sim = report["simulation"]
    say(
        f"simulated service: {sim['api_requests']} api requests ({sim['api_errors']} errors, "
        f"{sim['api_429s']} 429s -> {counts.get('rate_limit_feedback', 0)} RateLimitFeedback), "
        f"{sim['db_queries']} db queries ({sim['db_slow_queries']} slow)"
    )
    if injected.get("at") is not None:
        say(
            f"injected crash of external_api/retry at {injected['at']:.1f}s: "
            f"{'restarted by its supervisor' if injected.get('restarted') else 'not restarted'}"
        )
    if report["client_errors"]:
        say(f"client errors: {report['client_errors']}")
    say(f"ran {report['elapsed']:.1f}s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(duration=5.0, live=sys.stdout.isatty()))
