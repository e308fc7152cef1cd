"""garrison's actors: one actor per resilience mechanism, and the workers that run operations."""

from garrison.actors.limiter import RateLimiterActor, RateLimitFeedback
from garrison.actors.worker import WorkerActor

__all__ = ["RateLimitFeedback", "RateLimiterActor", "WorkerActor"]
