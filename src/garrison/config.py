"""Configuration files: TOML, YAML or a dict, to validated stage configs per service.

The seed document's ``reliability_config`` layout is accepted as it is, as the defaults of
every service, and ``services.<name>.<section>`` overrides them per service, key by key:

```toml
[rate_limiting]            # the seed's section names ("rate_limit" works too)
per_second = 10
per_minute = 100
strategy = "adaptive"      # the seed's name for throttle_strategy

[circuit_breaker]
failure_threshold = 5
recovery_timeout = 30

[retry]
max_attempts = 3

[timeout]
base_timeout = 30.0

[services.database.circuit_breaker]
failure_threshold = 3      # database: the defaults, with this key changed

[services.database.bulkhead]
max_workers = 5

[runtime]
name = "my-service"
backend = "redis://127.0.0.1:6379/0"   # optional: share limits and trips (see garrison.backends)
on_backend_error = "local"             # while Redis is unreachable: local, open or closed
```

Unknown keys are errors (a typo must not silently fall back to a default), and every error
is a :class:`~garrison.errors.ConfigError` whose key is the full dotted path
(``services.database.circuit_breaker.failure_threshold: must be >= 1, got 0``). Parsing is
typed: no ``eval``, no pickle, YAML through ``yaml.safe_load``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from garrison.actors.bulkhead import BulkheadConfig
from garrison.backends import backend_config
from garrison.errors import ConfigError
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

__all__ = ["ReliabilityConfig", "ServiceConfig", "load_config"]

_SECTIONS: Mapping[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "rate_limiting": ("rate_limit", RateLimitConfig.from_dict),
    "rate_limit": ("rate_limit", RateLimitConfig.from_dict),
    "circuit_breaker": ("circuit_breaker", CircuitBreakerConfig.from_dict),
    "retry": ("retry", RetryConfig.from_dict),
    "timeout": ("timeout", TimeoutConfig.from_dict),
    "bulkhead": ("bulkhead", BulkheadConfig.from_dict),
}
_RUNTIME_KEYS = ("name", "max_restarts", "within_seconds", "backend", "on_backend_error")
_KEY_ALIASES: Mapping[str, Mapping[str, str]] = {
    # the seed's names, mapped to garrison's before defaults and overrides are merged
    "rate_limit": {
        "strategy": "throttle_strategy",
        "rate_limit_per_second": "per_second",
        "rate_limit_per_minute": "per_minute",
        "rate_limit_per_hour": "per_hour",
    },
}


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The stage configs of one service (None: that stage is left out)."""

    rate_limit: RateLimitConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    retry: RetryConfig | None = None
    timeout: TimeoutConfig | None = None
    bulkhead: BulkheadConfig | None = None

    def stages(self) -> dict[str, Any]:
        """The configured stages, as keyword arguments for ``Runtime.pipeline``."""
        return {
            name: getattr(self, name)
            for name in ("rate_limit", "circuit_breaker", "retry", "timeout", "bulkhead")
            if getattr(self, name) is not None
        }


@dataclass(frozen=True, slots=True)
class ReliabilityConfig:
    """A parsed configuration: defaults, per-service overrides, runtime settings."""

    defaults: ServiceConfig = field(default_factory=ServiceConfig)
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)
    http: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``http.<name>`` sections: the options of ``rt.http_client(name)`` (validated)."""

    def service(self, name: str) -> ServiceConfig:
        """The stages of ``name``: its own section, or the defaults if it has none."""
        return self.services.get(name, self.defaults)


def load_config(source: str | Path | Mapping[str, Any]) -> ReliabilityConfig:
    """Parse a TOML or YAML file (by suffix) or a mapping into a :class:`ReliabilityConfig`."""
    if isinstance(source, Mapping):
        data: Any = source
    else:
        data = _read(Path(source))
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"must be a mapping of sections, got {type(data).__name__}")
    if "reliability_config" in data:
        extra = [key for key in data if key != "reliability_config"]
        if extra:
            raise ConfigError(extra[0], "give either reliability_config or top-level sections")
        data = data["reliability_config"]
        if not isinstance(data, Mapping):
            raise ConfigError("reliability_config", "must be a mapping of sections")
        prefix = "reliability_config."
    else:
        prefix = ""
    raw_defaults: dict[str, Mapping[str, Any]] = {}
    services_raw: Mapping[str, Any] = {}
    runtime: dict[str, Any] = {}
    http: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in _SECTIONS:
            raw_defaults[key] = _section(path, value)
        elif key == "services":
            if not isinstance(value, Mapping):
                raise ConfigError(path, "must be a mapping of service names to sections")
            services_raw = value
        elif key == "runtime":
            runtime = _runtime(path, value)
        elif key == "http":
            http = _http(path, value)
        else:
            known = sorted([*_SECTIONS, "services", "runtime", "http"])
            raise ConfigError(path, f"unknown section; known: {', '.join(known)}")
    _check_one_name_per_stage(prefix.rstrip("."), raw_defaults)
    defaults = _service(prefix.rstrip("."), raw_defaults, {})
    services: dict[str, ServiceConfig] = {}
    for name, sections in services_raw.items():
        path = f"{prefix}services.{name}"
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(path, "a service name must be a non-empty string without '/'")
        if not isinstance(sections, Mapping):
            raise ConfigError(path, "must be a mapping of sections")
        overrides: dict[str, Mapping[str, Any]] = {}
        for key, value in sections.items():
            if key not in _SECTIONS:
                raise ConfigError(
                    f"{path}.{key}", f"unknown section; known: {', '.join(sorted(_SECTIONS))}"
                )
            overrides[key] = _section(f"{path}.{key}", value)
        _check_one_name_per_stage(path, overrides)
        services[name] = _service(path, raw_defaults, overrides)
    return ReliabilityConfig(defaults=defaults, services=services, runtime=runtime, http=http)


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as handle:
                return tomllib.load(handle)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # noqa: PLC0415 (an optional extra)
            except ImportError:
                raise ConfigError(
                    str(path), "YAML needs PyYAML: pip install 'garrison[yaml]'"
                ) from None
            with path.open("rb") as handle:
                return yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(str(path), f"cannot read the file: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"not valid TOML: {error}") from None
    except Exception as error:  # yaml.YAMLError and friends
        if type(error).__module__.startswith("yaml"):
            raise ConfigError(str(path), f"not valid YAML: {error}") from None
        raise
    raise ConfigError(str(path), "unknown file type: use .toml, .yaml or .yml")


def _check_one_name_per_stage(path: str, sections: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for section in sections:
        stage = _SECTIONS[section][0]
        if stage in seen:
            where = f"{path}.{section}" if path else section
            raise ConfigError(where, f"the same stage as {seen[stage]!r}: give it once")
        seen[stage] = section


def _section(path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping of settings, got {value!r}")
    return value


def _runtime(path: str, value: object) -> dict[str, Any]:
    section = _section(path, value)
    for key, setting in section.items():
        where = f"{path}.{key}"
        if key not in _RUNTIME_KEYS:
            raise ConfigError(where, f"unknown setting; known: {', '.join(_RUNTIME_KEYS)}")
        if key == "name" and (not isinstance(setting, str) or not setting or "/" in setting):
            raise ConfigError(where, f"must be a non-empty string without '/', got {setting!r}")
        if key == "max_restarts" and (
            isinstance(setting, bool) or not isinstance(setting, int) or setting < 0
        ):
            raise ConfigError(where, f"must be an integer >= 0, got {setting!r}")
        if key == "within_seconds" and (
            isinstance(setting, bool) or not isinstance(setting, int | float) or not setting > 0
        ):
            raise ConfigError(where, f"must be a number > 0, got {setting!r}")
    try:
        if "backend" in section:
            backend_config(section["backend"], section.get("on_backend_error"))
        elif "on_backend_error" in section:
            backend_config("redis://localhost", section["on_backend_error"])
    except ConfigError as error:
        if error.key in ("backend", "on_backend_error"):
            raise error.under(path) from None
        raise error.under(f"{path}.backend") from None
    return dict(section)


def _http(path: str, value: object) -> dict[str, Mapping[str, Any]]:
    """``http.<name>`` sections, validated as the HTTP client would (needs the http extra)."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, "must be a mapping of client names to options")
    try:
        from garrison.http import HttpClientConfig  # noqa: PLC0415 (httpx is optional)
    except ImportError:
        raise ConfigError(
            path, "HTTP clients need the http extra: pip install 'garrison[http]'"
        ) from None
    clients: dict[str, Mapping[str, Any]] = {}
    for name, options in value.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(where, "a client name must be a non-empty string without '/'")
        section = _section(where, options)
        try:
            HttpClientConfig.from_seed(section)
        except ConfigError as error:
            raise error.under(where) from None
        clients[name] = dict(section)
    return clients


def _canonical(stage: str, section: Mapping[str, Any]) -> dict[str, Any]:
    aliases = _KEY_ALIASES.get(stage, {})
    canonical: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in section.items():
        name = aliases.get(key, key)
        if name in canonical:
            raise ConfigError(key, f"{name!r} given twice (also as {given_as[name]!r})")
        canonical[name] = value
        given_as[name] = key
    return canonical


def _service(
    path: str, defaults: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> ServiceConfig:
    stages: dict[str, Any] = {}
    by_stage: dict[str, str] = {}  # stage -> the section name to report errors under
    for section in defaults:
        by_stage[_SECTIONS[section][0]] = section
    for section in overrides:
        by_stage[_SECTIONS[section][0]] = section
    for stage, section in by_stage.items():
        build = _SECTIONS[section][1]
        where = f"{path}.{section}" if path else section
        try:
            merged = {
                **_canonical(stage, _same_stage(defaults, stage)),
                **_canonical(stage, _same_stage(overrides, stage)),
            }
            stages[stage] = build(merged)
        except ConfigError as error:
            raise error.under(where) from None
        except TypeError as error:
            raise ConfigError(where, str(error)) from None
    return ServiceConfig(**stages)


def _same_stage(sections: Mapping[str, Mapping[str, Any]], stage: str) -> Mapping[str, Any]:
    """The defaults section that configures ``stage`` (under either of its names)."""
    for section, values in sections.items():
        if _SECTIONS[section][0] == stage:
            return values
    return {}
