"""Crash injection and bounded waiting, shared by the chaos and reliability tests.

**How an actor is crashed.** garrison's actors are the stock ones, so a crash is injected
into the running incarnation: :class:`Crasher` takes the actor object behind a Ref
(``garrison._ref.actor_of(ref.actor_ref)``) and shadows one of its methods (a stage's
``handle_execute`` / ``handle_outcome`` / ``handle_other``, a worker's or a supervisor's
``on_receive``) with an instance attribute that removes itself and raises :class:`Chaos`
the next time the actor calls it, in the actor's own thread. Nothing is sent to the actor
and no class is changed; the next incarnation (a new object) has no shadowing attribute.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pykka
import structlog

from garrison import Future, Runtime
from garrison._ref import Ref, actor_of
from garrison.errors import AskTimeout, RateLimited
from garrison.pipeline import Pipeline

__all__ = [
    "STAGE_HOOKS",
    "WAIT",
    "Chaos",
    "Crasher",
    "call_when_admitted",
    "counted_logs",
    "outcome",
    "quiet_logs",
    "settle_threads",
    "stage_states",
    "wait_until_whole",
]

WAIT = 20.0  # the default bound on any single wait; a healthy run needs a small fraction

# The hooks of each pipeline stage that chaos may shadow (those that see traffic): the
# methods a stage's own logic lives in, for an incoming operation (handle_execute), an
# outcome coming back (handle_outcome), timers and completion notices (handle_other).
STAGE_HOOKS: dict[str, tuple[str, ...]] = {
    "fallback": ("handle_execute", "handle_outcome"),
    "retry": ("handle_execute", "handle_outcome", "handle_other"),
    "circuit_breaker": ("handle_execute", "handle_outcome"),
    "rate_limiter": ("handle_execute",),
    "timeout": ("handle_execute", "handle_other"),
    "bulkhead": ("handle_execute", "handle_other"),
}


class Chaos(RuntimeError):
    """The error an injected crash raises (not retryable: it reaches the caller as it is)."""


class Crasher:
    """Shadows a method of a running actor so that its next call crashes the actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fired: Counter[tuple[str, str]] = Counter()
        self._armed: list[tuple[Any, str]] = []

    def arm(self, stage: str, ref: Ref, hook: str, spared: tuple[str, ...] = ()) -> bool:
        """Arm ``hook`` of the current incarnation behind ``ref``; False if it cannot be."""
        return self.arm_actor(stage, actor_of(ref.actor_ref), hook, spared)

    def arm_actor(
        self, target: str, actor: pykka.Actor | None, hook: str, spared: tuple[str, ...] = ()
    ) -> bool:
        """Arm ``hook`` of ``actor`` (counted as ``target``); False if it cannot be.

        A call whose first argument's class is named in ``spared`` goes to the real method
        and the hook stays armed. The crash raises ``Chaos("chaos in <target>.<hook>")``.
        """
        if actor is None or actor.actor_stopped.is_set() or hook in vars(actor):
            return False  # restarting, or armed already
        real = getattr(actor, hook)
        crasher = self

        def crash(*args: Any) -> Any:
            if spared and args and type(args[0]).__name__ in spared:
                return real(*args)
            vars(actor).pop(hook, None)  # one shot (the actor is about to die anyway)
            with crasher._lock:
                crasher.fired[(target, hook)] += 1
            raise Chaos(f"chaos in {target}.{hook}")

        setattr(actor, hook, crash)
        with self._lock:
            self._armed.append((actor, hook))
        return True

    def disarm_all(self) -> None:
        """Remove every shadowing attribute that has not fired (racing a firing one is fine)."""
        with self._lock:
            armed, self._armed = self._armed, []
        for actor, hook in armed:
            vars(actor).pop(hook, None)

    def total(self) -> int:
        """How many armed hooks have fired."""
        with self._lock:
            return sum(self.fired.values())


@contextmanager
def quiet_logs() -> Iterator[list[dict[str, Any]]]:
    """Capture garrison's events instead of rendering thousands of crash tracebacks."""
    with structlog.testing.capture_logs() as events:
        yield events


@contextmanager
def counted_logs() -> Iterator[Counter[str]]:
    """Count garrison's events by name and drop them (for long runs: nothing accumulates).

    Like ``structlog.testing.capture_logs`` this swaps the configured processors, which is
    not thread-safe: enter it before starting the runtime whose events it should count.
    """
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(_logger: Any, _method: str, event: Any) -> Any:
        with lock:
            counts[event.get("event", "")] += 1
        raise structlog.DropEvent

    processors = structlog.get_config()["processors"]
    saved = processors.copy()
    try:
        processors.clear()
        processors.append(count)
        structlog.configure(processors=processors)
        yield counts
    finally:
        processors.clear()
        processors.extend(saved)
        structlog.configure(processors=processors)


def settle_threads(baseline: set[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Join (bounded) the threads started since ``baseline``; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in baseline and t.is_alive()]
        remaining = deadline - time.monotonic()
        if not extra or remaining <= 0:
            return extra
        extra[0].join(min(remaining, 0.05))


def outcome(future: Future[Any], timeout: float) -> tuple[str, Any]:
    """("value", v) / ("error", e) / ("hung", None) after waiting at most ``timeout``."""
    try:
        error = future.exception(max(timeout, 0.0))
    except AskTimeout:
        return ("hung", None)
    if error is not None:
        return ("error", error)
    return ("value", future.get(0))


def stage_states(rt: Runtime, pipeline: str) -> dict[str, str]:
    """``{stage: state}`` of the pipeline's stages, from the runtime's supervision tree."""
    tree = rt.tree()
    (entry,) = [c for c in tree["children"] if c["name"] == f"pipeline:{pipeline}"]
    if entry["state"] != "running":
        return {"<pipeline supervisor>": entry["state"]}
    states: dict[str, str] = {}
    for child in entry.get("children", []):
        # a fused pipeline's host lists its stages as parts sharing its state
        for part in child.get("children") or [child]:
            states[part["name"]] = part["state"]
    return states


def wait_until_whole(
    rt: Runtime, pipeline: str, stages: set[str], timeout: float = WAIT
) -> dict[str, str]:
    """Poll (bounded) until every stage is running again; return the last states seen."""
    deadline = time.monotonic() + timeout
    while True:
        states = stage_states(rt, pipeline)
        if set(states) == stages and all(s == "running" for s in states.values()):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(0.01)


def call_when_admitted(api: Pipeline, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``api.call(fn)``, tried again (bounded) while the rate limiter rejects it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return api.options(name="after").call(fn)
        except RateLimited as limited:  # told operations may still be retrying
            if time.monotonic() > deadline:
                raise
            time.sleep(limited.retry_after)
