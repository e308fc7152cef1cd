"""Runtime.from_config: the seed's reliability_config as a dict, TOML or YAML; overrides; errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from garrison import (
    BulkheadConfig,
    CircuitBreakerConfig,
    CircuitOpen,
    ConfigError,
    RateLimitConfig,
    RetryConfig,
    Runtime,
    TimeoutConfig,
)
from garrison.config import ServiceConfig
from garrison.testing import ManualClock

# The seed's "Best Practices" section, exactly.
reliability_config = {
    "rate_limiting": {
        "per_second": 10,
        "per_minute": 100,
        "per_hour": 1000,
        "strategy": "adaptive",
    },
    "circuit_breaker": {
        "failure_threshold": 5,
        "recovery_timeout": 30,
        "error_rate_threshold": 0.5,
    },
    "retry": {
        "max_attempts": 3,
        "backoff_strategy": "exponential",
        "base_delay": 1.0,
        "max_delay": 10.0,
        "jitter": True,
    },
    "timeout": {
        "base_timeout": 30.0,
        "adaptive": True,
        "max_timeout": 120.0,
    },
}

SEED_DEFAULTS = ServiceConfig(
    rate_limit=RateLimitConfig(
        per_second=10, per_minute=100, per_hour=1000, throttle_strategy="adaptive"
    ),
    circuit_breaker=CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=30, error_rate_threshold=0.5
    ),
    retry=RetryConfig(
        max_attempts=3, backoff_strategy="exponential", base_delay=1.0, max_delay=10.0, jitter=True
    ),
    timeout=TimeoutConfig(base_timeout=30.0, adaptive=True, max_timeout=120.0),
)

SEED_TOML = """
[rate_limiting]
per_second = 10
per_minute = 100
per_hour = 1000
strategy = "adaptive"

[circuit_breaker]
failure_threshold = 5
recovery_timeout = 30
error_rate_threshold = 0.5

[retry]
max_attempts = 3
backoff_strategy = "exponential"
base_delay = 1.0
max_delay = 10.0
jitter = true

[timeout]
base_timeout = 30.0
adaptive = true
max_timeout = 120.0
"""

SEED_YAML = """
rate_limiting:
  per_second: 10
  per_minute: 100
  per_hour: 1000
  strategy: adaptive
circuit_breaker:
  failure_threshold: 5
  recovery_timeout: 30
  error_rate_threshold: 0.5
retry:
  max_attempts: 3
  backoff_strategy: exponential
  base_delay: 1.0
  max_delay: 10.0
  jitter: true
timeout:
  base_timeout: 30.0
  adaptive: true
  max_timeout: 120.0
"""


def wrapped_toml(text: str) -> str:
    """The same TOML with every table under ``reliability_config``."""
    return text.replace("[", "[reliability_config.")


def wrapped_yaml(text: str) -> str:
    """The same YAML nested under a ``reliability_config`` key."""
    lines = [f"  {line}" if line.strip() else line for line in text.splitlines()]
    return "reliability_config:\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check_seed_pipeline(rt: Runtime, name: str) -> None:
    """The pipeline built from the seed's defaults has its stages with the seed's settings."""
    api = rt.pipeline(name)
    status = api.status()
    assert list(status) == ["retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead"]
    limiter = status["rate_limiter"]
    assert limiter["limits"] == {"1s": 10, "1m": 100, "1h": 1000}
    assert limiter["throttle_strategy"] == "adaptive"
    breaker = status["circuit_breaker"]
    assert (breaker["failure_threshold"], breaker["recovery_timeout"]) == (5, 30.0)
    assert breaker["state"] == "closed"
    assert status["retry"]["config"] == {
        "backoff_strategy": "exponential",
        "base_delay": 1.0,
        "deadline": None,
        "jitter": "full",
        "max_attempts": 3,
        "max_delay": 10.0,
    }
    timeout = status["timeout"]
    assert (timeout["base_timeout"], timeout["max_timeout"], timeout["adaptive"]) == (
        30.0,
        120.0,
        True,
    )
    assert timeout["timeout"] == 30.0
    assert api.call(lambda: "ok") == "ok"


# -- the seed's layout --------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["top-level", "wrapped"])
def test_the_seeds_reliability_config_as_a_dict(wrapped):
    source: dict[str, Any] = copy.deepcopy(reliability_config)
    if wrapped:
        source = {"reliability_config": source}
    runtime = Runtime.from_config(source, clock=ManualClock())
    assert runtime.state == "new"
    assert runtime.config is not None
    assert runtime.config.defaults == SEED_DEFAULTS
    assert runtime.config.services == {}
    assert runtime.config.service("anything") == SEED_DEFAULTS
    with runtime as rt:
        check_seed_pipeline(rt, "external_api")
        check_seed_pipeline(rt, "database")
    assert source == ({"reliability_config": reliability_config} if wrapped else reliability_config)


@pytest.mark.parametrize("wrapped", [False, True], ids=["top-level", "wrapped"])
@pytest.mark.parametrize(
    ("filename", "text", "wrap"),
    [
        ("reliability.toml", SEED_TOML, wrapped_toml),
        ("reliability.yaml", SEED_YAML, wrapped_yaml),
        ("reliability.yml", SEED_YAML, wrapped_yaml),
    ],
    ids=["toml", "yaml", "yml"],
)
def test_the_seeds_reliability_config_as_a_file(tmp_path, filename, text, wrap, wrapped):
    path = write(tmp_path, filename, wrap(text) if wrapped else text)
    from_dict = Runtime.from_config(reliability_config)
    for source in (path, str(path)):
        runtime = Runtime.from_config(source, clock=ManualClock())
        assert runtime.config == from_dict.config
        assert runtime.config is not None
        assert runtime.config.defaults == SEED_DEFAULTS
    with runtime as rt:
        check_seed_pipeline(rt, "external_api")


def test_an_empty_configuration_builds_pipelines_of_just_a_pool(tmp_path):
    for source in ({}, write(tmp_path, "empty.toml", "")):
        with Runtime.from_config(source, clock=ManualClock()) as rt:
            assert rt.config is not None
            assert rt.config.defaults == ServiceConfig()
            api = rt.pipeline("anything")
            assert list(api.status()) == ["bulkhead"]
            assert api.call(lambda: 1) == 1


# -- services.<name>.<section> ------------------------------------------------------------------

SERVICES_TOML = (
    SEED_TOML
    + """
[services.database.circuit_breaker]
failure_threshold = 3      # database: the defaults, with these keys changed
recovery_timeout = 60

[services.database.rate_limiting]
per_second = 5

[services.database.bulkhead]
max_workers = 5
max_concurrent = 3

[services.cache.circuit_breaker]
failure_threshold = 10

[services.cache.retry]
max_attempts = 1

[runtime]
name = "my-service"
"""
)


def test_services_override_the_defaults_key_by_key(tmp_path):
    runtime = Runtime.from_config(write(tmp_path, "services.toml", SERVICES_TOML))
    config = runtime.config
    assert config is not None
    database = config.service("database")
    assert database.circuit_breaker == CircuitBreakerConfig(
        failure_threshold=3, recovery_timeout=60, error_rate_threshold=0.5
    )
    assert database.rate_limit == RateLimitConfig(
        per_second=5, per_minute=100, per_hour=1000, throttle_strategy="adaptive"
    )
    assert database.bulkhead == BulkheadConfig(max_workers=5, max_concurrent=3)
    assert (database.retry, database.timeout) == (SEED_DEFAULTS.retry, SEED_DEFAULTS.timeout)
    cache = config.service("cache")
    assert cache.circuit_breaker == CircuitBreakerConfig(
        failure_threshold=10, recovery_timeout=30, error_rate_threshold=0.5
    )
    assert cache.retry == RetryConfig(
        max_attempts=1, backoff_strategy="exponential", base_delay=1.0, max_delay=10.0
    )
    assert (cache.rate_limit, cache.bulkhead) == (SEED_DEFAULTS.rate_limit, None)
    assert config.service("external_api") == SEED_DEFAULTS
    assert sorted(config.services) == ["cache", "database"]


def test_rt_pipeline_builds_each_services_configured_stages(tmp_path):
    path = write(tmp_path, "services.toml", SERVICES_TOML)
    with Runtime.from_config(path, clock=ManualClock()) as rt:
        assert rt.name == "my-service"
        database = rt.pipeline("database")
        status = database.status()
        assert list(status) == [
            "retry",
            "circuit_breaker",
            "rate_limiter",
            "timeout",
            "bulkhead",
        ]
        assert status["circuit_breaker"]["failure_threshold"] == 3
        assert status["circuit_breaker"]["recovery_timeout"] == 60.0
        assert status["rate_limiter"]["limits"] == {"1s": 5, "1m": 100, "1h": 1000}
        assert (status["bulkhead"]["max_workers"], status["bulkhead"]["max_concurrent"]) == (5, 3)
        default = rt.pipeline("external_api").status()
        assert default["circuit_breaker"]["failure_threshold"] == 5
        assert default["rate_limiter"]["limits"] == {"1s": 10, "1m": 100, "1h": 1000}
        assert default["bulkhead"]["max_workers"] == 10  # the default pool: not configured
        # the database's breaker opens after 3 failures (ValueError is never retried)
        for _ in range(3):
            with pytest.raises(ValueError, match="db down"):
                database.call(_fail, ValueError("db down"))
        with pytest.raises(CircuitOpen):
            database.call(lambda: "never")
        handle = rt.breakers.get("database")
        assert handle is not None
        assert handle.get_status()["state"] == "open"
        assert rt.pipeline("database") is database


def test_a_fallback_is_added_to_the_configured_stages(tmp_path):
    path = write(tmp_path, "services.toml", SERVICES_TOML)
    with Runtime.from_config(path, clock=ManualClock()) as rt:
        cache = rt.pipeline("cache", fallback="miss")
        assert list(cache.status()) == [
            "fallback",
            "retry",
            "circuit_breaker",
            "rate_limiter",
            "timeout",
            "bulkhead",
        ]
        assert cache.call(_fail, ConnectionError("cache down")) == "miss"
        assert cache.status()["retry"]["attempts"] == 1  # max_attempts = 1 for the cache


def test_services_in_yaml_override_key_by_key(tmp_path):
    text = SEED_YAML + (
        "services:\n"
        "  database:\n"
        "    circuit_breaker:\n"
        "      failure_threshold: 3\n"
        "    timeout:\n"
        "      base_timeout: 5.0\n"
    )
    config = Runtime.from_config(write(tmp_path, "c.yaml", text)).config
    assert config is not None
    database = config.service("database")
    assert database.circuit_breaker is not None
    assert database.circuit_breaker.failure_threshold == 3
    assert database.circuit_breaker.recovery_timeout == 30.0
    assert database.timeout == TimeoutConfig(base_timeout=5.0, adaptive=True, max_timeout=120.0)


def _fail(error: BaseException) -> None:
    raise error


# -- aliases and the runtime section ------------------------------------------------------------


def test_the_seeds_strategy_is_an_alias_of_throttle_strategy():
    config = Runtime.from_config(
        {"rate_limiting": {"per_second": 1, "strategy": "exponential"}}
    ).config
    assert config is not None
    assert config.defaults.rate_limit == RateLimitConfig(
        per_second=1, throttle_strategy="exponential"
    )
    same = Runtime.from_config(
        {"rate_limit": {"per_second": 1, "throttle_strategy": "exponential"}}
    )
    assert same.config == config
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(
            {"rate_limiting": {"per_second": 1, "strategy": "fixed", "throttle_strategy": "fixed"}}
        )
    assert info.value.key == "rate_limiting.throttle_strategy"
    assert "given twice" in str(info.value)


def test_a_service_overrides_the_aliased_default_with_the_canonical_name():
    config = Runtime.from_config(
        {
            "rate_limiting": {"per_second": 10, "strategy": "adaptive"},
            "services": {"api": {"rate_limiting": {"throttle_strategy": "fixed"}}},
        }
    ).config
    assert config is not None
    rate_limit = config.service("api").rate_limit
    assert rate_limit == RateLimitConfig(per_second=10, throttle_strategy="fixed")


def test_the_runtime_section(tmp_path):
    source = {"runtime": {"name": "my-service", "max_restarts": 3, "within_seconds": 5.0}}
    runtime = Runtime.from_config(source)
    assert runtime.name == "my-service"
    assert runtime.config is not None
    assert runtime.config.runtime == source["runtime"]
    with runtime as rt:
        assert rt.tree()["name"] == "my-service"
    # keyword arguments win over the file's [runtime] settings
    clock = ManualClock()
    overridden = Runtime.from_config(source, name="other", clock=clock)
    assert (overridden.name, overridden.clock) == ("other", clock)
    path = write(tmp_path, "rt.toml", '[runtime]\nname = "from-toml"\nmax_restarts = 2\n')
    assert Runtime.from_config(path).name == "from-toml"
    with pytest.raises(ConfigError) as info:
        Runtime.from_config({"runtime": {"name": "x", "restarts": 3}})
    assert info.value.key == "runtime.restarts"


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"name": 5}, "runtime.name"),
        ({"max_restarts": -3}, "runtime.max_restarts"),
        ({"within_seconds": "soon"}, "runtime.within_seconds"),
    ],
)
def test_bad_runtime_settings_are_config_errors_with_their_path(settings, key):
    with pytest.raises(ConfigError) as info:
        Runtime.from_config({"runtime": settings})
    assert info.value.key == key


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "key", "problem"),
    [
        ({"rate_limits": {}}, "rate_limits", "unknown section"),
        ({"timeout": {"base_timout": 1.0}}, "timeout.base_timout", "unknown"),
        ({"rate_limiting": {"per_secnd": 1}}, "rate_limiting.per_secnd", "'per_second'"),
        (
            {"services": {"database": {"circuit_breaker": {"failure_treshold": 3}}}},
            "services.database.circuit_breaker.failure_treshold",
            "unknown key",
        ),
        (
            {"services": {"database": {"circuit_breaker": {"failure_threshold": 0}}}},
            "services.database.circuit_breaker.failure_threshold",
            "must be >= 1, got 0",
        ),
        (
            {"circuit_breaker": {"failure_threshold": "3"}},
            "circuit_breaker.failure_threshold",
            "must be an integer",
        ),
        (
            {"reliability_config": {"retry": {"max_attempts": 0}}},
            "reliability_config.retry.max_attempts",
            "must be >= 1",
        ),
        (
            {"reliability_config": {"retry": {}}, "services": {}},
            "services",
            "either reliability_config or top-level sections",
        ),
        (
            {"rate_limiting": {"per_second": 1}, "rate_limit": {"per_second": 2}},
            "rate_limit",
            "the same stage as 'rate_limiting'",
        ),
        (
            {"services": {"api": {"rate_limiting": {"per_second": 1}, "rate_limit": {}}}},
            "services.api.rate_limit",
            "the same stage as 'rate_limiting'",
        ),
        ({"services": {"db": {"retries": {}}}}, "services.db.retries", "unknown section"),
        ({"circuit_breaker": 5}, "circuit_breaker", "must be a mapping"),
        ({"services": ["db"]}, "services", "must be a mapping"),
        ({"services": {"db": None}}, "services.db", "must be a mapping"),
        ({"services": {"a/b": {}}}, "services.a/b", "service name"),
        ({"retry": {"jitter": "sometimes"}}, "retry.jitter", "must be true, false or one of"),
        (
            {"services": {"db": {"retry": {"budget": {"bogus": 1}}}}},
            "services.db.retry.budget.bogus",
            "unknown key",
        ),
        (
            {"services": {"db": {"rate_limit": {"limits": {"1x": 3}}}}},
            "services.db.rate_limit.limits.1x",
            "unknown window unit",
        ),
        (
            {"services": {"db": {"bulkhead": {"max_workers": 0}}}},
            "services.db.bulkhead.max_workers",
            "must be >= 1",
        ),
        (
            {"services": {"db": {"bulkhead": {"workers": 2}}}},
            "services.db.bulkhead.workers",
            "unknown setting",
        ),
        ({"runtime": {"clock": "manual"}}, "runtime.clock", "unknown setting"),
    ],
)
def test_every_error_is_a_config_error_with_the_full_key_path(source, key, problem):
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(source)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert problem in str(info.value)


def test_the_exact_message_of_a_bad_value():
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(
            {"services": {"database": {"circuit_breaker": {"failure_threshold": 0}}}}
        )
    assert str(info.value) == (
        "services.database.circuit_breaker.failure_threshold: must be >= 1, got 0"
    )
    assert info.value.key == "services.database.circuit_breaker.failure_threshold"


@pytest.mark.parametrize(
    ("filename", "text", "key"),
    [
        (
            "c.toml",
            "[services.database.circuit_breaker]\nfailure_threshold = 0\n",
            "services.database.circuit_breaker.failure_threshold",
        ),
        (
            "c.toml",
            "[services.database.circuit_breaker]\nfailure_treshold = 3\n",
            "services.database.circuit_breaker.failure_treshold",
        ),
        (
            "c.yaml",
            "services:\n  database:\n    circuit_breaker:\n      failure_threshold: 0\n",
            "services.database.circuit_breaker.failure_threshold",
        ),
        ("c.yaml", "rate_limiting:\n  per_second: 1\nrate_limit:\n  per_second: 2\n", "rate_limit"),
        (
            "c.toml",
            '[reliability_config.timeout]\nbase_timeout = "slow"\n',
            "reliability_config.timeout.base_timeout",
        ),
    ],
)
def test_files_report_the_same_key_paths(tmp_path, filename, text, key):
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(write(tmp_path, filename, text))
    assert info.value.key == key


def test_an_unreadable_file_is_a_config_error_with_its_path(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(missing)
    assert info.value.key == str(missing)
    assert "cannot read the file" in str(info.value)
    directory = tmp_path / "a-directory.yaml"
    directory.mkdir()
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(str(directory))
    assert info.value.key == str(directory)
    assert "cannot read the file" in str(info.value)


@pytest.mark.parametrize("filename", ["config.json", "config.ini", "config"])
def test_an_unknown_suffix_is_a_config_error(tmp_path, filename):
    path = write(tmp_path, filename, "{}")
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(path)
    assert info.value.key == str(path)
    assert "unknown file type" in str(info.value)


@pytest.mark.parametrize(
    ("filename", "text", "problem"),
    [
        ("bad.toml", "[circuit_breaker\nfailure_threshold = 5\n", "not valid TOML"),
        ("bad.toml", "failure_threshold = \n", "not valid TOML"),
        ("bad.yaml", "circuit_breaker:\n  failure_threshold: [5\n", "not valid YAML"),
        ("bad.yaml", "a: b: c\n", "not valid YAML"),
        # typed parsing: no object construction from tags (safe_load)
        ("evil.yaml", "retry: !!python/object/apply:os.getcwd []\n", "not valid YAML"),
    ],
)
def test_invalid_toml_or_yaml_is_a_config_error_with_the_path(tmp_path, filename, text, problem):
    path = write(tmp_path, filename, text)
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(path)
    assert info.value.key == str(path)
    assert problem in str(info.value)


def test_a_file_that_is_not_a_mapping_of_sections(tmp_path):
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(write(tmp_path, "list.yaml", "- rate_limiting\n- retry\n"))
    assert info.value.key == "config"
    assert "must be a mapping of sections" in str(info.value)


def test_stage_arguments_replace_only_their_configured_stage():
    config = {
        "circuit_breaker": {"failure_threshold": 7},
        "retry": {"max_attempts": 2},
    }
    with Runtime.from_config(config) as rt:
        api = rt.pipeline("api", retry=RetryConfig(max_attempts=5))
        status = api.status()
    assert set(status) == {"retry", "circuit_breaker", "bulkhead"}
    assert status["retry"]["config"]["max_attempts"] == 5
