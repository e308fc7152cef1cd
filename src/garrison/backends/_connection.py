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
import os
import random
import threading
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from garrison._clock import Clock, SystemClock
from garrison.backends._config import BackendConfig
from garrison.observability.events import emit
from garrison.policies.breaker import BreakerPolicy, CircuitBreakerConfig, Permit

__all__ = ["BackendDown", "LinkHealth", "RedisLink", "Script", "import_redis"]

T = TypeVar("T")

_DOWN = "the Redis backend is unreachable (its breaker is open)"


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
    """The breaker on the Redis connection (thread-safe), with its events and counters.

    The call path is cheap: ``up`` is a plain attribute, and a success touches nothing
    unless a failure came before it (:meth:`ok`). Failures and the probes of a down link
    (:meth:`probe_permit`, :meth:`succeeded`, :meth:`failed`) go through the policy.
    """

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
        self.up = True
        """True while calls may go to Redis (the breaker is closed)."""
        self._clean = True  # no failure since the last success: a success changes nothing
        self.degraded_total = 0
        self.errors_total = 0
        self.last_error = ""

    @property
    def state(self) -> str:
        """The link breaker's state: closed (up), open or half_open (down)."""
        return self._policy.state

    def ok(self) -> None:
        """A call made while the link was up got an answer."""
        if self._clean:
            return
        with self._lock:
            decision = self._policy.before_call(self._clock.monotonic())
            if isinstance(decision, Permit):
                self._policy.on_success(decision, 0.0, self._clock.monotonic())
                self._clean = True
            self._announce()

    def fail(self, error: BaseException) -> None:
        """A call made while the link was up failed (timeout, refused connection, ...)."""
        with self._lock:
            self._count(error)
            decision = self._policy.before_call(self._clock.monotonic())
            if isinstance(decision, Permit):  # not when another call opened it meanwhile
                self._policy.on_failure(decision, 0.0, self._clock.monotonic())
                self._clean = False
            self._announce()

    def probe_permit(self) -> Permit | None:
        """A permit to test a down link, or None (not due yet, or another probe runs)."""
        with self._lock:
            decision = self._policy.before_call(self._clock.monotonic())
            self._announce()
        return decision if isinstance(decision, Permit) else None

    def succeeded(self, permit: Permit) -> None:
        """The probe made with ``permit`` got an answer."""
        with self._lock:
            self._policy.on_success(permit, 0.0, self._clock.monotonic())
            self._clean = True
            self._announce()

    def failed(self, permit: Permit, error: BaseException) -> None:
        """The probe made with ``permit`` failed."""
        with self._lock:
            self._count(error)
            self._policy.on_failure(permit, 0.0, self._clock.monotonic())
            self._announce()

    def _count(self, error: BaseException) -> None:
        self.errors_total += 1
        self.last_error = f"{type(error).__name__}: {error}"

    def _announce(self) -> None:
        self.up = self._policy.state == "closed"
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
    """A redis-py client with short timeouts and no retries, behind :class:`LinkHealth`.

    Scripts (:meth:`evalsha`, :meth:`evalsha_many`) run on a connection of the calling
    thread's own (a limiter actor's, the fleet's io thread's), outside redis-py's pool and
    command machinery, which cost about as much as the round trip itself; :meth:`call`
    hands ``fn`` the pooled client for everything else.
    """

    def __init__(self, config: BackendConfig, *, runtime: str, clock: Clock | None = None) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        self.config = config
        self._redis = redis
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._response_error: type[BaseException] = redis.exceptions.ResponseError
        self.client: Any = redis.Redis.from_url(
            config.url,
            socket_timeout=config.socket_timeout,
            socket_connect_timeout=config.connect_timeout,
            retry=Retry(NoBackoff(), config.retries),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.health = LinkHealth(config, runtime=runtime, clock=clock or SystemClock())
        self._lanes = threading.local()  # each thread's own connection, and its pid
        self._owned: weakref.WeakSet[Any] = weakref.WeakSet()
        self._owned_lock = threading.Lock()
        self._closed = False

    # -- calls ----------------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], *, probe: bool = False) -> T:
        """``fn(client)`` if the link is up (or ``probe``), else :class:`BackendDown`."""
        health = self.health
        if probe:
            permit = health.probe_permit()
            if permit is None:
                raise BackendDown(_DOWN)
            try:
                result = fn(self.client)
            except self._errors as error:
                health.failed(permit, error)
                raise BackendDown(error) from error
            health.succeeded(permit)
            return result
        if not health.up:
            raise BackendDown(_DOWN)
        try:
            result = fn(self.client)
        except self._errors as error:
            health.fail(error)
            raise BackendDown(error) from error
        health.ok()
        return result

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` (loading it first if Redis does not have it: NOSCRIPT)."""
        health = self.health
        if not health.up:
            raise BackendDown(_DOWN)
        conn = self._connection()
        try:
            try:
                conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                reply = conn.read_response()
            except self._noscript:
                conn.send_command("SCRIPT", "LOAD", script.source)
                conn.read_response()
                conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                reply = conn.read_response()
        except self._errors as error:
            conn.disconnect()
            health.fail(error)
            raise BackendDown(error) from error
        except BaseException:
            conn.disconnect()  # interrupted between a command and its reply
            raise
        health.ok()
        return reply

    def evalsha_many(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip (pipelined, no
        transaction); results in order. Loads the script again if Redis lost it."""
        health = self.health
        if not health.up:
            raise BackendDown(_DOWN)
        conn = self._connection()
        try:
            results = self._pipelined(conn, script, calls)
            if any(isinstance(r, self._noscript) for r in results):
                conn.send_command("SCRIPT", "LOAD", script.source)
                conn.read_response()
                results = self._pipelined(conn, script, calls)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except self._errors as error:
            conn.disconnect()
            health.fail(error)
            raise BackendDown(error) from error
        except BaseException:
            conn.disconnect()
            raise
        health.ok()
        return results

    def _pipelined(
        self, conn: Any, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        conn.send_packed_command(
            conn.pack_commands(
                [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
            )
        )
        results: list[Any] = []
        for _ in calls:  # every reply is read, errors too, so the connection stays in step
            try:
                results.append(conn.read_response())
            except self._response_error as error:
                results.append(error)
        return results

    def _connection(self) -> Any:
        """The calling thread's own connection (a new one in a forked child)."""
        if self._closed:
            raise BackendDown("the Redis backend is closed")
        lanes = self._lanes
        conn = getattr(lanes, "conn", None)
        pid = os.getpid()
        if conn is None or lanes.pid != pid:
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            lanes.conn, lanes.pid = conn, pid
            with self._owned_lock:
                self._owned.add(conn)
        return conn

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
        """Close every connection: the pool's and the threads' own."""
        self._closed = True
        with self._owned_lock:
            owned = list(self._owned)
        for conn in owned:
            conn.disconnect()
        self.client.close()
        self.client.connection_pool.disconnect()
