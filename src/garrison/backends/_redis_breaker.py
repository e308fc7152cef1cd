"""Circuit-breaker trips shared through Redis: a sorted set of trips, pub/sub, a probe lock.

Each process keeps its own breaker actors; nothing here is on their call path. The
:class:`Fleet` of a backend runs two threads:

- an **io thread** that does every Redis write: a trip (``ZADD`` to the service's ``trips``
  with the server's time, trimmed to the trip window, ``PX`` expiry, then ``PUBLISH`` on
  the ``breakers`` channel), the fleet-wide probe lock (``SET probe <process> NX PX <probe
  timeout>``: one process probes for all), a recovery (the trips are deleted, the lock
  released, ``closed`` published), the heartbeat of this process (the ``processes`` sorted
  set: its size is the ``N`` of the rate limiters' local share) and the probes of a down
  Redis link. A trip that cannot be recorded (Redis unreachable) waits in a bounded
  backlog, the latest per service, and is recorded and published with its age once Redis
  answers, unless its window is over by then (or the service recovered meanwhile);
- a **subscriber thread** that listens on the channel and tells the registered breaker
  actors: a trip by another process opens them once ``fleet_trip_quorum`` distinct
  processes tripped within the window, a recovery closes them. Pub/sub loses messages
  while a connection is down, so the trips are read again when a breaker registers, after
  the subscriber (re)connects and when the link comes back.

Keys and Redis Cluster: every key and the channel of a namespace share one hash tag, the
namespace itself, so they live on one slot and any script may touch several of them
(``release`` touches ``probe`` and ``trips`` of a service)::

    garrison:{<ns>}:processes             heartbeat (sorted set: process -> last beat)
    garrison:{<ns>}:breakers              pub/sub channel (trips and recoveries)
    garrison:{<ns>}:<service>:trips       recent trips (sorted set: process|ms -> ms)
    garrison:{<ns>}:<service>:probe       fleet-wide probe lock (process, PX)

``<ns>`` is written without braces (see :func:`~garrison.backends._redis_rate.encode_key`),
so the tag is always the whole namespace. Rate-limit windows are tagged per client key
instead (``garrison:<ns>:<service>:{<key>}:<alg>``): they spread over the cluster.

Both threads stop in :meth:`Fleet.close` (the runtime's ``stop``).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from garrison._clock import Clock, SystemClock
from garrison._ref import Ref
from garrison.backends._config import BackendConfig
from garrison.backends._connection import BackendDown, RedisLink, Script
from garrison.backends._protocol import FleetProbe, FleetRecovered, FleetTrip
from garrison.backends._redis_rate import encode_key
from garrison.observability.events import emit
from garrison.policies.breaker import CircuitBreakerConfig

__all__ = ["Fleet"]

_TRIP: Final = Script(
    "trip",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local at = now - tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], at, ARGV[1] .. '|' .. string.format('%.0f', at))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return now
""",
)

_TRIPS: Final = Script(
    "trips",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
table.insert(found, 1, now)
return found
""",
)

_PROBE: Final = Script(
    "probe",
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
""",
)

_RELEASE: Final = Script(
    "release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
""",
)

_HEARTBEAT: Final = Script(
    "heartbeat",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
redis.call('PEXPIRE', KEYS[1], span)
return redis.call('ZCARD', KEYS[1])
""",
)

_LISTEN_SECONDS: Final = 0.1
_BEATS_KEPT: Final = 3
_BACKLOG: Final = 256
"""The most unrecorded trips kept while Redis is unreachable (one per service, the latest)."""


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """A trip that could not be recorded yet: when (on the fleet's clock), and its window."""

    at: float
    window: float


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Fleet:
    """The breaker side of a Redis backend (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        config: BackendConfig,
        *,
        namespace: str,
        process: str,
        clock: Clock | None = None,
    ) -> None:
        self._link = link
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._config = config
        self._prefix = f"garrison:{{{encode_key(namespace)}}}"  # one slot per namespace
        self._channel = f"{self._prefix}:breakers"
        self.process = process
        self._lock = threading.Lock()
        self._breakers: dict[str, dict[object, tuple[Ref, CircuitBreakerConfig]]] = {}
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.processes_seen = 0
        self._backlog: dict[str, _Unrecorded] = {}  # the io thread's alone
        self.trips_published = 0
        self.trips_received = 0
        self.trips_dropped = 0
        self.subscribed = threading.Event()
        self._io = threading.Thread(
            target=self._io_loop, name=f"garrison-{namespace}-redis-io", daemon=True
        )
        self._listener = threading.Thread(
            target=self._listen_loop, name=f"garrison-{namespace}-redis-sub", daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the io and subscriber threads."""
        self._io.start()
        self._listener.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop both threads and wait for them (bounded)."""
        self._stop.set()
        self._jobs.put(None)
        for thread in (self._io, self._listener):
            if thread.is_alive():
                thread.join(timeout)

    # -- the breaker actors' side (BreakerFleet) ------------------------------------------------

    def register(self, service: str, ref: Ref, config: CircuitBreakerConfig) -> object:
        """Tell ``ref`` about ``service``'s trips (and read the recent ones now)."""
        token = object()
        with self._lock:
            self._breakers.setdefault(service, {})[token] = (ref, config)
        self._jobs.put(lambda: self._resync(service))
        return token

    def unregister(self, token: object) -> None:
        """Forget the breaker registered with ``token``."""
        with self._lock:
            for service, refs in list(self._breakers.items()):
                if refs.pop(token, None) is not None and not refs:
                    del self._breakers[service]

    def tripped(self, service: str, config: CircuitBreakerConfig) -> None:
        """Record and publish a trip of this process's breaker of ``service``.

        While Redis is unreachable the trip waits in a bounded backlog and is recorded (and
        published, with its age) when the link is back, if it is still within its window.
        """
        trip = _Unrecorded(self._clock.monotonic(), self._window(config))

        def job() -> None:
            self._backlog.pop(service, None)  # this trip supersedes an unrecorded one
            try:
                self._record(service, trip, 0.0)  # at once: the trip is "now" for everyone
            except BackendDown:
                self._keep(service, trip)
                raise

        self._jobs.put(job)

    def recovered(self, service: str) -> None:
        """This process's probes closed ``service``'s breaker: clear the trips, release the
        probe lock, publish the recovery (an unrecorded trip of ``service`` is obsolete)."""
        payload = json.dumps({"kind": "closed", "service": service, "process": self.process})
        keys = [self.key(service, "probe"), self.key(service, "trips")]

        def job() -> None:
            self._backlog.pop(service, None)
            self._link.evalsha(_RELEASE, keys, [self.process, self._channel, payload])

        self._jobs.put(job)

    def request_probe(self, service: str, ref: Ref, token: object, ttl: float) -> None:
        """Take ``service``'s probe lock for ``ttl`` s if it is free; answer ``ref``.

        When Redis does not answer, the probe is granted: each process probes for itself
        rather than keep its breaker open until Redis is back.
        """

        def job() -> None:
            try:
                granted, left = self._link.evalsha(
                    _PROBE, [self.key(service, "probe")], [self.process, _ms(ttl)]
                )
            except BackendDown:
                granted, left = 1, 0
            _tell(ref, FleetProbe(token, bool(granted), max(int(left), 0) / 1000))

        self._jobs.put(job)

    def release_probe(self, service: str) -> None:
        """Release ``service``'s probe lock if this process holds it."""
        keys = [self.key(service, "probe"), self.key(service, "trips")]
        self._jobs.put(lambda: self._link.evalsha(_RELEASE, keys, [self.process, "", ""]))

    # -- trips: recorded, or kept until Redis answers ------------------------------------------

    def _record(self, service: str, trip: _Unrecorded, age: float) -> None:
        """ZADD the trip (dated ``age`` seconds ago on the server's clock) and publish it."""
        event: dict[str, Any] = {"kind": "trip", "service": service, "process": self.process}
        if age > 0.0:
            event["age"] = round(age, 6)
        self._link.evalsha(
            _TRIP,
            [self.key(service, "trips")],
            [self.process, _ms(trip.window), self._channel, json.dumps(event), round(age * 1000)],
        )
        self.trips_published += 1

    def _keep(self, service: str, trip: _Unrecorded) -> None:
        """Keep an unrecorded trip for later; the oldest goes when the backlog is full."""
        if len(self._backlog) >= _BACKLOG:
            del self._backlog[next(iter(self._backlog))]
            self.trips_dropped += 1
        self._backlog[service] = trip

    def _record_backlog(self) -> None:
        """Record the unrecorded trips still within their window (oldest first); drop the
        rest. Stops at the first failure, keeping what is left for the next attempt."""
        now = self._clock.monotonic()
        while self._backlog:
            service, trip = next(iter(self._backlog.items()))
            age = now - trip.at
            if age < trip.window:
                self._record(service, trip, age)  # BackendDown: everything stays for next time
            else:
                self.trips_dropped += 1
            del self._backlog[service]

    # -- helpers --------------------------------------------------------------------------------

    def _window(self, config: CircuitBreakerConfig) -> float:
        window = self._config.trip_window
        return window if window is not None else config.recovery_timeout

    def _registered(self, service: str) -> list[tuple[Ref, CircuitBreakerConfig]]:
        with self._lock:
            return list(self._breakers.get(service, {}).values())

    def _resync(self, service: str) -> None:
        """Read ``service``'s recent trips; tell its breakers if they reach the quorum."""
        for ref, config in self._registered(service):
            found = self._link.evalsha(
                _TRIPS, [self.key(service, "trips")], [_ms(self._window(config))]
            )
            now = int(found[0])
            processes: set[str] = set()
            latest = None
            for member, score in zip(found[1::2], found[2::2], strict=True):
                processes.add(member.decode().rsplit("|", 1)[0])
                latest = float(score) if latest is None else max(latest, float(score))
            if latest is not None and len(processes) >= self._config.fleet_trip_quorum:
                _tell(ref, FleetTrip(service, max(0.0, (now - latest) / 1000), len(processes)))

    def _resync_all(self) -> None:
        with self._lock:
            services = list(self._breakers)
        for service in services:
            self._resync(service)

    @property
    def channel(self) -> str:
        """The pub/sub channel of trips and recoveries."""
        return self._channel

    def key(self, service: str, what: str) -> str:
        """The Redis key of ``service``'s ``what`` (``trips`` or ``probe``)."""
        return f"{self._prefix}:{service}:{what}"

    @property
    def heartbeat_key(self) -> str:
        """The sorted set of live processes."""
        return f"{self._prefix}:processes"

    def _heartbeat(self) -> None:
        span = _ms(self._config.heartbeat_interval * _BEATS_KEPT)
        self.processes_seen = int(
            self._link.evalsha(_HEARTBEAT, [self.heartbeat_key], [self.process, span])
        )

    # -- the io thread --------------------------------------------------------------------------

    def _io_loop(self) -> None:
        link = self._link
        beat_every = self._config.heartbeat_interval
        next_beat = 0.0
        was_up = True
        while True:
            wait = next_beat - time.monotonic()
            if not link.health.up:
                wait = min(wait, self._config.retry_interval / 4)
            try:
                job = self._jobs.get(timeout=max(wait, 0.0))
            except queue.Empty:
                job = _idle
            if job is None:
                return
            self._run(job)
            up = link.probe()
            if up and self._backlog:
                self._run(self._record_backlog)
            if up and not was_up:
                self._run(self._resync_all)
            was_up = up
            if time.monotonic() >= next_beat:
                self._run(self._heartbeat)
                next_beat = time.monotonic() + beat_every

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BackendDown:
            pass  # counted by the link; trips wait in the backlog, reads are done again
        except Exception as error:
            emit("garrison.backend.job_failed", level="error", channel=self._channel, error=error)

    # -- the subscriber thread ------------------------------------------------------------------

    def _listen_loop(self) -> None:
        errors = self._link.errors
        while not self._stop.is_set():
            pubsub = self._link.pubsub()
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=_LISTEN_SECONDS)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":  # (re)connected: read what we missed
                        self.subscribed.set()
                        self._jobs.put(self._resync_all)
                    elif message.get("type") == "message":
                        self._received(message.get("data"))
            except errors as error:
                self.subscribed.clear()
                emit(
                    "garrison.backend.subscriber_disconnected",
                    level="debug",
                    channel=self._channel,
                    error=error,
                )
                self._stop.wait(self._config.retry_interval)
            finally:
                pubsub.close()

    def _received(self, data: object) -> None:
        try:
            event: dict[str, Any] = json.loads(data)  # type: ignore[arg-type]
            kind, service, process = event["kind"], event["service"], event["process"]
            age = float(event.get("age", 0.0))
        except (TypeError, ValueError, KeyError, AttributeError):
            return  # not one of ours
        if process == self.process:
            return
        if kind == "trip":
            self.trips_received += 1
            if self._config.fleet_trip_quorum <= 1:
                for ref, _ in self._registered(service):
                    _tell(ref, FleetTrip(service, max(age, 0.0)))
            else:
                self._jobs.put(lambda: self._resync(service))
        elif kind == "closed":
            for ref, _ in self._registered(service):
                _tell(ref, FleetRecovered(service))

    def status(self) -> dict[str, Any]:
        """Counters and the heartbeat's view of the fleet."""
        with self._lock:
            services = sorted(self._breakers)
        return {
            "process": self.process,
            "processes_seen": self.processes_seen,
            "subscribed": self.subscribed.is_set(),
            "breakers": services,
            "trips_published": self.trips_published,
            "trips_received": self.trips_received,
            "trips_unrecorded": len(self._backlog),
            "trips_dropped": self.trips_dropped,
        }


def _idle() -> None:
    """Nothing to do: the io loop woke up for the heartbeat or a link probe."""


def _tell(ref: Ref, message: object) -> None:
    try:
        ref.tell(message)
    except Exception as error:  # a stopped actor: nothing to tell
        emit("garrison.backend.tell_failed", level="debug", actor=str(ref), error=error)
