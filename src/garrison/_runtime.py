"""The Runtime: owns the clock, the scheduler, dead letters, the event loop and its actors."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Self

import pykka

from garrison._clock import Clock, SystemClock
from garrison._dead_letters import DeadLetters
from garrison._loop import EventLoopThread
from garrison._ref import Ref
from garrison._scheduler import ManualScheduler, ThreadScheduler, make_scheduler
from garrison._spawn import inject_services, start_actor, stop_and_join
from garrison.observability.events import emit

__all__ = ["Runtime"]


class Runtime:
    """A garrison runtime: use it as a context manager, or ``start()`` and ``stop()`` it.

    It owns one scheduler (one timer thread, or none with a ManualClock), one event loop
    thread for coroutine operations (started on first use), a dead-letter sink, and every
    actor spawned through it. ``stop()`` stops those actors in reverse start order and
    leaves no thread behind.

    ``clock`` defaults to the system clock; tests pass a
    :class:`garrison.testing.ManualClock`.
    """

    def __init__(
        self,
        *,
        name: str = "garrison",
        clock: Clock | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Runtime name must be a non-empty string, got {name!r}")
        if clock is not None and not callable(getattr(clock, "monotonic", None)):
            raise TypeError(f"clock must have a monotonic() method, got {clock!r}")
        self.name = name
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.scheduler: ThreadScheduler | ManualScheduler = make_scheduler(self.clock)
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters()
        self.loop = EventLoopThread(name=f"{name}-loop")
        self._refs: list[Ref] = []
        self._lock = threading.Lock()
        self._state = "new"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"new"``, ``"running"`` or ``"stopped"``."""
        return self._state

    def start(self) -> Self:
        """Start the runtime (idempotent); return it."""
        with self._lock:
            if self._state == "stopped":
                raise RuntimeError(f"runtime {self.name!r} has stopped and cannot start again")
            if self._state == "new":
                self._state = "running"
                emit("garrison.runtime.started", runtime=self.name)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every actor (newest first), then the scheduler and the event loop.

        Each actor gets ``timeout`` seconds to finish what it is handling; one that does not
        is abandoned (its daemon thread cannot be killed) and reported.
        """
        with self._lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            refs, self._refs = self._refs, []
        for ref in reversed(refs):
            if not stop_and_join(ref, timeout):
                emit(
                    "garrison.runtime.actor_abandoned",
                    level="warning",
                    runtime=self.name,
                    actor=ref.name,
                    timeout=timeout,
                )
        self.scheduler.stop()
        self.loop.stop(timeout)
        emit("garrison.runtime.stopped", runtime=self.name, actors=len(refs))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- actors -----------------------------------------------------------------------------

    def spawn(
        self, actor_class: type[pykka.Actor], *args: Any, name: str | None = None, **kwargs: Any
    ) -> Ref:
        """Start an actor owned by this runtime and return its :class:`Ref`.

        Keyword arguments ``clock``, ``scheduler`` and ``loop`` are supplied from the runtime
        when the actor's constructor accepts them and the caller did not pass them.
        """
        if self._state != "running":
            raise RuntimeError(f"runtime {self.name!r} is {self._state}; start it first")
        if not (isinstance(actor_class, type) and issubclass(actor_class, pykka.Actor)):
            raise TypeError(f"actor_class must be a pykka.Actor subclass, got {actor_class!r}")
        actor_name = name if name is not None else actor_class.__name__
        kwargs = self.inject(actor_class, kwargs)
        ref = Ref(start_actor(actor_class, args, kwargs, actor_name, self.dead_letters), actor_name)
        with self._lock:
            if self._state != "running":
                stop_and_join(ref, 1.0)
                raise RuntimeError(f"runtime {self.name!r} stopped while spawning {actor_name!r}")
            self._refs.append(ref)
        return ref

    def inject(self, actor_class: type[pykka.Actor], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Add the runtime's services to ``kwargs`` where ``actor_class`` takes them."""
        services = {"clock": self.clock, "scheduler": self.scheduler, "loop": self.loop}
        return inject_services(actor_class, kwargs, services)

    def actors(self) -> list[Ref]:
        """The Refs of the actors this runtime started, oldest first."""
        with self._lock:
            return list(self._refs)

    def __repr__(self) -> str:
        return f"<garrison.Runtime {self.name!r} {self._state}, {len(self._refs)} actors>"
