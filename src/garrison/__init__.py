"""garrison: keep programs alive when the services they call misbehave.

Resilience mechanisms are actors (on pykka); operations travel to them as
:class:`Execute` messages through :class:`Ref` handles; a :class:`Runtime` owns the clock,
the scheduler and the actors. See ``README.md`` for a tour.
"""

from garrison._actor import Actor
from garrison._clock import Clock, SystemClock
from garrison._dead_letters import DeadLetter, DeadLetters
from garrison._future import Future
from garrison._messages import Execute, GetStatus, OperationFailed, Priority
from garrison._ref import Ref
from garrison._runtime import Runtime
from garrison._scheduler import Scheduler, TimerHandle
from garrison.actors.breaker import CircuitBreakerActor
from garrison.actors.bulkhead import BulkheadActor, BulkheadConfig
from garrison.actors.fallback import FallbackActor
from garrison.actors.limiter import RateLimiterActor, RateLimitFeedback
from garrison.actors.retry import RetryActor
from garrison.actors.timeout import TimeoutSupervisor
from garrison.breakers import CircuitBreakerHandle, CircuitBreakerManager
from garrison.errors import (
    ActorUnavailable,
    AskTimeout,
    BackendUnavailable,
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    GarrisonError,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Rejected,
    RetriesExhausted,
    SupervisorGaveUp,
)
from garrison.fallback import awith_fallback, with_fallback
from garrison.pipeline import FallbackConfig, Pipeline, PipelineView
from garrison.policies.backoff import RetryBudget, RetryBudgetConfig, RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import AdaptiveTimeout, TimeoutConfig

__all__ = [
    "Actor",
    "ActorUnavailable",
    "AdaptiveTimeout",
    "AskTimeout",
    "BackendUnavailable",
    "BulkheadActor",
    "BulkheadConfig",
    "BulkheadFull",
    "CircuitBreakerActor",
    "CircuitBreakerConfig",
    "CircuitBreakerHandle",
    "CircuitBreakerManager",
    "CircuitOpen",
    "Clock",
    "ConfigError",
    "DeadLetter",
    "DeadLetters",
    "Execute",
    "FallbackActor",
    "FallbackConfig",
    "Future",
    "GarrisonError",
    "GetStatus",
    "OperationFailed",
    "OperationTimeout",
    "Pipeline",
    "PipelineView",
    "Priority",
    "QueueFull",
    "QueueTimeout",
    "RateLimitConfig",
    "RateLimitFeedback",
    "RateLimited",
    "RateLimiterActor",
    "Ref",
    "Rejected",
    "RetriesExhausted",
    "RetryActor",
    "RetryBudget",
    "RetryBudgetConfig",
    "RetryConfig",
    "Runtime",
    "Scheduler",
    "SupervisorGaveUp",
    "SystemClock",
    "TimeoutConfig",
    "TimeoutSupervisor",
    "TimerHandle",
    "awith_fallback",
    "with_fallback",
]

__version__ = "0.1.0.dev0"
