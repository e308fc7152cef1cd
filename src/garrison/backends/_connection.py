"""The connection to Redis: short timeouts, no client retries, a breaker on the link itself.

Every Redis call of a backend goes through :class:`RedisLink`. While the link's breaker is
closed, calls go to Redis (bounded by the socket timeouts) and each failure is counted;
``failure_threshold`` failures in a row open it, which is logged as
``garrison.backend.degraded``. While it is open no caller touches the network: calls fail
at once with :class:`BackendDown` and the callers fall back (a rate limiter to its local
share). Only the backend's own thread probes Redis again (:meth:`RedisLink.probe`, a PING
every ``retry_interval``), so a frozen Redis never holds up an actor for longer than one
socket timeout; when the probe answers the breaker closes (``garrison.backend.recovered``).
The breaker is garrison's own :class:`~garrison.policies.breaker.BreakerPolicy`.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from garrison._clock import Clock, SystemClock
from garrison.backends._config import BackendConfig
from garrison.observability.events import emit
from garrison.policies.breaker import BreakerPolicy, CircuitBreakerConfig, Permit

__all__ = ["BackendDown", "LinkHealth", "RedisLink", "Script", "import_redis"]

T = TypeVar("T")


def import_redis() -> ModuleType:
    """redis-py, or an ImportError saying how to install it."""
    try:
        import redis  # noqa: PLC0415 (an optional extra)
    except ImportError as missing:
        raise ImportError(
            "garrison's Redis backend needs redis-py, which garrison installs only with its "
            "'redis' extra: pip install 'garrison[redis]'",
            name="redis",
        ) from missing
    return redis


class BackendDown(Exception):
    """Redis did not answer (or the link's breaker is open); ``cause`` says why."""

    def __init__(self, cause: BaseException | str) -> None:
        self.cause = cause
        super().__init__(str(cause))


class Script:
    """A Lua script, run by its SHA1 (EVALSHA) and loaded again when Redis lost it."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class LinkHealth:
    """The breaker on the Redis connection (thread-safe), with its events and counters."""

    def __init__(self, config: BackendConfig, *, runtime: str, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runtime = runtime
        self._url = config.display_url
        self._policy = BreakerPolicy(
            CircuitBreakerConfig(
                failure_threshold=config.failure_threshold,
                recovery_timeout=config.retry_interval,
                error_rate_threshold=1.0,  # consecutive failures open it, not a rate
                min_calls=1000,
                window_size=1000,
                half_open_max_calls=1,
                probe_timeout=max(config.retry_interval, 2 * config.socket_timeout),
            ),
            random.Random(0),
        )
        self.degraded_total = 0
        self.errors_total = 0
        self.last_error = ""

    @property
    def up(self) -> bool:
        """True while calls may go to Redis (the breaker is closed)."""
        return self._policy.state == "closed"

    @property
    def state(self) -> str:
        """The link breaker's state: closed (up), open or half_open (down)."""
        return self._policy.state

    def permit(self, *, probe: bool = False) -> Permit | None:
        """A permit for one call, or None (down). Only a ``probe`` may test a down link."""
        if not probe and self._policy.state != "closed":
            return None
        with self._lock:
            decision = self._policy.before_call(self._clock.monotonic())
            self._announce()
        return decision if isinstance(decision, Permit) else None

    def succeeded(self, permit: Permit) -> None:
        """The call made with ``permit`` got an answer."""
        with self._lock:
            self._policy.on_success(permit, 0.0, self._clock.monotonic())
            self._announce()

    def failed(self, permit: Permit, error: BaseException) -> None:
        """The call made with ``permit`` failed (timeout, refused connection, ...)."""
        with self._lock:
            self.errors_total += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self._policy.on_failure(permit, 0.0, self._clock.monotonic())
            self._announce()

    def _announce(self) -> None:
        for record in self._policy.drain_transitions():
            if record.from_state == "closed" and record.to_state == "open":
                self.degraded_total += 1
                emit(
                    "garrison.backend.degraded",
                    level="warning",
                    runtime=self._runtime,
                    backend=self._url,
                    error=self.last_error,
                )
            elif record.to_state == "closed":
                emit(
                    "garrison.backend.recovered",
                    level="info",
                    runtime=self._runtime,
                    backend=self._url,
                )


class RedisLink:
    """A redis-py client with short timeouts and no retries, behind :class:`LinkHealth`."""

    def __init__(self, config: BackendConfig, *, runtime: str, clock: Clock | None = None) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        self.config = config
        self._redis = redis
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self.client: Any = redis.Redis.from_url(
            config.url,
            socket_timeout=config.socket_timeout,
            socket_connect_timeout=config.connect_timeout,
            retry=Retry(NoBackoff(), config.retries),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.health = LinkHealth(config, runtime=runtime, clock=clock or SystemClock())

    # -- calls ----------------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], *, probe: bool = False) -> T:
        """``fn(client)`` if the link is up (or ``probe``), else :class:`BackendDown`."""
        permit = self.health.permit(probe=probe)
        if permit is None:
            raise BackendDown("the Redis backend is unreachable (its breaker is open)")
        try:
            result = fn(self.client)
        except self._errors as error:
            self.health.failed(permit, error)
            raise BackendDown(error) from error
        self.health.succeeded(permit)
        return result

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script``; load it first if Redis does not have it (NOSCRIPT)."""

        def run(client: Any) -> Any:
            try:
                return client.evalsha(script.sha, len(keys), *keys, *args)
            except self._noscript:
                client.script_load(script.source)
                return client.evalsha(script.sha, len(keys), *keys, *args)

        return self.call(run)

    def evalsha_many(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip (a pipeline, no
        transaction); results in order. Loads the script again if Redis lost it."""

        def run(client: Any) -> list[Any]:
            results = self._pipelined(client, script, calls)
            if any(isinstance(r, self._noscript) for r in results):
                client.script_load(script.source)
                results = self._pipelined(client, script, calls)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

        return self.call(run)

    @staticmethod
    def _pipelined(
        client: Any, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    def probe(self) -> bool:
        """PING Redis if the link is down and a probe is due; True if the link is up after."""
        if self.health.up:
            return True
        try:
            self.call(lambda client: client.ping(), probe=True)
        except BackendDown:
            return False
        return self.health.up

    def pubsub(self) -> Any:
        """A new pub/sub object on its own connection."""
        return self.client.pubsub()

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The exception types that mean Redis failed."""
        return self._errors

    def close(self) -> None:
        """Close every connection of the pool."""
        self.client.close()
        self.client.connection_pool.disconnect()
