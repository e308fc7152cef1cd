"""garrison's actors: one actor per resilience mechanism, and the workers that run operations."""

from garrison.actors.breaker import (
    Acquire,
    CircuitBreakerActor,
    Disable,
    ForceClose,
    ForceOpen,
    Report,
    Reset,
)
from garrison.actors.bulkhead import Abandon, BulkheadActor, BulkheadConfig
from garrison.actors.fallback import FallbackActor
from garrison.actors.limiter import RateLimiterActor, RateLimitFeedback
from garrison.actors.retry import RetryActor
from garrison.actors.timeout import TimeoutSupervisor
from garrison.actors.worker import WorkerActor

__all__ = [
    "Abandon",
    "Acquire",
    "BulkheadActor",
    "BulkheadConfig",
    "CircuitBreakerActor",
    "Disable",
    "FallbackActor",
    "ForceClose",
    "ForceOpen",
    "RateLimitFeedback",
    "RateLimiterActor",
    "Report",
    "Reset",
    "RetryActor",
    "TimeoutSupervisor",
    "WorkerActor",
]
