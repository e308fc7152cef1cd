"""Shared state for many processes: rate-limit windows and breaker trips in Redis.

``Runtime(backend="redis://127.0.0.1:6379/0")`` (or ``rt.pipeline(..., backend=...)``)
keeps the windows of every rate limiter and the trips of every circuit breaker in Redis,
so processes that name the same backend, namespace and service share one limit and learn
of each other's trips. Without a backend everything stays in the process.

redis-py is imported only when a backend is opened (the ``redis`` extra).
"""

from garrison.backends._config import BackendConfig, OnBackendError, backend_config

__all__ = ["BackendConfig", "OnBackendError", "backend_config"]
