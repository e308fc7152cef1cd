"""Fuzz: hypothesis over configuration dicts and message values.

- Configuration dicts (the seed's sections, ``services.<name>.<section>``, ``runtime``)
  with known and unknown keys and values of every type: ``load_config`` /
  ``Runtime.from_config`` either accept them or raise ``ConfigError`` whose key is the
  dotted path of something the dict really contains; an accepted configuration builds a
  runtime whose pipelines start and answer ``status()`` without a crashed actor.
- Message values: ``Execute`` fields and ``options(...)`` with values of every type either
  fail at construction with ``TypeError`` / ``ValueError`` naming the field, or the
  operation gets exactly one outcome through a pipeline of every stage, within a bounded
  wait. Junk messages sent to stage actors get a ``TypeError`` reply.

In every case no actor crashes (no ``garrison.actor.crashed`` event) and the supervision
tree has no restart at the end.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _helpers.chaos import counted_logs, outcome
from garrison import ConfigError, Execute, Runtime
from garrison.actors.bulkhead import BulkheadConfig
from garrison.config import load_config
from garrison.errors import GarrisonError
from garrison.pipeline import Pipeline
from garrison.policies.backoff import RetryConfig
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig
from garrison.testing import ManualClock

pytestmark = pytest.mark.reliability

WAIT = 5.0
SECTIONS: dict[str, type[Any]] = {
    "rate_limiting": RateLimitConfig,
    "rate_limit": RateLimitConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "retry": RetryConfig,
    "timeout": TimeoutConfig,
    "bulkhead": BulkheadConfig,
}
SETTINGS = {name for kind in SECTIONS.values() for name in kind.__dataclass_fields__}
SEED_ALIASES = ["strategy", "rate_limit_per_second", "rate_limit_per_minute"]
WORDS = [
    "sliding_log",
    "gcra",
    "sliding_window",
    "wait",
    "reject",
    "fixed",
    "exponential",
    "linear",
    "adaptive",
    "count",
    "time",
    "1s",
    "100ms",
    "1m",
    "high",
    "",
    "ConnectionError",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2_000),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.001, 100.0),
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["1s", "1m", "10ms", "x", ""]), scalars, max_size=3),
)


positive = st.integers(1, 1_000)
seconds = st.floats(0.001, 60.0)
# Valid values of the main settings (other settings draw from ``values``): each setting is
# valid three times in four, so that most configurations get past the first bad value.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "per_second": positive,
    "per_minute": positive,
    "limits": st.dictionaries(st.sampled_from(["1s", "100ms", "1m"]), positive, min_size=1),
    "algorithm": st.sampled_from(["sliding_log", "gcra", "sliding_window"]),
    "on_limit": st.sampled_from(["wait", "reject"]),
    "throttle_strategy": st.sampled_from(["fixed", "exponential", "adaptive"]),
    "queue_size": positive,
    "queue_timeout": seconds,
    "failure_threshold": positive,
    "recovery_timeout": seconds,
    "error_rate_threshold": st.floats(0.01, 1.0),
    "min_calls": positive,
    "window_size": positive,
    "max_attempts": st.integers(1, 10),
    "backoff_strategy": st.sampled_from(["exponential", "linear", "fixed"]),
    "base_delay": seconds,
    "max_delay": seconds,
    "jitter": st.booleans(),
    "base_timeout": seconds,
    "adaptive": st.booleans(),
    "max_workers": st.integers(1, 8),
    "max_queue": st.integers(0, 100),
}
REQUIRED: dict[type[Any], dict[str, st.SearchStrategy[Any]]] = {
    RateLimitConfig: {"per_second": VALID["per_second"]},
}


def three_in_four(
    valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, ``other`` the fourth (nested ``one_of`` would flatten
    into one uniform choice among all the branches)."""
    return st.integers(0, 3).flatmap(lambda draw: valid if draw else other)


def setting(name: str) -> st.SearchStrategy[Any]:
    valid = VALID.get(name)
    return values if valid is None else three_in_four(valid, values)


def section(kind: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(kind.__dataclass_fields__)
    optional = {name: setting(name) for name in names}
    if kind is RateLimitConfig:
        optional.update(dict.fromkeys(SEED_ALIASES, values))
    optional["typo_key"] = values
    required = REQUIRED.get(kind, {})
    for name in required:
        optional.pop(name)
    return st.fixed_dictionaries(required, optional=optional)


sections = st.fixed_dictionaries(
    {}, optional={name: section(kind) for name, kind in SECTIONS.items()}
)
configs = st.fixed_dictionaries(
    {},
    optional={
        **{name: three_in_four(section(kind), values) for name, kind in SECTIONS.items()},
        "services": st.dictionaries(
            st.sampled_from(["db", "api", "api", "a/b", ""]),
            three_in_four(sections, scalars),
            max_size=2,
        ),
        "runtime": st.dictionaries(
            st.sampled_from(["name", "max_restarts", "within_seconds", "clock"]),
            values,
            max_size=2,
        ),
    },
)


def keys_of(data: object) -> set[str]:
    """Every key (as a string) anywhere in a nested dict."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for key, value in data.items():
            found.add(str(key))
            found |= keys_of(value)
    return found


def check_config_error(error: ConfigError, data: Mapping[str, Any]) -> None:
    """The error's key is a dotted path into ``data``; its last part may name a setting
    that is missing (``rate_limiting.limits``) or the canonical name of a seed alias."""
    assert error.key, error
    parts = error.key.split(".")
    assert parts[0] in data, (error.key, list(data))
    if "/" in error.key or "" in parts:
        return  # a service named "a/b" or "": its name is the path, as odd as it is
    given = keys_of(data)
    assert all(part in given for part in parts[:-1]), (error.key, sorted(given))
    assert parts[-1] in given | SETTINGS, (error.key, sorted(given))


@pytest.mark.timeout(600)
def test_configuration_dicts_are_accepted_or_rejected_with_a_path(
    profile: Any, figures: Any
) -> None:
    accepted = 0
    examples = 0
    rejected: Counter[str] = Counter()
    with counted_logs() as events:

        @settings(
            max_examples=profile.fuzz_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(data=configs)
        def check(data: dict[str, Any]) -> None:
            nonlocal accepted, examples
            examples += 1
            try:
                load_config(data)
            except ConfigError as error:
                check_config_error(error, data)
                rejected[error.key.rsplit(".", 1)[-1]] += 1
                return
            try:
                rt = Runtime.from_config(data, clock=ManualClock())
            except ConfigError as error:
                check_config_error(error, data)
                return
            accepted += 1
            with rt:
                assert rt.config is not None
                for name in [*rt.config.services, "default-service"]:
                    api = rt.pipeline(name)
                    status = api.status(WAIT)
                    assert set(status) <= {
                        "fallback",
                        "retry",
                        "circuit_breaker",
                        "rate_limiter",
                        "timeout",
                        "bulkhead",
                    }
                tree = rt.tree()
                assert tree["restarts"] == 0, tree
                assert all(child["restarts"] == 0 for child in tree["children"]), tree

        check()
    assert events["garrison.actor.crashed"] == 0, events
    figures.update(
        examples=examples, accepted=accepted, rejected_by_key=dict(rejected.most_common(10))
    )
    assert accepted > 0, "no generated configuration was valid: the strategy proves little"


# -- message values ----------------------------------------------------------------------------


def double(x: Any = 1) -> Any:
    return x * 2


async def double_async(x: Any = 1) -> Any:
    return x * 2


anything = st.one_of(
    scalars,
    st.tuples(scalars, scalars),
    st.lists(scalars, max_size=2),
    st.frozensets(st.integers(), max_size=2),
    st.builds(object),
    st.sampled_from([Exception("x"), math.pi, b"bytes", bytearray(b"x")]),
)
functions = st.sampled_from([double, double_async])


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, anything else the fourth."""
    return three_in_four(valid, anything)


execute_fields = st.fixed_dictionaries(
    {"fn": mostly(functions)},
    optional={
        "args": mostly(st.tuples(scalars) | st.lists(scalars, max_size=2)),
        "kwargs": mostly(st.dictionaries(st.sampled_from(["x", "y"]), scalars, max_size=2))
        | st.dictionaries(st.integers(), scalars, max_size=1),
        "key": mostly(st.none() | st.text(max_size=5) | st.integers() | st.tuples(st.integers()))
        | st.lists(st.integers(), max_size=2),
        "priority": mostly(st.sampled_from(["high", "normal", "low", "HIGH", " low ", 0, 1, 2, 7])),
        "timeout": mostly(st.floats(0.05, 5.0)),
        "name": mostly(st.text(max_size=10)),
        "cost": mostly(st.integers(-2, 3)),
    },
)
option_fields = st.fixed_dictionaries(
    {},
    optional={
        "key": anything,
        "priority": mostly(st.sampled_from(["high", "low", 2])),
        "timeout": mostly(st.floats(0.05, 5.0)),
        "name": mostly(st.text(max_size=10)),
        "cost": mostly(st.integers(-2, 3)),
    },
)
FIELD_NAMES = ("fn", "args", "kwargs", "key", "priority", "timeout", "name", "cost")


def build(rt: Runtime) -> Pipeline:
    return rt.pipeline(
        "fuzz",
        rate_limit=RateLimitConfig(limits={"1s": 1_000_000}, on_limit="reject"),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1_000_000),
        retry=RetryConfig(max_attempts=2, base_delay=0.001, max_delay=0.001),
        timeout=TimeoutConfig(base_timeout=2.0, adaptive=False),
        bulkhead=BulkheadConfig(max_workers=4, max_queue=100),
        fallback=lambda error, message: ("fallback", type(error).__name__),
    )


def check_construction_error(error: BaseException) -> None:
    """A TypeError / ValueError that names the Execute field it is about."""
    assert isinstance(error, TypeError | ValueError), repr(error)
    text = str(error)
    assert any(field in text for field in FIELD_NAMES), text


def check_outcome(future: Any) -> str:
    """The operation got an outcome (within a bounded wait); say which kind."""
    kind, result = outcome(future, WAIT)
    assert kind != "hung", "an operation got no outcome"
    # With a fallback, every failure of the operation comes back as the fallback's value.
    if kind == "error":
        assert isinstance(result, GarrisonError), repr(result)
        return type(result).__name__
    if isinstance(result, tuple) and result and result[0] == "fallback":
        return f"fallback after {result[1]}"
    return "value"


@pytest.mark.timeout(600)
def test_message_values_give_a_typed_error_or_one_outcome(profile: Any, figures: Any) -> None:
    tally: Counter[str] = Counter()
    with counted_logs() as events, Runtime(name="fuzz") as rt:
        api = build(rt)

        @settings(
            max_examples=profile.fuzz_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(fields=execute_fields, options=option_fields, junk=anything)
        def check(fields: dict[str, Any], options: dict[str, Any], junk: Any) -> None:
            try:
                message = Execute(**fields)
            except (TypeError, ValueError) as error:
                check_construction_error(error)
                tally[f"Execute: {type(error).__name__}"] += 1
            else:
                tally[f"Execute: {check_outcome(api.ref.ask_future(message))}"] += 1
            fn = fields["fn"] if callable(fields["fn"]) else double
            try:
                view = api.options(**options)
                future = view.submit(fn)
            except (TypeError, ValueError) as error:
                check_construction_error(error)
                tally[f"options: {type(error).__name__}"] += 1
            else:
                tally[f"options: {check_outcome(future)}"] += 1
            for stage, ref in api.stages.items():
                kind, result = outcome(ref.ask_future(junk), WAIT)
                assert kind == "error", (stage, kind, result)
                assert isinstance(result, TypeError), (stage, repr(result))

        check()
        tree = api.supervisor.tree()
        assert all(c["restarts"] == 0 for c in tree["children"]), tree
    assert events["garrison.actor.crashed"] == 0, events
    figures.update(outcomes=dict(tally.most_common()))
