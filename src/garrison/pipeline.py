"""Pipelines: the resilience stages composed in their fixed order, and what users call.

A pipeline is a chain of stage actors, outermost first::

    fallback -> retry -> circuit_breaker -> rate_limiter -> timeout -> bulkhead -> operation

Any stage may be left out, except that operations always run on a bulkhead of worker actors
(without a ``bulkhead`` stage, a default pool of ``DEFAULT_POOL`` workers). Each stage is a
child of the pipeline's own supervisor (``pipeline:<name>`` under the runtime's root), and
each forwards an :class:`~garrison.Execute` with its reply future without waiting for the
next stage (DESIGN.md rules 1 and 2).

```python
api = rt.pipeline("external_api", rate_limit=RateLimitConfig(per_second=10),
                  circuit_breaker=CircuitBreakerConfig(failure_threshold=5),
                  retry=RetryConfig(max_attempts=3), timeout=TimeoutConfig(base_timeout=10),
                  bulkhead=BulkheadConfig(max_workers=10), fallback=lambda err, msg: None)
api.call(fetch_user, 42)                       # blocking
api.submit(fetch_user, 42)                     # a garrison.Future
await api.acall(fetch_user, 42)                # asyncio, never blocks the loop
api.options(key="client-7", priority="high", timeout=2.0).call(fetch_user, 42)
```
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from garrison._clock import Clock, SystemClock
from garrison._dead_letters import DeadLetters
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute, GetStatus, Priority
from garrison._ref import Ref, actor_of
from garrison._scheduler import Scheduler
from garrison.actors._host import HostedRef, HostedStage, StageHost
from garrison.actors.breaker import CircuitBreakerActor
from garrison.actors.bulkhead import BulkheadActor, BulkheadConfig
from garrison.actors.fallback import NO_VALUE, FallbackActor
from garrison.actors.limiter import RateLimiterActor
from garrison.actors.retry import RetryActor
from garrison.actors.timeout import TimeoutSupervisor
from garrison.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    RetriesExhausted,
)
from garrison.observability.events import emit
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig
from garrison.supervision import ChildSpec, Restart, Supervisor, SupervisorRef

if TYPE_CHECKING:
    from garrison._runtime import Runtime
    from garrison.backends._protocol import Backend

__all__ = [
    "DEFAULT_POOL",
    "STAGE_ORDER",
    "FallbackConfig",
    "Pipeline",
    "PipelineStages",
    "PipelineSupervisor",
    "PipelineView",
]

P = ParamSpec("P")
R = TypeVar("R")

STAGE_ORDER = ("fallback", "retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead")
"""The stages of a pipeline, outermost first."""

HOST = "stages"
"""The name of a fused pipeline's :class:`StageHost` under the pipeline's supervisor."""

DEFAULT_POOL = BulkheadConfig(max_workers=10, max_queue=1000)
"""The worker pool of a pipeline configured without a bulkhead stage."""


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    """The fallback stage: a static ``value``, a ``fallback(error, message)`` callable, and/or
    the last successful result per operation name (``cache_last_success``)."""

    value: Any = NO_VALUE
    fallback: Callable[[BaseException, Execute], Any] | None = None
    cache_last_success: bool = False
    cache_size: int = 1024

    def __post_init__(self) -> None:
        if self.fallback is not None and not callable(self.fallback):
            raise ConfigError(
                "fallback", f"must be a callable (error, message), got {self.fallback!r}"
            )
        if self.value is not NO_VALUE and self.fallback is not None:
            raise ConfigError("fallback", "give a value or a fallback callable, not both")
        if not isinstance(self.cache_last_success, bool):
            raise ConfigError(
                "cache_last_success", f"must be true or false, got {self.cache_last_success!r}"
            )
        size = self.cache_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("cache_size", f"must be an integer >= 1, got {size!r}")
        if self.value is NO_VALUE and self.fallback is None and not self.cache_last_success:
            raise ConfigError(
                "fallback", "needs a value, a fallback callable or cache_last_success=True"
            )

    @classmethod
    def of(cls, spec: object) -> FallbackConfig:
        """A FallbackConfig as it is; a callable as ``fallback``; anything else as ``value``."""
        if isinstance(spec, FallbackConfig):
            return spec
        if callable(spec):
            return cls(fallback=spec)
        return cls(value=spec)


class _Keep:
    """The default of :meth:`PipelineView.options`: keep the view's value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


@dataclass(frozen=True, slots=True)
class _Options:
    key: Hashable | None = None
    priority: Priority = Priority.NORMAL
    timeout: float | None = None
    name: str = ""
    cost: int = 1

    def message(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Execute:
        """The Execute of ``fn(*args, **kwargs)`` with these (validated) options."""
        return Execute._of_call(
            fn, args, kwargs, self.key, self.priority, self.timeout, self.name, self.cost
        )


def _options_only() -> None:
    """The function of the Execute that validates a view's options (never called)."""


class PipelineView:
    """A pipeline with per-call options (``key``, ``priority``, ``timeout``, ``name``, ``cost``).

    ``call`` blocks, ``submit`` returns a :class:`~garrison.Future`, ``acall`` awaits without
    blocking the event loop; all pass ``*args, **kwargs`` to the function.
    """

    def __init__(self, pipeline: Pipeline, options: _Options) -> None:
        self._pipeline = pipeline
        self._options = options

    def execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Execute:
        """The Execute message this view would send for ``fn(*args, **kwargs)``."""
        return self._options.message(fn, args, kwargs)  # options validated by options()

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Send ``fn(*args, **kwargs)`` through the pipeline; return the future of its outcome."""
        pipeline = self._pipeline
        message = self._options.message(fn, args, kwargs)
        future: Future[R] = Future()
        if pipeline.monitor:
            future.meta = {}
            started = pipeline.clock.monotonic()
            future.add_done_callback(lambda done: pipeline.report(message, done, started))
        pipeline.send(message, future)
        return future

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    @overload
    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R: ...

    def call(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` through the pipeline and wait for its outcome."""
        pipeline = self._pipeline
        if pipeline.monitor:
            return self.submit(fn, *args, **kwargs).get()
        future: Future[Any] = Future()  # submit(), inlined: the path of every blocking call
        pipeline.send(self._options.message(fn, args, kwargs), future)
        return future.get()

    @overload
    async def acall(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    @overload
    async def acall(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def acall(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """``call`` for asyncio: awaits the outcome without blocking the event loop."""
        return await self.submit(fn, *args, **kwargs)

    def options(
        self,
        *,
        key: Hashable | _Keep | None = KEEP,
        priority: Priority | str | _Keep | None = KEEP,
        timeout: float | _Keep | None = KEEP,
        name: str | _Keep | None = KEEP,
        cost: int | _Keep | None = KEEP,
    ) -> PipelineView:
        """A view with these options changed, validated here (a bad one is a TypeError or
        ValueError naming it, as for :class:`~garrison.Execute`).

        An option left out keeps this view's value; ``None`` resets it to its default (no
        key, normal priority, the timeout stage's timeout, the function's name, cost 1).
        """
        current = self._options
        name = current.name if isinstance(name, _Keep) else (name or "")
        checked = Execute(  # validates and normalises (a priority by name, a timeout as float)
            _options_only,
            key=current.key if isinstance(key, _Keep) else key,
            priority=(
                current.priority
                if isinstance(priority, _Keep)
                else Priority.NORMAL
                if priority is None
                else Priority.parse(priority)
            ),
            timeout=current.timeout if isinstance(timeout, _Keep) else timeout,
            name=name,
            cost=current.cost if isinstance(cost, _Keep) else (1 if cost is None else cost),
        )
        return PipelineView(
            self._pipeline,
            _Options(
                key=checked.key,
                priority=checked.priority,
                timeout=checked.timeout,
                name=name,
                cost=checked.cost,
            ),
        )

    @overload
    def protect(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def protect(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def protect(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so that every call goes through the pipeline (sync or async).

        The wrapper keeps ``fn``'s signature (ParamSpec) and metadata; operations are named
        after the function unless the view has a name.
        """
        view = self if self._options.name else self.options(name=_qualname(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def protected_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await view.acall(fn, *args, **kwargs)

            return protected_async

        @functools.wraps(fn)
        def protected(*args: P.args, **kwargs: P.kwargs) -> Any:
            return view.call(fn, *args, **kwargs)

        return protected


class Pipeline(PipelineView):
    """A named chain of stage actors; see the module docstring.

    ``ref`` is the outermost stage (message-level access: ``ref.ask(Execute(...))``),
    ``stages`` maps each stage present to its Ref, ``status()`` asks each of them.
    """

    def __init__(
        self,
        name: str,
        supervisor: SupervisorRef,
        stages: dict[str, Ref],
        *,
        clock: Clock | None = None,
        monitor: bool = False,
    ) -> None:
        super().__init__(self, _Options())
        self.name = name
        self.supervisor = supervisor
        self.stages = stages
        self.ref = next(stages[stage] for stage in STAGE_ORDER if stage in stages)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.monitor = monitor
        front = self.ref
        self._bulkhead_host: Ref | None = None  # a fused pipeline with no stage but its bulkhead
        self._front: tuple[object, BulkheadActor | None] | None = None  # (host incarnation, its)
        if isinstance(front, HostedRef) and list(stages) == ["bulkhead"]:
            self._bulkhead_host = front.host

    def send(self, message: Execute, reply: Future[Any]) -> None:
        """Send ``message`` into the pipeline with ``reply`` as its reply.

        A fused pipeline whose host is idle runs its stages in the calling thread (see
        :mod:`garrison.actors._host`); one whose only stage is its bulkhead starts the
        operation from the calling thread whenever a worker is free.
        """
        host_ref = self._bulkhead_host
        if host_ref is not None:
            actor_ref = host_ref.actor_ref
            front = self._front
            if front is None or front[0] is not actor_ref:  # first call, or a restart since
                host = actor_of(actor_ref)
                bulkhead = host.stages[0] if isinstance(host, StageHost) else None
                front = self._front = (
                    actor_ref,
                    bulkhead if isinstance(bulkhead, BulkheadActor) else None,
                )
            bulkhead = front[1]
            if bulkhead is not None and bulkhead.try_admit(message, reply):
                return
        self.ref.forward(message, reply)  # a fused pipeline's HostedRef may run it here

    def report(self, message: Execute, done: Future[Any], started: float) -> None:
        """Log the seed's per-operation reliability metric (``monitor=True``)."""
        meta = done.meta or {}
        error = done.exception(0)
        if error is None:
            status = "fallback" if "fallback" in meta else "success"
        else:
            cause = error
            if isinstance(error, RetriesExhausted) and error.last_error is not None:
                cause = error.last_error  # what stopped the last attempt says the most
            status = "error"
            for kind, name in _STATUS_BY_KIND:
                if isinstance(cause, kind):
                    status = name
                    break
        emit(
            "garrison.reliability_metric",
            operation=message.name,
            pipeline=self.name,
            status=status,
            response_time=round(self.clock.monotonic() - started, 6),
            attempts=meta.get("attempts", 1),
            circuit_state=meta.get("circuit_state", "unknown"),
            fallback=meta.get("fallback"),
            error=error,
        )

    def status(self, timeout: float | None = 5.0) -> dict[str, dict[str, Any]]:
        """One entry per stage present (``fallback`` ... ``bulkhead``), each a plain dict."""
        return {
            stage: cast(dict[str, Any], self.stages[stage].ask(GetStatus(), timeout))
            for stage in STAGE_ORDER
            if stage in self.stages
        }

    def __repr__(self) -> str:
        return f"<garrison.Pipeline {self.name!r} {' -> '.join(self.stages)}>"


@dataclass(frozen=True, slots=True)
class PipelineStages:
    """The stage configs of one pipeline (None: that stage is left out)."""

    name: str
    rate_limit: RateLimitConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    retry: RetryConfig | None = None
    timeout: TimeoutConfig | None = None
    bulkhead: BulkheadConfig | None = None
    fallback: FallbackConfig | None = None
    backend: Backend | None = None
    """Where the rate limiter and the breaker keep shared state (None: in the process)."""

    def __post_init__(self) -> None:
        for key, kind in (
            ("rate_limit", RateLimitConfig),
            ("circuit_breaker", CircuitBreakerConfig),
            ("retry", RetryConfig),
            ("timeout", TimeoutConfig),
            ("bulkhead", BulkheadConfig),
            ("fallback", FallbackConfig),
        ):
            value = getattr(self, key)
            if value is not None and not isinstance(value, kind):
                raise ConfigError(key, f"must be a {kind.__name__}, got {value!r}")


class PipelineSupervisor(Supervisor):
    """Supervises the stage actors of one pipeline and builds them, innermost first.

    The stages are built in :meth:`child_specs`, each given the Ref of the stage below it,
    so when this supervisor is itself restarted (its stages failed more often than its
    restart intensity allows) it builds the whole chain again, reached through the same
    Refs as before.
    """

    def __init__(
        self,
        name: str,
        *,
        stages: PipelineStages,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
        dead_letters: DeadLetters | None = None,
        fused: bool = True,
        adopted_breaker: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(stages, PipelineStages):
            raise TypeError(f"stages must be PipelineStages, got {stages!r}")
        super().__init__(
            name, clock=clock, scheduler=scheduler, loop=loop, dead_letters=dead_letters, **kwargs
        )
        self.stages = stages
        self.fused = fused
        # A standalone breaker's state, for the breaker stage's first start only (the list
        # is shared with later rebuilds of this supervisor, which find it empty).
        self._adopted_breaker = adopted_breaker if adopted_breaker is not None else []

    def child_specs(self) -> Iterator[ChildSpec]:
        """The stages, innermost first: one actor each, or one :class:`StageHost` if fused."""
        stages = self.layout()
        if self.fused:
            yield ChildSpec(
                HOST,
                StageHost,
                args=(tuple(reversed(stages)),),
                restart=Restart.PERMANENT,
                shutdown_timeout=30.0,
            )
            return
        below: str | None = None
        for stage in stages:
            args = stage.args if below is None else (*stage.args, self.child_ref(below))
            yield ChildSpec(
                stage.name,
                stage.actor_class,
                args=args,
                kwargs=stage.kwargs,
                restart=Restart.PERMANENT,
            )
            below = stage.name

    def _take_adopted_breaker(self) -> dict[str, Any]:
        if self._adopted_breaker:
            return {"initial_state": self._adopted_breaker.pop()}
        return {}

    def layout(self) -> list[HostedStage]:
        """bulkhead, then timeout, rate limiter, breaker, retry, fallback (those present)."""
        stages = self.stages
        name = stages.name
        layout = [
            HostedStage(
                "bulkhead", BulkheadActor, (stages.bulkhead or DEFAULT_POOL,), {"name": name}
            )
        ]
        shared = {} if stages.backend is None else {"backend": stages.backend}
        for stage, actor_class, config, extra in (
            ("timeout", TimeoutSupervisor, stages.timeout, {"name": name}),
            ("rate_limiter", RateLimiterActor, stages.rate_limit, {"name": name, **shared}),
            (
                "circuit_breaker",
                CircuitBreakerActor,
                stages.circuit_breaker,
                {"service": name, **shared, **self._take_adopted_breaker()},
            ),
            ("retry", RetryActor, stages.retry, {"service": name}),
        ):
            if config is not None:
                layout.append(HostedStage(stage, actor_class, (config,), extra))
        fallback = stages.fallback
        if fallback is not None:
            layout.append(
                HostedStage(
                    "fallback",
                    FallbackActor,
                    (fallback.value,),
                    {
                        "fallback": fallback.fallback,
                        "cache_last_success": fallback.cache_last_success,
                        "cache_size": fallback.cache_size,
                    },
                )
            )
        return layout


def build_pipeline(
    runtime: Runtime,
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
    """Start a pipeline's supervisor (which builds the stages) under the runtime's root.

    ``backend``: see ``Runtime.pipeline`` (None: the runtime's backend, if it has one).
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"pipeline name must be a non-empty string without '/', got {name!r}")
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False, got {fused!r}")
    # A breaker made earlier with rt.breakers.get_or_create(name) is taken over: the stage
    # starts from its state and its handle then reaches the stage.
    adopted = (
        runtime.breakers.hand_over(name, circuit_breaker) if circuit_breaker is not None else None
    )
    stages = PipelineStages(
        name,
        rate_limit=rate_limit,
        circuit_breaker=circuit_breaker,
        retry=retry,
        timeout=timeout,
        bulkhead=bulkhead,
        fallback=FallbackConfig.of(fallback) if fallback is not None else None,
        backend=runtime.backend_for(backend),
    )
    supervisor = runtime.supervisor.start_child(
        ChildSpec(
            f"pipeline:{name}",
            PipelineSupervisor,
            kwargs={
                "stages": stages,
                "strategy": "one_for_one",
                "max_restarts": max_restarts,
                "within_seconds": within_seconds,
                "fused": fused,
                "adopted_breaker": [adopted] if adopted is not None else [],
            },
            restart=Restart.PERMANENT,
            shutdown_timeout=30.0,
        )
    )
    assert isinstance(supervisor, SupervisorRef)
    present = [stage for stage in STAGE_ORDER if _configured(stages, stage)]
    if fused:
        host = supervisor.child(HOST)
        refs: dict[str, Ref] = {
            stage: HostedRef(host, index, stage) for index, stage in enumerate(present)
        }
    else:
        refs = {stage: supervisor.child(stage) for stage in present}
    if circuit_breaker is not None:
        try:
            runtime.breakers.adopt(name, refs["circuit_breaker"], circuit_breaker)
        except BaseException:
            runtime.supervisor.terminate_child(f"pipeline:{name}")
            raise
    return Pipeline(name, supervisor, refs, clock=runtime.clock, monitor=monitor)


def _configured(stages: PipelineStages, stage: str) -> bool:
    if stage == "bulkhead":
        return True  # always present: the default pool when not configured
    attribute = "rate_limit" if stage == "rate_limiter" else stage
    return getattr(stages, attribute) is not None


_STATUS_BY_KIND: tuple[tuple[type[BaseException], str], ...] = (
    (CircuitOpen, "circuit_open"),
    (RateLimited, "rate_limited"),
    (QueueFull, "rate_limited"),
    (QueueTimeout, "rate_limited"),
    (BulkheadFull, "rejected"),
    (OperationTimeout, "timeout"),
)


def _qualname(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__
