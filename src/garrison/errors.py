"""The typed errors of garrison.

Every error garrison raises derives from :class:`GarrisonError`. Errors that mean
"garrison itself refused to run the operation" (a full queue, an open breaker, a rate
limit) derive from :class:`Rejected`; a circuit breaker never counts those as failures of
the service behind it. Each error carries the fields a caller needs to act on it
(``retry_after``, ``attempts``, ``last_error``, ``timeout``, ``service``) and a message a
person can act on.
"""

from __future__ import annotations

from collections.abc import Hashable

import pykka

__all__ = [
    "ActorUnavailable",
    "AskTimeout",
    "BackendUnavailable",
    "BulkheadFull",
    "CircuitOpen",
    "ConfigError",
    "GarrisonError",
    "OperationTimeout",
    "QueueFull",
    "QueueTimeout",
    "RateLimited",
    "Rejected",
    "RetriesExhausted",
    "SupervisorGaveUp",
]


class GarrisonError(Exception):
    """Base class of every error garrison raises."""


class ConfigError(GarrisonError, ValueError):
    """A configuration value is invalid.

    ``key`` is the dotted path of the offending key
    (``services.database.circuit_breaker.failure_threshold``); the message reads
    ``"<key>: <problem>"``.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")

    def under(self, prefix: str) -> ConfigError:
        """Return the same error with ``prefix`` prepended to its key path."""
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.problem)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return (type(self), (self.key, self.problem))


class ActorUnavailable(GarrisonError, pykka.ActorDeadError):
    """The actor behind a Ref is not running and will not handle the message.

    Raised for a message sent to an actor that has stopped, that stopped before handling
    it, or whose restart buffer is full. It is a :class:`pykka.ActorDeadError` too.
    """

    def __init__(self, actor: str, reason: str) -> None:
        self.actor = actor
        self.reason = reason
        super().__init__(f"actor {actor!r} is unavailable: {reason}")

    def __reduce__(self) -> tuple[type[ActorUnavailable], tuple[str, str]]:
        return (type(self), (self.actor, self.reason))


class AskTimeout(GarrisonError, TimeoutError, pykka.Timeout):
    """Waiting for a reply took longer than the caller allowed.

    Only the wait ends: the message stays delivered and the operation may still complete.
    It is a :class:`pykka.Timeout` too.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no reply within {timeout:.3f}s")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.timeout,), {}))


class Rejected(GarrisonError):
    """garrison refused to run an operation to protect the service or itself.

    Rejections are never counted as failures of the service by a circuit breaker.
    """


class RateLimited(Rejected):
    """A rate limit refused the operation; it may be tried again after ``retry_after`` s."""

    def __init__(self, retry_after: float, *, key: Hashable = None, limit: str = "") -> None:
        self.retry_after = max(0.0, float(retry_after))
        self.key = key
        self.limit = limit
        where = f" for key {key!r}" if key is not None else ""
        which = f" ({limit})" if limit else ""
        super().__init__(f"rate limit reached{where}{which}; retry after {self.retry_after:.3f}s")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.retry_after,), {"key": self.key, "limit": self.limit}))


class QueueFull(Rejected):
    """A waiting queue is at its capacity and cannot take the operation."""

    def __init__(self, capacity: int, *, queue: str = "queue") -> None:
        self.capacity = capacity
        self.queue = queue
        super().__init__(f"{queue} is full ({capacity} waiting); try again later")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.capacity,), {"queue": self.queue}))


class QueueTimeout(Rejected):
    """The operation waited in a queue longer than ``waited`` allows and was dropped."""

    def __init__(self, waited: float, *, queue: str = "queue") -> None:
        self.waited = waited
        self.queue = queue
        super().__init__(f"waited {waited:.3f}s in the {queue} without being admitted")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.waited,), {"queue": self.queue}))


class CircuitOpen(Rejected):
    """The circuit breaker of ``service`` is open; calls are refused until ``retry_after``.

    The message contains "Circuit breaker is OPEN", as the seed document's code expects.
    """

    def __init__(self, service: str, retry_after: float, *, state: str = "open") -> None:
        self.service = service
        self.retry_after = max(0.0, float(retry_after))
        self.state = state
        super().__init__(
            f"Circuit breaker is OPEN for service {service!r} ({state}); "
            f"retry after {self.retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.service, self.retry_after), {"state": self.state}))


class BackendUnavailable(Rejected):
    """The shared backend (Redis) of a rate limiter is unreachable and the limiter was told
    to reject meanwhile (``on_backend_error="closed"``); try again after ``retry_after``."""

    def __init__(self, backend: str, *, retry_after: float = 0.0) -> None:
        self.backend = backend
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(
            f"the rate-limit backend {backend} is unreachable and on_backend_error='closed'; "
            f"retry after {self.retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.backend,), {"retry_after": self.retry_after}))


class BulkheadFull(Rejected):
    """Every worker of the bulkhead ``name`` is busy and its waiting room is full."""

    def __init__(self, name: str, max_concurrent: int, max_queue: int) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        super().__init__(
            f"bulkhead {name!r} is full: {max_concurrent} running and {max_queue} waiting"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.name, self.max_concurrent, self.max_queue), {}))


class OperationTimeout(GarrisonError, TimeoutError):
    """The operation did not finish within ``timeout`` seconds."""

    def __init__(self, timeout: float, *, operation: str = "operation") -> None:
        self.timeout = timeout
        self.operation = operation
        super().__init__(f"{operation} did not finish within {timeout:.3f}s")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.timeout,), {"operation": self.operation}))


class RetriesExhausted(GarrisonError):
    """Every allowed attempt failed; ``last_error`` is the error of the final attempt.

    When the attempts ended with results that ``retry_on_result`` rejected, ``last_error``
    is None and ``last_result`` holds the last of them.
    """

    def __init__(
        self, attempts: int, last_error: BaseException | None, *, last_result: object = None
    ) -> None:
        self.attempts = attempts
        self.last_error = last_error
        self.last_result = last_result
        cause = f": {type(last_error).__name__}: {last_error}" if last_error is not None else ""
        super().__init__(f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}{cause}")
        self.__cause__ = last_error

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild,
            (type(self), (self.attempts, self.last_error), {"last_result": self.last_result}),
        )


def _rebuild(
    cls: type[GarrisonError], args: tuple[object, ...], kwargs: dict[str, object]
) -> GarrisonError:
    return cls(*args, **kwargs)


class SupervisorGaveUp(GarrisonError):
    """A supervisor's children failed more than ``max_restarts`` times in ``within_seconds``.

    The supervisor stopped its children and failed with this error; its parent handles that
    like any other child failure (escalation).
    """

    def __init__(
        self, supervisor: str, max_restarts: int, within_seconds: float, last_error: object = None
    ) -> None:
        self.supervisor = supervisor
        self.max_restarts = max_restarts
        self.within_seconds = within_seconds
        self.last_error = last_error
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {max_restarts} restarts within "
            f"{within_seconds:g}s (last failure: {last_error!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.supervisor, self.max_restarts, self.within_seconds, repr(self.last_error))
        return (_rebuild, (type(self), args, {}))
