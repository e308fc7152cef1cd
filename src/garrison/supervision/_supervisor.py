"""Erlang/OTP supervisors on pykka, with Akka's kept mailboxes and restart backoff.

A :class:`Supervisor` is an actor that starts its children in order, watches every way they
can end (a crash in ``on_receive`` for a tell or an ask, a failing ``on_start``, a
``BaseException``, a normal stop) and restarts them per its :class:`Strategy` and each
child's :class:`Restart` type. More than ``max_restarts`` restarts within
``within_seconds`` make it stop its children and fail with
:class:`~garrison.errors.SupervisorGaveUp`, which its own parent handles like any other child
failure.

A restart keeps the child's mailbox: only the message being handled when it crashed fails;
messages queued behind it and messages sent while it restarts (up to the child's
``restart_buffer``) reach the new incarnation in order. The :class:`~garrison.Ref` a
supervisor hands out for a child keeps working across its restarts.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from garrison._actor import Actor, SafeLoop
from garrison._clock import Clock, SystemClock
from garrison._dead_letters import DeadLetters, default_dead_letters
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._mailbox import Mailbox
from garrison._messages import Execute, OperationFailed
from garrison._ref import Ref, actor_of
from garrison._scheduler import Scheduler, TimerHandle, make_scheduler
from garrison._spawn import inject_services, safe_class
from garrison.errors import ActorUnavailable, AskTimeout, ConfigError, SupervisorGaveUp
from garrison.observability.events import emit
from garrison.policies.intensity import RestartIntensity, restart_delay
from garrison.supervision._spec import ChildSpec, Restart, Strategy

__all__ = ["RefRegistry", "Supervisor", "SupervisorRef"]


# -- messages the supervisor handles ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChildExited:
    name: str
    incarnation: int
    error: BaseException | None
    will_restart: bool

    def refused(self, reason: str) -> None:
        """The supervisor has stopped: nobody needs this notice (it is no dead letter)."""


@dataclass(frozen=True, slots=True)
class _RestartDue:
    names: tuple[str, ...]
    token: int


@dataclass(frozen=True, slots=True)
class _GetChild:
    name: str


@dataclass(frozen=True, slots=True)
class _Describe:
    pass


@dataclass(frozen=True, slots=True)
class _StartChild:
    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class _TerminateChild:
    name: str


class _Child:
    """The supervisor's record of one child (owned by the supervisor's thread).

    ``mode`` and ``incarnation`` are also read by the child's exit listener in the child's
    thread: the supervisor sets them before it acts on the child.
    """

    __slots__ = (
        "actor",
        "consecutive",
        "give_ups",
        "incarnation",
        "mailbox",
        "mode",
        "ref",
        "restarts",
        "snapshot",
        "spec",
        "started_at",
        "state",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: Ref | None = None
        self.mailbox: Mailbox | None = None
        self.actor: SafeLoop | None = None
        self.incarnation = 0
        self.state = "new"
        self.mode = "run"  # run | hold (stopped for a restart) | terminate
        self.restarts = 0
        self.give_ups = 0
        self.consecutive = 0
        self.started_at = 0.0
        self.snapshot: tuple[Any] | None = None


class _FailureRoute:
    """Dead letters of a supervised child: told Executes go to the failure route."""

    def __init__(self, supervisor: Supervisor, target: str, fallback: Any) -> None:
        self._supervisor = supervisor
        self._target = target
        self._fallback = fallback

    def record(
        self, recipient: str, message: Any, reason: str, error: BaseException | None = None
    ) -> None:
        if isinstance(message, Execute):
            child = self._supervisor._children.get(self._target)
            if child is not None and child.ref is not None:
                emit(
                    "garrison.supervisor.failure_routed",
                    level="warning",
                    source=recipient,
                    target=self._target,
                    operation=message.name,
                    reason=reason,
                )
                child.ref.tell(OperationFailed(message, error, reason, recipient))
                return
        self._fallback.record(recipient, message, reason, error)


class RefRegistry:
    """The stable Refs of a supervision tree by path, shared by all its supervisors.

    A child restarted by its supervisor, or rebuilt because an ancestor restarted, is reached
    through the same Ref object as before.
    """

    def __init__(self) -> None:
        self._refs: dict[str, Ref] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> Ref | None:
        """The Ref registered for ``path``, if any."""
        with self._lock:
            return self._refs.get(path)

    def put(self, path: str, ref: Ref) -> None:
        """Register ``ref`` for ``path``."""
        with self._lock:
            self._refs[path] = ref

    def remove_tree(self, path: str) -> None:
        """Forget ``path`` and everything below it."""
        prefix = path + "/"
        with self._lock:
            for key in [k for k in self._refs if k == path or k.startswith(prefix)]:
                del self._refs[key]


# -- the supervisor --------------------------------------------------------------------------


class Supervisor(Actor):
    """An OTP supervisor. Start one with :meth:`Supervisor.start`, or nest it as a child.

    Arguments (all but ``name`` keyword-only):

    - ``strategy``: :class:`Strategy` (``ONE_FOR_ONE``, ``ONE_FOR_ALL``, ``REST_FOR_ONE``).
    - ``max_restarts`` / ``within_seconds``: restart intensity; one more restart than that
      within the window makes the supervisor give up and fail (escalate).
    - ``restart_backoff``: optional ``(min, max)`` seconds; the ``n``-th consecutive restart
      of a child waits ``min(max, min * 2**n)`` with up to 20 % jitter. The count resets once
      the child has run ``backoff_reset_after`` seconds (default ``within_seconds``).
    - ``children``: :class:`ChildSpec` list, started in order, stopped in reverse order.
    - ``route_failures_to``: the name of a child (a fallback actor) that receives an
      :class:`~garrison.OperationFailed` for every told Execute a crash leaves unanswered,
      in this supervisor's children and in nested supervisors that have no route of their
      own.
    - ``clock``, ``scheduler``, ``loop``, ``dead_letters``: shared services; a supervisor
      given none makes its own (and stops them when it stops).
    """

    def __init__(
        self,
        name: str,
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        within_seconds: float = 5.0,
        restart_backoff: tuple[float, float] | None = None,
        backoff_reset_after: float | None = None,
        children: Sequence[ChildSpec] = (),
        route_failures_to: str | None = None,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
        dead_letters: DeadLetters | None = None,
        path: str | None = None,
        seed: int | None = None,
        ref_registry: RefRegistry | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError("name", f"must be a non-empty string without '/', got {name!r}")
        self.name = name
        self.path = path if path is not None else name
        self.strategy = _parse_strategy(strategy)
        try:
            self._intensity = RestartIntensity(max_restarts, within_seconds)
        except ValueError as error:
            key = "max_restarts" if "max_restarts" in str(error) else "within_seconds"
            raise ConfigError(key, str(error).split(" ", 1)[1]) from None
        self._backoff = _parse_backoff(restart_backoff)
        reset_after = within_seconds if backoff_reset_after is None else backoff_reset_after
        if not (isinstance(reset_after, int | float) and reset_after > 0):
            raise ConfigError("backoff_reset_after", f"must be > 0, got {reset_after!r}")
        self._backoff_reset_after = float(reset_after)
        specs = list(children)
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise ConfigError("children", f"must be ChildSpec objects, got {spec!r}")
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError("children", f"duplicate child names {duplicates}")
        if route_failures_to is not None and route_failures_to not in names:
            raise ConfigError(
                "route_failures_to", f"names no child: {route_failures_to!r} (children: {names})"
            )
        self._specs = specs
        self._route_failures_to = route_failures_to
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._owned_scheduler = scheduler is None
        self.scheduler: Scheduler = (
            scheduler if scheduler is not None else make_scheduler(self.clock)
        )
        self._owned_loop = loop is None
        self.loop = loop if loop is not None else EventLoopThread(name=f"{name}-loop")
        self.dead_letters = dead_letters if dead_letters is not None else default_dead_letters
        # What the children's undeliverable messages go to: the failure route if there is
        # one (nested supervisors pass it on to their own children), else dead letters.
        self._child_letters: Any = (
            _FailureRoute(self, route_failures_to, self.dead_letters)
            if route_failures_to is not None
            else self.dead_letters
        )
        self._rng = random.Random(seed)
        self._children: dict[str, _Child] = {}
        self._registry = ref_registry if ref_registry is not None else RefRegistry()
        self._restarts = 0
        self._restart_token = itertools.count(1)
        self._pending_restart: tuple[int, TimerHandle] | None = None
        self._self_ref: Ref | None = None
        self.start_error: BaseException | None = None
        self._started = threading.Event()
        self._state = "starting"

    # -- public entry point -------------------------------------------------------------------

    @classmethod
    def start(  # type: ignore[override]
        cls,
        name: str,
        *args: Any,
        on_exit: Callable[[BaseException | None], object] | None = None,
        **kwargs: Any,
    ) -> SupervisorRef:
        """Start a supervisor and its children; return a :class:`SupervisorRef` to it.

        ``on_exit(error)`` is called (in the supervisor's thread) when this top-level
        supervisor ends: with the error if it failed (it gave up, say), None if stopped.
        Raises the error of a child that failed to start (after stopping those started).
        """
        if args:
            raise TypeError("Supervisor.start takes the name, then keyword arguments only")
        supervisor = cls(name, **kwargs)
        if on_exit is not None:
            supervisor._exit_listener = lambda _actor, error: on_exit(error)
        supervisor.mailbox.name = name
        supervisor.mailbox.dead_letters = supervisor.dead_letters
        pykka.ActorRegistry.register(supervisor.actor_ref)
        supervisor._start_actor_loop()
        ref = SupervisorRef(supervisor.actor_ref, name)
        supervisor._started.wait()
        error = supervisor.start_error
        if error is not None:
            thread = supervisor._thread
            if thread is not None:
                thread.join(5.0)
            raise error
        return ref

    # -- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the children in order; a child that cannot start fails the supervisor."""
        self._self_ref = Ref(self.actor_ref, self.name)
        try:
            for spec in self.child_specs():
                if not isinstance(spec, ChildSpec):
                    raise TypeError(f"child_specs() must yield ChildSpec objects, got {spec!r}")
                if spec.name in self._children:
                    raise ValueError(f"supervisor {self.path!r} already has a child {spec.name!r}")
                child = _Child(spec)
                self._children[spec.name] = child
                self._start_child(child)
        except BaseException as error:
            self.start_error = error
            self._terminate_all("a sibling failed to start")
            self._release_services()
            self._started.set()
            raise
        self._state = "running"
        self._started.set()
        emit(
            "garrison.supervisor.started",
            supervisor=self.path,
            strategy=self.strategy.value,
            children=list(self._children),
        )

    def child_specs(self) -> Iterator[ChildSpec]:
        """The children to start, in order (each started before the next is asked for).

        The default yields the ``children`` given at construction. A subclass may build
        specs as it goes, e.g. passing an earlier child's :meth:`child_ref` to a later one:
        they are built again, the same way, whenever the supervisor itself restarts.
        """
        yield from self._specs

    def child_ref(self, name: str) -> Ref:
        """The stable Ref of the already-started child ``name`` (for :meth:`child_specs`)."""
        child = self._children.get(name)
        if child is None or child.ref is None:
            raise LookupError(f"supervisor {self.path!r} has no started child {name!r}")
        return child.ref

    def on_stop(self) -> None:
        """Stop the children in reverse start order, then the services this supervisor owns."""
        self._state = "stopping"
        self._cancel_pending_restart()
        self._terminate_all("its supervisor stopped")
        self._release_services()
        self._state = "stopped"
        emit("garrison.supervisor.stopped", supervisor=self.path)

    def on_failure(self, *_exc: Any) -> None:
        """A failing supervisor takes its children down with it."""
        self._state = "failed"
        self._cancel_pending_restart()
        self._terminate_all("its supervisor failed")
        self._release_services()

    # -- messages ------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Handle child exits, restart timers and the SupervisorRef's requests."""
        if isinstance(message, _ChildExited):
            self._on_child_exited(message)
            return None
        if isinstance(message, _RestartDue):
            if self._pending_restart is not None and self._pending_restart[0] == message.token:
                self._pending_restart = None
                self._restart_group(message.names)
            return None
        if isinstance(message, _GetChild):
            child = self._children.get(message.name)
            if child is None or child.ref is None:
                raise_lookup = LookupError(
                    f"supervisor {self.path!r} has no child {message.name!r} "
                    f"(children: {list(self._children)})"
                )
                self.reject(raise_lookup)
                return None
            return child.ref
        if isinstance(message, _Describe):
            return self._describe()
        if isinstance(message, _StartChild):
            return self._on_start_child(message.spec)
        if isinstance(message, _TerminateChild):
            self._on_terminate_child(message.name)
            return None
        return super().on_receive(message)

    def _on_start_child(self, spec: object) -> Ref | None:
        if not isinstance(spec, ChildSpec):
            self.reject(TypeError(f"start_child takes a ChildSpec, got {spec!r}"))
            return None
        if spec.name in self._children:
            self.reject(ValueError(f"supervisor {self.path!r} already has a child {spec.name!r}"))
            return None
        child = _Child(spec)
        self._children[spec.name] = child
        try:
            self._start_child(child)
        except Exception as error:
            del self._children[spec.name]
            self.reject(error)
            return None
        return child.ref

    def _on_terminate_child(self, name: str) -> None:
        child = self._children.get(name)
        if child is None:
            self.reject(LookupError(f"supervisor {self.path!r} has no child {name!r}"))
            return
        self._terminate(child, "it was terminated by its supervisor")
        del self._children[name]
        self._registry.remove_tree(f"{self.path}/{name}")

    # -- starting and stopping children ---------------------------------------------------------

    def _services(self) -> dict[str, Any]:
        return {"clock": self.clock, "scheduler": self.scheduler, "loop": self.loop}

    def _construct(self, spec: ChildSpec) -> SafeLoop:
        """A new incarnation of ``spec``'s actor, with the services it takes."""
        actor_class = safe_class(spec.actor_class)
        kwargs = inject_services(actor_class, spec.kwargs, self._services())
        args = spec.args
        if issubclass(actor_class, Supervisor):
            kwargs.setdefault("dead_letters", self._child_letters)
            kwargs.setdefault("path", f"{self.path}/{spec.name}")
            kwargs.setdefault("ref_registry", self._registry)
            if not args and "name" not in kwargs:
                args = (spec.name,)
        actor = actor_class(*args, **kwargs)
        assert isinstance(actor, SafeLoop)
        return actor

    def _start_child(self, child: _Child) -> None:
        spec = child.spec
        actor = self._construct(spec)
        actor_class = type(actor)
        first_start = child.incarnation == 0
        child.incarnation += 1
        path = f"{self.path}/{spec.name}"
        if child.mailbox is None:
            mailbox = actor.mailbox
            mailbox.name = path
            if spec.name == self._route_failures_to:
                mailbox.dead_letters = self.dead_letters  # never route the route to itself
            else:
                mailbox.dead_letters = self._child_letters
            child.mailbox = mailbox
        else:  # a restart: the new incarnation takes over the kept mailbox
            actor.mailbox.retire(actor)
            actor.actor_inbox = child.mailbox
            actor._actor_ref = pykka.ActorRef(actor)
        actor._exit_listener = self._listener_for(child, child.incarnation)
        if child.snapshot is not None:
            actor._pending_restore = child.snapshot
        child.mode = "run"
        child.actor = actor
        child.state = "running"
        child.started_at = self.clock.monotonic()
        if child.ref is None:
            child.ref = self._registry.get(path)
            if child.ref is None:
                ref_class = SupervisorRef if issubclass(actor_class, Supervisor) else Ref
                child.ref = ref_class(actor.actor_ref, spec.name)
                self._registry.put(path, child.ref)
        child.ref.repoint(actor.actor_ref)
        child.mailbox.adopt(actor)
        pykka.ActorRegistry.register(actor.actor_ref)
        actor._start_actor_loop()
        if first_start and isinstance(actor, Supervisor):
            # A nested supervisor starts its own children: like OTP's start_link, its first
            # start is synchronous, so a subtree that cannot be built fails this start
            # (and reaches whoever asked for it) instead of crash-looping.
            actor._started.wait()
            if actor.start_error is not None:
                child.mode = "terminate"
                child.state = "stopped"
                raise actor.start_error
        emit(
            "garrison.supervisor.child_started",
            level="debug",
            supervisor=self.path,
            child=spec.name,
            incarnation=child.incarnation,
        )

    def _listener_for(self, child: _Child, incarnation: int) -> Any:
        """The function a child calls, in its own thread, when it ends."""
        supervisor_mailbox = self.mailbox

        def on_exit(actor: SafeLoop, error: BaseException | None) -> None:
            if child.incarnation != incarnation or child.mode == "terminate":
                return
            restart = child.spec.restart
            keep = (
                child.mode == "hold"
                or restart is Restart.PERMANENT
                or (restart is Restart.TRANSIENT and error is not None)
            )
            if keep:
                child.snapshot = _take_snapshot(actor, child.snapshot)
                actor.mailbox.suspend(child.spec.restart_buffer)
            if child.mode == "hold":
                return
            notice = _ChildExited(child.spec.name, incarnation, error, keep)
            if not supervisor_mailbox.offer(Envelope(notice)) and keep:
                actor.mailbox.close("its supervisor has stopped")

        return on_exit

    def _stop_child(self, child: _Child, mode: str) -> bool:
        """Stop the running incarnation of ``child`` within its shutdown timeout.

        ``mode`` tells its exit listener what happens next ("hold": its mailbox is kept for a
        restart; "terminate": it is closed). A child that does not stop in time is retired
        (it keeps its thread until its call returns, but never reads the mailbox again).
        """
        actor = child.actor
        child.mode = mode
        child.actor = None
        if actor is None or child.mailbox is None:
            return True
        timeout = child.spec.shutdown_timeout
        done: Future[Any] = Future()
        stop_request = Envelope(pykka_messages._ActorStop(), reply_to=done)
        child.mailbox.offer(stop_request, urgent=True)
        stopped = True
        try:
            done.get(timeout)
        except AskTimeout:
            stopped = False
        except ActorUnavailable:
            pass
        thread = actor._thread
        if stopped and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            stopped = not thread.is_alive()
        if not stopped:
            child.mailbox.withdraw(stop_request)  # not for the next incarnation
            actor.actor_stopped.set()
            pykka.ActorRegistry.unregister(actor.actor_ref)
            if mode == "hold":
                child.mailbox.suspend(child.spec.restart_buffer)
            child.mailbox.retire(actor)
            emit(
                "garrison.supervisor.child_abandoned",
                level="warning",
                supervisor=self.path,
                child=child.spec.name,
                shutdown_timeout=timeout,
            )
        return stopped

    def _terminate(self, child: _Child, reason: str) -> None:
        self._stop_child(child, "terminate")
        child.state = "stopped"
        if child.mailbox is not None:
            child.mailbox.close(reason)
        emit("garrison.supervisor.child_stopped", supervisor=self.path, child=child.spec.name)

    def _terminate_all(self, reason: str) -> None:
        for child in reversed(list(self._children.values())):
            if child.state != "stopped":
                self._terminate(child, reason)

    def _release_services(self) -> None:
        if self._owned_scheduler:
            self.scheduler.stop()
        if self._owned_loop:
            self.loop.stop()

    # -- failures and restarts ------------------------------------------------------------------

    def _on_child_exited(self, notice: _ChildExited) -> None:
        child = self._children.get(notice.name)
        if child is None or child.incarnation != notice.incarnation or child.mode != "run":
            return
        child.actor = None
        error = notice.error
        if error is not None:
            emit(
                "garrison.supervisor.child_crashed",
                level="error",
                supervisor=self.path,
                child=notice.name,
                error=error,
            )
            if isinstance(error, SupervisorGaveUp):
                child.give_ups += 1
                emit(
                    "garrison.supervisor.escalated",
                    level="error",
                    supervisor=self.path,
                    child=notice.name,
                    error=error,
                )
        if not notice.will_restart:
            child.state = "stopped"
            if child.mailbox is not None:
                child.mailbox.close("the actor has stopped")
            emit(
                "garrison.supervisor.child_exited",
                supervisor=self.path,
                child=notice.name,
                crashed=error is not None,
            )
            if child.spec.restart is Restart.TEMPORARY:
                del self._children[notice.name]
                self._registry.remove_tree(f"{self.path}/{notice.name}")
            return
        self._restart_after_failure(child, error)

    def _restart_after_failure(self, child: _Child, error: BaseException | None) -> None:
        now = self.clock.monotonic()
        if not self._intensity.record(now):
            self._give_up(child, error)
            return
        self._restarts += 1
        group = self._restart_group_for(child)
        for other in reversed(group):
            if other is not child and other.actor is not None:
                self._stop_child(other, "hold")
        for member in group:
            member.state = "restarting"
            member.mode = "hold"
        if now - child.started_at >= self._backoff_reset_after:
            child.consecutive = 0
        delay = 0.0
        if self._backoff is not None:
            delay = restart_delay(child.consecutive, *self._backoff, self._rng)
        child.consecutive += 1
        names = tuple(member.spec.name for member in group)
        if delay > 0 and self._self_ref is not None:
            token = next(self._restart_token)
            self._cancel_pending_restart()
            handle = self.scheduler.schedule(delay, self._self_ref, _RestartDue(names, token))
            self._pending_restart = (token, handle)
            emit(
                "garrison.supervisor.restart_scheduled",
                supervisor=self.path,
                children=list(names),
                delay=round(delay, 6),
            )
        else:
            self._restart_group(names)

    def _restart_group_for(self, child: _Child) -> list[_Child]:
        children = list(self._children.values())
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return [c for c in children if c.state != "stopped" or c is child]
        index = children.index(child)
        return [c for c in children[index:] if c.state != "stopped" or c is child]

    def _restart_group(self, names: tuple[str, ...]) -> None:
        for name in names:
            child = self._children.get(name)
            if child is None or child.state != "restarting":
                continue
            child.restarts += 1
            try:
                self._start_child(child)
            except Exception as error:
                emit(
                    "garrison.supervisor.restart_failed",
                    level="error",
                    supervisor=self.path,
                    child=name,
                    error=error,
                )
                child.state = "restarting"
                self._restart_after_failure(child, error)
                return
            emit(
                "garrison.supervisor.restarted",
                level="warning",
                supervisor=self.path,
                child=name,
                restarts=child.restarts,
            )

    def _give_up(self, child: _Child, error: BaseException | None) -> None:
        failure = SupervisorGaveUp(
            self.path, self._intensity.max_restarts, self._intensity.within_seconds, error
        )
        emit(
            "garrison.supervisor.gave_up",
            level="critical",
            supervisor=self.path,
            child=child.spec.name,
            max_restarts=self._intensity.max_restarts,
            within_seconds=self._intensity.within_seconds,
            error=error,
        )
        self._terminate_all("its supervisor gave up")
        self._crash(None, failure)

    def _cancel_pending_restart(self) -> None:
        if self._pending_restart is not None:
            self._pending_restart[1].cancel()
            self._pending_restart = None

    def _describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "state": self._state,
            "strategy": self.strategy.value,
            "restarts": self._restarts,
            "children": [_describe_child(name, child) for name, child in self._children.items()],
        }


def _describe_child(name: str, child: _Child) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "state": child.state,
        "restarts": child.restarts,
        "give_ups": child.give_ups,
        "restart": child.spec.restart.value,
        "actor_class": child.spec.actor_class.__name__,
        "ref": child.ref,
    }
    parts = getattr(child.actor, "fused_parts", None)
    if callable(parts):  # one actor running several (a fused pipeline's stages)
        entry["children"] = [
            {
                "name": part,
                "state": child.state,
                "restarts": child.restarts,
                "restart": "fused",
                "actor_class": actor_class,
            }
            for part, actor_class in parts()
        ]
    return entry


class SupervisorRef(Ref):
    """A :class:`~garrison.Ref` to a supervisor, with its management calls."""

    __slots__ = ()

    def child(self, path: str, timeout: float | None = 5.0) -> Ref:
        """The stable Ref of the child at ``path`` (``"a"``, or ``"workers/w1"`` for nesting).

        Raises ``LookupError`` if there is no such child.
        """
        if not isinstance(path, str) or not path.strip("/"):
            raise ValueError(f"child path must be a non-empty string, got {path!r}")
        head, _, rest = path.strip("/").partition("/")
        ref = self.ask(_GetChild(head), timeout)
        if not rest:
            assert isinstance(ref, Ref)
            return ref
        if not isinstance(ref, SupervisorRef):
            raise LookupError(f"{head!r} is not a supervisor, so it has no child {rest!r}")
        return ref.child(rest, timeout)

    def tree(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """This supervisor and its descendants: name, state, restarts and children."""
        info = self.ask(_Describe(), timeout)
        children = []
        for entry in info["children"]:
            ref = entry.pop("ref")
            if isinstance(ref, SupervisorRef) and entry["state"] == "running":
                try:
                    nested = ref.tree(timeout)
                except (ActorUnavailable, AskTimeout):
                    nested = None
                if nested is not None:
                    entry["children"] = nested["children"]
                    entry["strategy"] = nested["strategy"]
                    entry["restarts_of_children"] = nested["restarts"]
            children.append(entry)
        info["children"] = children
        return dict(info)

    def start_child(self, spec: ChildSpec, timeout: float | None = 10.0) -> Ref:
        """Start a new child in the running tree and return its stable Ref."""
        ref = self.ask(_StartChild(spec), timeout)
        assert isinstance(ref, Ref)
        return ref

    def terminate_child(self, name: str, timeout: float | None = 30.0) -> None:
        """Stop the child ``name`` and remove it from the tree (it is not restarted)."""
        self.ask(_TerminateChild(name), timeout)

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the supervisor: its children first (reverse start order), then itself."""
        actor = actor_of(self.actor_ref)
        stopped = super().stop(timeout)
        thread = actor._thread if isinstance(actor, SafeLoop) else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return stopped and not thread.is_alive()
        return stopped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _take_snapshot(actor: SafeLoop, previous: tuple[Any] | None) -> tuple[Any] | None:
    snapshot = getattr(actor, "snapshot", None)
    if not callable(snapshot) or not callable(getattr(actor, "restore", None)):
        return previous
    try:
        return (snapshot(),)
    except Exception as error:
        emit(
            "garrison.supervisor.snapshot_failed",
            level="error",
            actor=actor.mailbox.name,
            error=error,
        )
        return previous


def _parse_strategy(strategy: Strategy | str) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        try:
            return Strategy(strategy.lower())
        except ValueError:
            pass
    choices = ", ".join(s.value for s in Strategy)
    raise ConfigError("strategy", f"must be one of {choices}, got {strategy!r}")


def _parse_backoff(backoff: object) -> tuple[float, float] | None:
    if backoff is None:
        return None
    if not (isinstance(backoff, tuple | list) and len(backoff) == 2):
        raise ConfigError("restart_backoff", f"must be a (min, max) pair, got {backoff!r}")
    low, high = backoff
    for value in (low, high):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError("restart_backoff", f"must hold finite numbers, got {backoff!r}")
    if not 0 < low <= high:
        raise ConfigError("restart_backoff", f"needs 0 < min <= max, got {backoff!r}")
    return float(low), float(high)
