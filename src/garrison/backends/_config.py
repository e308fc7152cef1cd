"""BackendConfig: where the shared state lives and how to behave when that place fails."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from garrison.errors import ConfigError
from garrison.policies.backoff import _check_int, _check_number, _from_dict

__all__ = ["BackendConfig", "OnBackendError", "backend_config"]

OnBackendError = Literal["local", "open", "closed"]
"""What a rate limiter does while its backend is unreachable: decide within a local share
of the limit (``"local"``), admit everything (``"open"``) or reject (``"closed"``)."""

_MODES: Final = get_args(OnBackendError)
_SCHEMES: Final = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """A Redis backend for rate-limit windows and circuit-breaker trips.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://...``, ``unix://...``).
    Calls to Redis are bounded by ``socket_timeout`` / ``connect_timeout`` (seconds) and
    are not retried by the client (``retries``: 0); ``failure_threshold`` consecutive
    failures open the breaker on the connection, which is probed again every
    ``retry_interval`` seconds by a background thread (never by a caller).

    While Redis is unreachable a rate limiter follows ``on_backend_error`` (see
    :data:`OnBackendError`); the local share is ``1/N`` of each limit, ``N`` being
    ``processes`` or, when that is None, the number of processes last seen in the heartbeat
    set (every ``heartbeat_interval`` seconds each process marks itself alive).

    Breakers open on a trip elsewhere when at least ``fleet_trip_quorum`` processes tripped
    within ``trip_window`` seconds (None: the breaker's ``recovery_timeout``).
    ``namespace`` prefixes every key (``garrison:<namespace>:...``; None: the runtime's
    name): processes share state when they use the same namespace and service names.
    """

    url: str
    on_backend_error: OnBackendError = "local"
    socket_timeout: float = 0.1
    connect_timeout: float = 0.1
    retries: int = 0
    failure_threshold: int = 1
    retry_interval: float = 0.5
    processes: int | None = None
    heartbeat_interval: float = 1.0
    fleet_trip_quorum: int = 1
    trip_window: float | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in _SCHEMES:
            raise ConfigError(
                "backend", f"must be a redis:// (or rediss://, unix://) URL, got {self.url!r}"
            )
        if self.on_backend_error not in _MODES:
            options = ", ".join(repr(m) for m in _MODES)
            raise ConfigError(
                "on_backend_error", f"must be one of {options}, got {self.on_backend_error!r}"
            )
        for key in ("socket_timeout", "connect_timeout", "retry_interval", "heartbeat_interval"):
            put(
                self,
                key,
                _check_number(key, getattr(self, key), minimum=0.0, exclusive_minimum=True),
            )
        _check_int("retries", self.retries, 0)
        _check_int("failure_threshold", self.failure_threshold, 1)
        _check_int("fleet_trip_quorum", self.fleet_trip_quorum, 1)
        if self.processes is not None:
            _check_int("processes", self.processes, 1)
        if self.trip_window is not None:
            put(
                self,
                "trip_window",
                _check_number("trip_window", self.trip_window, minimum=0.0, exclusive_minimum=True),
            )
        if self.namespace is not None and (
            not isinstance(self.namespace, str) or not self.namespace
        ):
            raise ConfigError("namespace", f"must be a non-empty string, got {self.namespace!r}")

    @property
    def display_url(self) -> str:
        """The URL without its password (for logs, status and metrics)."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else "***@"
        return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendConfig:
        """Build a config from a mapping (a config-file table), rejecting unknown keys."""
        return _from_dict(cls, data)


def backend_config(spec: object, on_backend_error: str | None = None) -> BackendConfig | None:
    """``spec`` as a BackendConfig: a URL, a mapping, a BackendConfig, or None (no backend).

    ``on_backend_error``, when given, overrides the config's own.
    """
    if spec is None:
        return None
    if isinstance(spec, BackendConfig):
        config = spec
    elif isinstance(spec, str):
        config = BackendConfig(spec)
    elif isinstance(spec, Mapping):
        config = BackendConfig.from_dict(spec)
    else:
        raise ConfigError(
            "backend", f"must be a redis:// URL, a mapping or a BackendConfig, got {spec!r}"
        )
    if on_backend_error is not None and on_backend_error != config.on_backend_error:
        config = replace(config, on_backend_error=on_backend_error)  # type: ignore[arg-type]
    return config
