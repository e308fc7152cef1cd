"""Circuit breakers by service name, the seed document's API: a manager and its handles.

```python
from garrison import CircuitBreakerManager, CircuitBreakerConfig

with CircuitBreakerManager() as breakers:          # owns a Runtime until stop() / the end
    db = breakers.get_or_create("database", CircuitBreakerConfig(failure_threshold=3))
    rows = db.call(query, "select 1")               # runs in this thread; raises CircuitOpen
    rows = await db.acall(aquery, "select 1")       # in a coroutine: never blocks the loop
    db.get_status()["state"]                        # "closed", "open", "half_open", ...
```

Each breaker is a :class:`~garrison.actors.breaker.CircuitBreakerActor` supervised by the
runtime's root supervisor (restart ``permanent``; its state survives a crash). A handle never
holds the breaker across the protected call: ``call`` asks the actor for a permit, runs the
function in the caller's own thread, and reports the outcome (waiting until the actor has
recorded it, so the next call sees the state this one produced). Concurrent callers run
concurrently; the breaker only decides who may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, cast, overload

from garrison._clock import Clock
from garrison._future import Future
from garrison._messages import GetStatus
from garrison._ref import Ref
from garrison.actors.breaker import (
    Acquire,
    CircuitBreakerActor,
    Disable,
    ForceClose,
    ForceOpen,
    Report,
    Reset,
    TakeSnapshot,
    TransitionListener,
)
from garrison.backends import backend_config
from garrison.errors import ActorUnavailable, AskTimeout
from garrison.observability.events import emit
from garrison.policies.breaker import CircuitBreakerConfig, Permit

if TYPE_CHECKING:
    from garrison._runtime import Runtime
    from garrison.backends._backend import RedisBackend

__all__ = ["CircuitBreakerHandle", "CircuitBreakerManager"]

P = ParamSpec("P")
R = TypeVar("R")

_ACQUIRE = Acquire()
_STATUS = GetStatus()


class CircuitBreakerHandle:
    """The caller's side of one service's breaker (get it from the manager).

    ``call`` / ``acall`` protect a function; ``get_status``, ``force_open``,
    ``force_close``, ``reset`` and ``disable`` talk to the actor; ``ref`` is the actor's
    :class:`~garrison.Ref` (it also takes ``Execute`` messages). A rejected call raises
    :class:`~garrison.errors.CircuitOpen`, whose text contains "Circuit breaker is OPEN".
    ``timeout`` bounds each exchange with the actor (never the protected function).
    """

    __slots__ = ("_clock", "_config", "_name", "_ref", "_timeout")

    def __init__(
        self, name: str, ref: Ref, config: CircuitBreakerConfig, clock: Clock, timeout: float
    ) -> None:
        self._name = name
        self._ref = ref
        self._config = config
        self._clock = clock
        self._timeout = timeout

    @property
    def name(self) -> str:
        """The service name."""
        return self._name

    @property
    def ref(self) -> Ref:
        """The breaker actor's Ref (stable across its restarts)."""
        return self._ref

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration."""
        return self._config

    # -- protected calls ------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` in this thread if the breaker admits it.

        Returns its result or re-raises its error, after the breaker has recorded the
        outcome. Raises ``CircuitOpen`` without calling ``fn`` when the breaker refuses.

        If ``fn`` returns a coroutine (``call(lambda: fetch())`` with an async ``fetch``, as
        in the seed document), ``call`` returns a coroutine that awaits it and reports its
        outcome: await it (only the permit request blocks, briefly; a coroutine never awaited
        holds its permit until the probe timeout). In asyncio code prefer :meth:`acall`, which
        never blocks the loop.
        """
        permit = self._acquire()
        clock = self._clock
        started = clock.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._report(permit, False, clock.monotonic() - started, error)
            raise
        if inspect.iscoroutine(result):
            return cast(R, self._finish(permit, started, result))
        self._report(permit, True, clock.monotonic() - started, None)
        return result

    @overload
    async def acall(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    @overload
    async def acall(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def acall(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """Like :meth:`call`, for asyncio: ``fn`` may be a coroutine function or a plain one.

        Waiting for the breaker suspends the coroutine; it never blocks the event loop. A
        plain ``fn`` runs on the loop's thread (keep it short, or use ``call`` in a thread).
        """
        permit = await self._wait(self._ref.ask_future(_ACQUIRE))
        clock = self._clock
        started = clock.monotonic()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as error:
            await self._areport(permit, False, clock.monotonic() - started, error)
            raise
        await self._areport(permit, True, clock.monotonic() - started, None)
        return result

    # -- management -----------------------------------------------------------------------------

    def get_status(self) -> dict[str, Any]:
        """The breaker's status: ``state`` ("closed", "open", "half_open", "forced_open",
        "disabled"), ``service``, counts, ``error_rate``, ``slow_call_rate``,
        ``retry_after``, ``recovery_timeout`` (the current wait) and more.
        """
        status = self._ref.ask(_STATUS, self._timeout)
        assert isinstance(status, dict)
        return status

    def force_open(self) -> str:
        """Reject every call until ``force_close`` or ``reset``; returns the new state."""
        return str(self._ref.ask(ForceOpen(), self._timeout))

    def force_close(self) -> str:
        """Close the breaker with fresh counters; returns the new state."""
        return str(self._ref.ask(ForceClose(), self._timeout))

    def reset(self) -> str:
        """Back to the initial state (closed, empty window); returns the new state."""
        return str(self._ref.ask(Reset(), self._timeout))

    def disable(self) -> str:
        """Admit every call and count nothing until reset; returns the new state."""
        return str(self._ref.ask(Disable(), self._timeout))

    # -- the exchange with the actor ------------------------------------------------------------

    def _acquire(self) -> Permit:
        permit = self._ref.ask(_ACQUIRE, self._timeout)
        assert isinstance(permit, Permit)
        return permit

    def _report(
        self, permit: Permit, ok: bool, duration: float, error: BaseException | None
    ) -> None:
        message = Report(permit, ok, duration, error)
        if error is not None and not isinstance(error, Exception):
            self._ref.tell(message)  # an interrupt or exit: do not wait (it is ignored anyway)
            return
        try:
            self._ref.ask(message, self._timeout)
        except Exception as failure:  # never mask the protected call's own outcome
            self._report_failed(failure)

    async def _areport(
        self, permit: Permit, ok: bool, duration: float, error: BaseException | None
    ) -> None:
        message = Report(permit, ok, duration, error)
        if error is not None and not isinstance(error, Exception):
            self._ref.tell(message)  # cancellation: do not await anything more
            return
        try:
            await self._wait(self._ref.ask_future(message))
        except Exception as failure:
            self._report_failed(failure)

    def _report_failed(self, failure: Exception) -> None:
        emit(
            "garrison.breaker.report_failed",
            level="warning",
            service=self._name,
            error=failure,
        )

    async def _finish(self, permit: Permit, started: float, awaitable: Awaitable[R]) -> R:
        clock = self._clock
        try:
            result = await awaitable
        except BaseException as error:
            await self._areport(permit, False, clock.monotonic() - started, error)
            raise
        await self._areport(permit, True, clock.monotonic() - started, None)
        return result

    async def _wait(self, future: Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            raise AskTimeout(self._timeout) from None

    def __repr__(self) -> str:
        return f"<CircuitBreakerHandle {self._name!r}>"


class CircuitBreakerManager:
    """Circuit breakers by service name (the seed's ``CircuitBreakerManager``).

    With no ``runtime`` the manager owns one (with ``clock`` and ``backend``, started on
    first use) until :meth:`stop` or the end of a ``with`` block. With a ``runtime`` it
    spawns its breakers there, as ``breaker:<name>`` children of the root supervisor that
    are restarted when they crash (keeping their state); stopping the manager then stops
    only its breakers. ``listeners`` (``listener(service, from_state, to_state, reason)``)
    are given to every breaker; ``timeout`` bounds each exchange between a handle and its
    actor.

    Breakers share their trips with the other processes of the fleet when the runtime has a
    shared backend (``Runtime(backend="redis://...")``, or ``backend`` here for a manager
    that owns its runtime), as pipeline breakers do; ``get_or_create(..., backend="memory")``
    keeps one breaker in the process.
    """

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        clock: Clock | None = None,
        listeners: Sequence[TransitionListener] = (),
        timeout: float = 10.0,
        backend: object = None,
    ) -> None:
        if runtime is not None and clock is not None and clock is not runtime.clock:
            raise ValueError("pass either a runtime or a clock: a runtime brings its own clock")
        if runtime is not None and backend is not None:
            raise ValueError(
                "pass either a runtime or a backend: a runtime brings its own backend "
                "(or give get_or_create a backend)"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self._owned = runtime is None
        if runtime is None:
            from garrison._runtime import Runtime  # noqa: PLC0415 (Runtime may import us)

            runtime = Runtime(
                name="garrison-breakers",
                clock=clock,
                backend=backend,  # type: ignore[arg-type]  # checked by Runtime
            )
        self._runtime = runtime
        self._listeners = tuple(listeners)
        self._timeout = float(timeout)
        self._handles: dict[str, CircuitBreakerHandle] = {}
        self._backends: dict[str, RedisBackend | None] = {}  # where each breaker shares trips
        self._borrowed: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def runtime(self) -> Runtime:
        """The runtime the breakers run in."""
        return self._runtime

    def get_or_create(
        self, name: str, config: CircuitBreakerConfig | None = None, *, backend: object = None
    ) -> CircuitBreakerHandle:
        """The handle of ``name``'s breaker, created with ``config`` (default settings) if new.

        The same name always gives the same handle. Asking again with a different config
        raises ValueError (``None`` accepts whatever config the breaker has).

        ``backend`` is where a new breaker shares its trips: None, the runtime's backend
        (if it has one); ``"memory"``, nowhere (this process only); or a ``redis://`` URL, a
        mapping or a :class:`~garrison.backends.BackendConfig`, as ``Runtime.pipeline``
        takes. Asking again with a different backend raises ValueError.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"breaker name must be a non-empty string without '/', got {name!r}")
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        with self._lock:
            handle = self._handles.get(name)
            if handle is not None:
                if config is not None and config != handle.config:
                    raise ValueError(
                        f"circuit breaker {name!r} already exists with a different config: "
                        f"{handle.config!r}; asked for {config!r}"
                    )
                if backend is not None and name in self._backends:
                    self._check_backend(name, backend)
                return handle
            if self._stopped:
                raise RuntimeError("this CircuitBreakerManager has stopped")
            config = config if config is not None else CircuitBreakerConfig()
            runtime = self._runtime
            if self._owned and runtime.state == "new":
                runtime.start()
            shared = runtime.backend_for(backend)
            ref = runtime.spawn(
                CircuitBreakerActor,
                config,
                name=f"breaker:{name}",
                restart="permanent",
                service=name,
                listeners=self._listeners,
                backend=shared,
            )
            handle = CircuitBreakerHandle(name, ref, config, runtime.clock, self._timeout)
            self._handles[name] = handle
            self._backends[name] = shared
            return handle

    def _check_backend(self, name: str, backend: object) -> None:
        shared = self._backends[name]
        if backend == "memory":
            same = shared is None
        else:
            config = backend_config(backend)
            assert config is not None
            same = shared is not None and (config.url, config.namespace) == (
                shared.config.url,
                shared.config.namespace,
            )
        if not same:
            where = "in this process only" if shared is None else f"with {shared!r}"
            raise ValueError(
                f"circuit breaker {name!r} already exists {where}; asked for backend {backend!r}"
            )

    def register(self, name: str, ref: Ref, config: CircuitBreakerConfig) -> CircuitBreakerHandle:
        """Give a handle to a breaker actor someone else started (a pipeline's breaker stage).

        The manager does not own that actor: :meth:`stop` leaves it to its supervisor.
        Raises ValueError if ``name`` already has a breaker.
        """
        if not isinstance(ref, Ref):
            raise TypeError(f"ref must be a garrison.Ref, got {ref!r}")
        with self._lock:
            if name in self._handles:
                raise ValueError(f"circuit breaker {name!r} already exists")
            handle = CircuitBreakerHandle(name, ref, config, self._runtime.clock, self._timeout)
            self._handles[name] = handle
            self._borrowed.add(name)
            return handle

    def hand_over(self, name: str, config: CircuitBreakerConfig) -> dict[str, Any] | None:
        """The state of ``name``'s standalone breaker, for a pipeline about to take it over.

        None if ``name`` has no breaker. ValueError if a pipeline has it already, or if its
        config is not ``config``. See :meth:`adopt`.
        """
        with self._lock:
            handle = self._handles.get(name)
            if handle is None:
                return None
            if name in self._borrowed:
                raise ValueError(f"circuit breaker {name!r} already belongs to a pipeline")
            if handle.config != config:
                raise ValueError(
                    f"circuit breaker {name!r} already exists with a different config: "
                    f"{handle.config!r}; the pipeline asks for {config!r}"
                )
        state = handle.ref.ask(TakeSnapshot(), self._timeout)
        assert isinstance(state, dict)
        return state

    def adopt(self, name: str, ref: Ref, config: CircuitBreakerConfig) -> CircuitBreakerHandle:
        """Point ``name``'s existing handle at a pipeline's breaker stage ``ref``.

        The pipeline's stage started from the standalone breaker's state
        (:meth:`hand_over`); the standalone actor is stopped, and whoever holds the handle
        now reaches the pipeline's breaker. Without an existing breaker this is
        :meth:`register`.
        """
        with self._lock:
            handle = self._handles.get(name)
            if handle is None or name in self._borrowed:
                handle = None
            else:
                handle._ref = ref
                self._borrowed.add(name)
        if handle is None:
            return self.register(name, ref, config)
        with contextlib.suppress(LookupError, ActorUnavailable, AskTimeout):
            self._runtime.supervisor.terminate_child(f"breaker:{name}")
        return handle

    def get(self, name: str) -> CircuitBreakerHandle | None:
        """The handle of ``name``'s breaker, or None if there is none."""
        with self._lock:
            return self._handles.get(name)

    def names(self) -> list[str]:
        """The names of the breakers, in creation order."""
        with self._lock:
            return list(self._handles)

    def status(self) -> dict[str, dict[str, Any]]:
        """Every breaker's status, by name."""
        with self._lock:
            handles = list(self._handles.values())
        return {handle.name: handle.get_status() for handle in handles}

    def stop(self) -> None:
        """Stop the breakers (and the runtime, if the manager owns it). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            handles = list(self._handles.values())
            self._handles.clear()
            self._backends.clear()
        runtime = self._runtime
        if self._owned:
            runtime.stop()
            return
        if runtime.state != "running":
            return
        for handle in reversed(handles):
            if handle.name in self._borrowed:
                continue  # a pipeline's breaker: its own supervisor stops it
            # already gone: the runtime is stopping, or someone removed it
            with contextlib.suppress(LookupError, ActorUnavailable, AskTimeout):
                runtime.supervisor.terminate_child(f"breaker:{handle.name}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{len(self._handles)} breakers"
        return f"<CircuitBreakerManager {state}>"
