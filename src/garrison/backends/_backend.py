"""RedisBackend: one per runtime and URL; owns the link, the fleet threads, the policies."""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from garrison._clock import Clock
from garrison.backends._config import BackendConfig
from garrison.backends._connection import RedisLink
from garrison.backends._redis_breaker import Fleet
from garrison.backends._redis_rate import SharedRatePolicy, encode_key
from garrison.policies.rate import RateLimitConfig

__all__ = ["RedisBackend"]


class RedisBackend:
    """Rate-limit windows and breaker trips of one runtime, shared through Redis.

    ``start()`` starts the fleet's threads (io and subscriber); ``close()`` stops them and
    closes the connections. Keys live under ``garrison:<namespace>:`` (rate limits) and
    ``garrison:{<namespace>}:`` (breakers), where the namespace is the config's or
    ``runtime``'s name (see :mod:`garrison.backends._redis_breaker` for the hash tags).
    """

    def __init__(self, config: BackendConfig, *, runtime: str, clock: Clock | None = None) -> None:
        self.config = config
        self.namespace = config.namespace or runtime
        self.link = RedisLink(config, runtime=runtime, clock=clock)
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._fleet = Fleet(
            self.link, config, namespace=self.namespace, process=self.process, clock=clock
        )
        self._started = False

    @property
    def fleet(self) -> Fleet:
        """The breaker side: trips, probes, the heartbeat."""
        return self._fleet

    def start(self) -> None:
        """Start the fleet's threads (idempotent)."""
        if not self._started:
            self._started = True
            self._fleet.start()

    def close(self) -> None:
        """Stop the threads and close every connection."""
        if self._started:
            self._fleet.close()
        self.link.close()

    def processes(self) -> int:
        """The ``N`` of a local share: configured, or the processes last seen alive."""
        if self.config.processes is not None:
            return self.config.processes
        return max(1, self._fleet.processes_seen)

    def rate_policy(self, config: RateLimitConfig, service: str) -> SharedRatePolicy:
        """A policy for the windows of ``service`` (a limiter's name) under this backend."""
        prefix = f"garrison:{encode_key(self.namespace)}:{encode_key(service)}"  # no braces
        return SharedRatePolicy(self.link, config, prefix, processes=self.processes)

    def status(self) -> dict[str, Any]:
        """The link's state and counters, and the fleet's."""
        health = self.link.health
        return {
            "backend": self.config.display_url,
            "up": health.up,
            "link_state": health.state,
            "on_backend_error": self.config.on_backend_error,
            "degraded_total": health.degraded_total,
            "errors_total": health.errors_total,
            "last_error": health.last_error,
            "local_share_of": self.processes(),
            **self._fleet.status(),
        }

    def __repr__(self) -> str:
        return f"<RedisBackend {self.config.display_url} namespace={self.namespace!r}>"
