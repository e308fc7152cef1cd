"""The Runtime: the root supervisor, with the clock, scheduler, dead letters and event loop."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pykka

from garrison._clock import Clock, SystemClock
from garrison._dead_letters import DeadLetters
from garrison._loop import EventLoopThread
from garrison._ref import Ref
from garrison._scheduler import ManualScheduler, ThreadScheduler, make_scheduler
from garrison.actors.bulkhead import BulkheadConfig
from garrison.backends import BackendConfig, backend_config
from garrison.breakers import CircuitBreakerManager
from garrison.config import ReliabilityConfig, load_config
from garrison.observability.events import emit
from garrison.pipeline import Pipeline, build_pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig
from garrison.supervision import ChildSpec, Restart, Supervisor, SupervisorRef

if TYPE_CHECKING:
    from garrison.backends._backend import RedisBackend
    from garrison.http import HttpClient

__all__ = ["Runtime"]


class Runtime:
    """A garrison runtime: use it as a context manager, or ``start()`` and ``stop()`` it.

    It owns the root supervisor (``rt.supervisor``), one scheduler (one timer thread, or
    none with a ManualClock), one event loop thread for coroutine operations (started on
    first use) and a dead-letter sink. Every actor it spawns is a child of the root
    supervisor; ``stop()`` stops them newest first and leaves no thread behind. If the root
    supervisor fails (its children exceeded its restart intensity), the runtime stops and
    logs ``garrison.runtime.root_failed`` with the reason.

    ``clock`` defaults to the system clock; tests pass a
    :class:`garrison.testing.ManualClock`. ``max_restarts`` / ``within_seconds`` are the root
    supervisor's restart intensity.

    ``backend`` (a ``redis://`` URL, a mapping of :class:`~garrison.backends.BackendConfig`
    settings, or a BackendConfig) keeps every pipeline's rate-limit windows and breaker trips
    in Redis, shared with the other processes that use the same backend and runtime name;
    ``on_backend_error`` (``"local"``, ``"open"`` or ``"closed"``) says what rate limiters do
    while Redis is unreachable. Needs the ``redis`` extra.
    """

    def __init__(
        self,
        *,
        name: str = "garrison",
        clock: Clock | None = None,
        dead_letters: DeadLetters | None = None,
        max_restarts: int = 10,
        within_seconds: float = 10.0,
        backend: str | BackendConfig | Mapping[str, Any] | None = None,
        on_backend_error: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"Runtime name must be a non-empty string without '/', got {name!r}")
        if clock is not None and not callable(getattr(clock, "monotonic", None)):
            raise TypeError(f"clock must have a monotonic() method, got {clock!r}")
        self.name = name
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.scheduler: ThreadScheduler | ManualScheduler = make_scheduler(self.clock)
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters()
        self.loop = EventLoopThread(name=f"{name}-loop")
        self._root_options = {"max_restarts": max_restarts, "within_seconds": within_seconds}
        self._root: SupervisorRef | None = None
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._state = "new"
        self.failure: BaseException | None = None
        self._breakers: CircuitBreakerManager | None = None
        self._pipelines: dict[str, Pipeline] = {}
        self._building = threading.Lock()  # one pipeline build at a time
        self._http_clients: list[HttpClient] = []
        self.config: ReliabilityConfig | None = None
        self._on_backend_error = on_backend_error
        self._backends: dict[BackendConfig, RedisBackend] = {}
        self.backend: RedisBackend | None = None
        """The runtime's shared backend (None: everything stays in this process)."""
        if on_backend_error is not None:
            backend_config("redis://localhost", on_backend_error)  # validates the mode
        default = backend_config(backend, on_backend_error)
        if default is not None:
            self.backend = self._open_backend(default)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"failed"`` or ``"stopped"``."""
        return self._state

    @property
    def supervisor(self) -> SupervisorRef:
        """The root supervisor (``tree()``, ``child(path)``, ``start_child(spec)``, ...)."""
        if self._root is None:
            raise RuntimeError(f"runtime {self.name!r} is {self._state}; start it first")
        return self._root

    @property
    def breakers(self) -> CircuitBreakerManager:
        """The runtime's :class:`~garrison.CircuitBreakerManager` (one breaker per service)."""
        with self._lock:
            if self._breakers is None:
                self._breakers = CircuitBreakerManager(self)
            return self._breakers

    def start(self) -> Self:
        """Start the runtime and its root supervisor (idempotent); return it."""
        with self._lock:
            if self._state in ("stopped", "failed"):
                raise RuntimeError(f"runtime {self.name!r} has stopped and cannot start again")
            if self._state == "running":
                return self
            self._root = Supervisor.start(
                self.name,
                clock=self.clock,
                scheduler=self.scheduler,
                loop=self.loop,
                dead_letters=self.dead_letters,
                on_exit=self._on_root_exit,
                **self._root_options,
            )
            self._state = "running"
            for backend in self._backends.values():
                backend.start()
        emit("garrison.runtime.started", runtime=self.name)
        return self

    def _on_root_exit(self, error: BaseException | None) -> None:
        if error is None:
            return
        self.failure = error
        with self._lock:
            if self._state == "running":
                self._state = "failed"
        emit("garrison.runtime.root_failed", level="critical", runtime=self.name, error=error)
        # The root supervisor has stopped its children; release the runtime's own threads.
        self.scheduler.stop()
        self.loop.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every actor (newest first), then the scheduler and the event loop.

        Each actor gets its ``shutdown_timeout`` (see :meth:`spawn`) to finish what it is
        handling; one that does not is abandoned (its daemon thread cannot be killed) and
        reported. ``timeout`` bounds the wait for the whole tree.
        """
        with self._lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            root = self._root
        if root is not None:
            root.stop(timeout)
        with self._lock:
            clients, self._http_clients = self._http_clients, []
        for client in clients:
            client.close()  # after the pipelines: nothing uses their connections any more
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            backend.close()
        self.scheduler.stop()
        self.loop.stop(timeout)
        emit("garrison.runtime.stopped", runtime=self.name)

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
        self,
        actor_class: type[pykka.Actor],
        *args: Any,
        name: str | None = None,
        restart: Restart | str = Restart.TEMPORARY,
        shutdown_timeout: float = 5.0,
        **kwargs: Any,
    ) -> Ref:
        """Start an actor as a child of the root supervisor and return its :class:`Ref`.

        ``restart`` defaults to TEMPORARY: a spawned actor that crashes stays down (its
        queued asks fail with ``ActorUnavailable``); pass ``Restart.PERMANENT`` to have the
        root supervisor restart it. ``name`` must be unique among the runtime's actors; by
        default it is the class name with a number. Keyword arguments ``clock``,
        ``scheduler`` and ``loop`` are supplied from the runtime when the actor's
        constructor takes them and the caller did not pass them.
        """
        if self._state != "running":
            raise RuntimeError(f"runtime {self.name!r} is {self._state}; start it first")
        if not (isinstance(actor_class, type) and issubclass(actor_class, pykka.ThreadingActor)):
            raise TypeError(
                f"actor_class must be a pykka.ThreadingActor subclass, got {actor_class!r}"
            )
        if name is None:
            name = f"{actor_class.__name__}-{next(self._names)}"
        spec = ChildSpec(
            name,
            actor_class,
            args=args,
            kwargs=kwargs,
            restart=Restart(restart.lower()) if isinstance(restart, str) else restart,
            shutdown_timeout=shutdown_timeout,
        )
        return self.supervisor.start_child(spec)

    def actors(self) -> list[Ref]:
        """The Refs of the root supervisor's children, oldest first."""
        return [self.supervisor.child(entry["name"]) for entry in self.tree()["children"]]

    def tree(self) -> dict[str, Any]:
        """The supervision tree, from the root supervisor down."""
        return self.supervisor.tree()

    # -- shared backends --------------------------------------------------------------------

    def _open_backend(self, config: BackendConfig) -> RedisBackend:
        from garrison.backends._backend import RedisBackend  # noqa: PLC0415 (redis is optional)

        backend = self._backends.get(config)
        if backend is None:
            backend = RedisBackend(config, runtime=self.name)
            self._backends[config] = backend
            if self._state == "running":
                backend.start()
        return backend

    def backends(self) -> list[RedisBackend]:
        """Every backend this runtime opened (its own and pipelines' own)."""
        with self._lock:
            return list(self._backends.values())

    def backend_for(self, spec: object = None) -> RedisBackend | None:
        """The backend a pipeline uses: the runtime's for None, none for ``"memory"``, else
        the one for that URL / mapping / BackendConfig (opened once, closed by ``stop``)."""
        if spec is None:
            return self.backend
        if spec == "memory":
            return None
        config = backend_config(spec, self._on_backend_error)
        assert config is not None
        with self._lock:
            return self._open_backend(config)

    # -- pipelines and configuration --------------------------------------------------------

    @classmethod
    def from_config(cls, source: str | Path | Mapping[str, Any], **runtime_kwargs: Any) -> Runtime:
        """A runtime built from a TOML/YAML file or a dict (see :mod:`garrison.config`).

        ``[runtime]`` settings of the file are defaults for ``runtime_kwargs``;
        ``rt.pipeline(name)`` then builds service ``name``'s configured stages.
        """
        config = load_config(source)
        runtime = cls(**{**config.runtime, **runtime_kwargs})
        runtime.config = config
        return runtime

    def pipeline(
        self,
        name: str,
        *,
        rate_limit: RateLimitConfig | None = None,
        circuit_breaker: CircuitBreakerConfig | None = None,
        retry: RetryConfig | None = None,
        timeout: TimeoutConfig | None = None,
        bulkhead: BulkheadConfig | None = None,
        fallback: object = None,
        max_restarts: int = 10,
        within_seconds: float = 10.0,
        monitor: bool = False,
        fused: bool = True,
        backend: object = None,
    ) -> Pipeline:
        """The pipeline ``name``: built with these stages, or from the configuration.

        With no stage arguments, an existing pipeline of that name is returned, or one is
        built from ``services.<name>`` (or the defaults) of the runtime's configuration;
        stage arguments replace the configured stage of the same kind and keep the others.
        Stages run in the fixed order fallback, retry, circuit breaker, rate limiter,
        timeout, bulkhead (see :mod:`garrison.pipeline`). ``max_restarts`` within
        ``within_seconds`` is the restart intensity of the pipeline's supervisor (past it,
        the root supervisor rebuilds the whole pipeline). With ``monitor=True`` every
        operation sent through ``call``/``submit``/``acall`` logs the seed's reliability
        metric (``garrison.reliability_metric``: status, response_time, attempts,
        circuit_state, fallback). With ``fused=True`` (the default) one actor runs all the
        stages, with no mailbox hop between them; ``fused=False`` gives each stage an actor
        of its own, so that a crash of one stage restarts only that stage.

        ``backend`` overrides the runtime's backend for this pipeline's rate limiter and
        breaker: a ``redis://`` URL, a mapping or :class:`~garrison.backends.BackendConfig`,
        or ``"memory"`` to keep this pipeline's state in the process.
        """
        stages: dict[str, Any] = {
            key: value
            for key, value in (
                ("rate_limit", rate_limit),
                ("circuit_breaker", circuit_breaker),
                ("retry", retry),
                ("timeout", timeout),
                ("bulkhead", bulkhead),
            )
            if value is not None
        }
        with self._building:
            return self._pipeline(
                name,
                stages,
                fallback=fallback,
                max_restarts=max_restarts,
                within_seconds=within_seconds,
                monitor=monitor,
                fused=fused,
                backend=backend,
            )

    def _pipeline(
        self,
        name: str,
        stages: dict[str, Any],
        *,
        fallback: object,
        max_restarts: int,
        within_seconds: float,
        monitor: bool,
        fused: bool = True,
        backend: object,
    ) -> Pipeline:
        with self._lock:
            existing = self._pipelines.get(name)
        if existing is not None:
            if stages or fallback is not None or backend is not None:
                raise ValueError(f"pipeline {name!r} already exists")
            return existing
        if self.config is not None:
            stages = {**self.config.service(name).stages(), **stages}
        built = build_pipeline(
            self,
            name,
            fallback=fallback,
            max_restarts=max_restarts,
            within_seconds=within_seconds,
            monitor=monitor,
            fused=fused,
            backend=backend,
            **stages,
        )
        with self._lock:
            self._pipelines[name] = built
        return built

    def http_client(self, name: str, base_url: str | None = None, **options: Any) -> HttpClient:
        """An HTTP client whose requests go through the pipeline ``http:<name>``.

        Options (``base_url`` included) default to the ``http.<name>`` section of the
        runtime's configuration, if it has one; arguments given here override them.

        Options are those of :func:`garrison.http.build_http_client`: ``rate_limit``,
        ``retry``, ``circuit_breaker``, ``timeout``, ``bulkhead``, ``headers``,
        ``retry_on_rate_limit``, ``count_4xx_as_failures``, ``count_503_as_failures``,
        ``http_timeout``, ``monitor`` and the seed's RateLimitedAPINode options
        (``rate_limit_per_second``, ``max_retries``, ...). Its connection pool is closed when
        the runtime stops. Needs the ``http`` extra (httpx).
        """
        from garrison.http import build_http_client  # noqa: PLC0415  (httpx is optional)

        if self._state != "running":
            raise RuntimeError(f"runtime {self.name!r} is {self._state}; start it first")
        if self.config is not None and name in self.config.http:
            options = {**self.config.http[name], **options}
        configured = options.pop("base_url", None)
        base_url = base_url if base_url is not None else configured
        if not isinstance(base_url, str):
            raise ValueError(f"http client {name!r} needs a base_url (argument or http.{name})")
        client = build_http_client(self, name, base_url, **options)
        with self._lock:
            self._http_clients.append(client)
        return client

    def pipelines(self) -> dict[str, Pipeline]:
        """The pipelines built so far, by name."""
        with self._lock:
            return dict(self._pipelines)

    def inject(self, actor_class: type[pykka.Actor], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus the runtime's services that ``actor_class`` takes (by name)."""
        from garrison._spawn import inject_services  # noqa: PLC0415

        services = {"clock": self.clock, "scheduler": self.scheduler, "loop": self.loop}
        return inject_services(actor_class, kwargs, services)

    def __repr__(self) -> str:
        return f"<garrison.Runtime {self.name!r} {self._state}>"
