"""The typed errors: hierarchy, fields, messages a person can act on, pickling."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st

import garrison
from garrison import errors
from garrison.errors import (
    ActorUnavailable,
    AskTimeout,
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    GarrisonError,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Rejected,
    RetriesExhausted,
)

REJECTIONS = {RateLimited, QueueFull, QueueTimeout, CircuitOpen, BulkheadFull}
NOT_REJECTIONS = {ConfigError, ActorUnavailable, AskTimeout, OperationTimeout, RetriesExhausted}


# -- hierarchy ------------------------------------------------------------------------------


def test_every_error_in_the_module_derives_from_garrison_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, GarrisonError), name
        assert issubclass(cls, Exception), name


def test_the_documented_errors_are_exported_by_the_package():
    for cls in {GarrisonError, Rejected} | REJECTIONS | NOT_REJECTIONS:
        assert cls.__name__ in errors.__all__
        assert getattr(garrison, cls.__name__) is cls


@pytest.mark.parametrize("cls", sorted(REJECTIONS, key=lambda c: c.__name__))
def test_rejections_subclass_rejected(cls: type[Exception]):
    assert issubclass(cls, Rejected)
    assert issubclass(cls, GarrisonError)
    assert not issubclass(cls, TimeoutError)


@pytest.mark.parametrize("cls", sorted(NOT_REJECTIONS, key=lambda c: c.__name__))
def test_other_errors_are_not_rejections(cls: type[Exception]):
    assert not issubclass(cls, Rejected)


def test_timeouts_are_timeout_errors():
    assert issubclass(OperationTimeout, TimeoutError)
    assert issubclass(AskTimeout, TimeoutError)
    with pytest.raises(TimeoutError):
        raise AskTimeout(1.0)
    with pytest.raises(TimeoutError):
        raise OperationTimeout(1.0)
    assert not issubclass(QueueTimeout, TimeoutError)  # a rejection, not a timeout


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError, match=r"^retry\.max_attempts: must be >= 1, got 0$"):
        raise ConfigError("retry.max_attempts", "must be >= 1, got 0")


def test_actor_unavailable_is_a_pykka_actor_dead_error():
    assert issubclass(ActorUnavailable, pykka.ActorDeadError)
    with pytest.raises(pykka.ActorDeadError):
        raise ActorUnavailable("limiter", "the actor has stopped")


# -- fields and messages --------------------------------------------------------------------


def test_config_error_fields_and_message():
    err = ConfigError("services.database.circuit_breaker.failure_threshold", "must be >= 1, got 0")
    assert err.key == "services.database.circuit_breaker.failure_threshold"
    assert err.problem == "must be >= 1, got 0"
    assert str(err) == "services.database.circuit_breaker.failure_threshold: must be >= 1, got 0"


def test_config_error_under_prepends_prefixes():
    inner = ConfigError("failure_threshold", "must be >= 1, got 0")
    outer = inner.under("circuit_breaker").under("services.database")
    assert type(outer) is ConfigError
    assert outer.key == "services.database.circuit_breaker.failure_threshold"
    assert outer.problem == "must be >= 1, got 0"
    assert str(outer) == "services.database.circuit_breaker.failure_threshold: must be >= 1, got 0"
    # the original is untouched: under() returns a new error
    assert inner.key == "failure_threshold"
    assert str(inner) == "failure_threshold: must be >= 1, got 0"


def test_config_error_under_empty_prefix_keeps_key():
    err = ConfigError("retry.base_delay", "must be > 0, got -1")
    same = err.under("")
    assert same is not err
    assert same.key == "retry.base_delay"
    assert str(same) == str(err)


def test_actor_unavailable_fields_and_message():
    err = ActorUnavailable("limiter", "the actor has stopped")
    assert (err.actor, err.reason) == ("limiter", "the actor has stopped")
    assert str(err) == "actor 'limiter' is unavailable: the actor has stopped"


def test_ask_timeout_fields_and_message():
    err = AskTimeout(2)
    assert err.timeout == 2
    assert str(err) == "no reply within 2.000s"
    assert str(AskTimeout(0.25)) == "no reply within 0.250s"


def test_rate_limited_fields_and_message():
    err = RateLimited(0.5, key="client-7", limit="1s")
    assert (err.retry_after, err.key, err.limit) == (0.5, "client-7", "1s")
    assert str(err) == "rate limit reached for key 'client-7' (1s); retry after 0.500s"
    bare = RateLimited(1)
    assert (bare.retry_after, bare.key, bare.limit) == (1.0, None, "")
    assert isinstance(bare.retry_after, float)
    assert str(bare) == "rate limit reached; retry after 1.000s"


def test_retry_after_is_never_negative():
    assert RateLimited(-3.0).retry_after == 0.0
    assert "retry after 0.000s" in str(RateLimited(-3.0))
    assert CircuitOpen("db", -1.0).retry_after == 0.0


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_rate_limited_retry_after_is_clamped_and_shown(retry_after: float):
    err = RateLimited(retry_after)
    assert err.retry_after == max(0.0, retry_after)
    assert str(err).endswith(f"retry after {max(0.0, retry_after):.3f}s")
    assert pickle.loads(pickle.dumps(err)).retry_after == err.retry_after


def test_queue_full_fields_and_message():
    err = QueueFull(10)
    assert (err.capacity, err.queue) == (10, "queue")
    assert str(err) == "queue is full (10 waiting); try again later"
    named = QueueFull(3, queue="rate limiter queue")
    assert str(named) == "rate limiter queue is full (3 waiting); try again later"


def test_queue_timeout_fields_and_message():
    err = QueueTimeout(1.5, queue="bulkhead queue")
    assert (err.waited, err.queue) == (1.5, "bulkhead queue")
    assert str(err) == "waited 1.500s in the bulkhead queue without being admitted"
    assert str(QueueTimeout(2)) == "waited 2.000s in the queue without being admitted"


def test_circuit_open_fields_and_message():
    err = CircuitOpen("database", 12.5)
    assert (err.service, err.retry_after, err.state) == ("database", 12.5, "open")
    assert "Circuit breaker is OPEN" in str(err)
    assert str(err) == (
        "Circuit breaker is OPEN for service 'database' (open); retry after 12.500s"
    )
    forced = CircuitOpen("payments", 0, state="forced_open")
    assert forced.state == "forced_open"
    assert "Circuit breaker is OPEN" in str(forced)
    assert "(forced_open)" in str(forced)


def test_bulkhead_full_fields_and_message():
    err = BulkheadFull("pool", 5, 10)
    assert (err.name, err.max_concurrent, err.max_queue) == ("pool", 5, 10)
    assert str(err) == "bulkhead 'pool' is full: 5 running and 10 waiting"


def test_operation_timeout_fields_and_message():
    err = OperationTimeout(2.0, operation="fetch_user")
    assert (err.timeout, err.operation) == (2.0, "fetch_user")
    assert str(err) == "fetch_user did not finish within 2.000s"
    assert str(OperationTimeout(0.25)) == "operation did not finish within 0.250s"


def test_retries_exhausted_fields_message_and_cause():
    last = ValueError("boom")
    err = RetriesExhausted(3, last)
    assert err.attempts == 3
    assert err.last_error is last
    assert err.__cause__ is last
    assert str(err) == "gave up after 3 attempts: ValueError: boom"


def test_retries_exhausted_singular_and_without_error():
    err = RetriesExhausted(1, None)
    assert err.last_error is None
    assert err.__cause__ is None
    assert str(err) == "gave up after 1 attempt"


def test_retries_exhausted_cause_shows_in_chained_raise():
    last = ConnectionError("refused")
    with pytest.raises(RetriesExhausted) as info:
        raise RetriesExhausted(2, last)
    assert info.value.__cause__ is last


# -- pickling -------------------------------------------------------------------------------

Factory = Callable[[], GarrisonError]

PICKLE_CASES: list[Any] = [
    pytest.param(
        lambda: ConfigError("a.b", "must be > 0"),
        {"key": "a.b", "problem": "must be > 0"},
        id="config",
    ),
    pytest.param(
        lambda: ActorUnavailable("w1", "its restart buffer is full"),
        {"actor": "w1", "reason": "its restart buffer is full"},
        id="actor_unavailable",
    ),
    pytest.param(lambda: AskTimeout(1.5), {"timeout": 1.5}, id="ask_timeout"),
    pytest.param(
        lambda: RateLimited(2.5, key="client-7", limit="1m"),
        {"retry_after": 2.5, "key": "client-7", "limit": "1m"},
        id="rate_limited",
    ),
    pytest.param(
        lambda: QueueFull(7, queue="limiter queue"),
        {"capacity": 7, "queue": "limiter queue"},
        id="queue_full",
    ),
    pytest.param(
        lambda: QueueTimeout(3.25, queue="bulkhead queue"),
        {"waited": 3.25, "queue": "bulkhead queue"},
        id="queue_timeout",
    ),
    pytest.param(
        lambda: CircuitOpen("db", 30.0, state="half_open"),
        {"service": "db", "retry_after": 30.0, "state": "half_open"},
        id="circuit_open",
    ),
    pytest.param(
        lambda: BulkheadFull("pool", 4, 8),
        {"name": "pool", "max_concurrent": 4, "max_queue": 8},
        id="bulkhead_full",
    ),
    pytest.param(
        lambda: OperationTimeout(0.5, operation="fetch"),
        {"timeout": 0.5, "operation": "fetch"},
        id="operation_timeout",
    ),
    pytest.param(
        lambda: RetriesExhausted(4, None), {"attempts": 4, "last_error": None}, id="retries_none"
    ),
    pytest.param(lambda: GarrisonError("plain"), {"args": ("plain",)}, id="garrison_error"),
    pytest.param(lambda: Rejected("refused"), {"args": ("refused",)}, id="rejected"),
]


@pytest.mark.parametrize(("make", "fields"), PICKLE_CASES)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_errors_pickle_with_their_fields(make: Factory, fields: dict[str, Any], protocol: int):
    original = make()
    restored = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(restored) is type(original)
    assert str(restored) == str(original)
    for name, value in fields.items():
        assert getattr(original, name) == value, name
        assert getattr(restored, name) == value, name


@pytest.mark.parametrize(("make", "fields"), PICKLE_CASES)
def test_errors_copy_with_their_fields(make: Factory, fields: dict[str, Any]):
    original = make()
    for clone in (copy.copy(original), copy.deepcopy(original)):
        assert type(clone) is type(original)
        assert str(clone) == str(original)
        for name, value in fields.items():
            assert getattr(clone, name) == value, name


def test_retries_exhausted_pickles_with_its_last_error_and_cause():
    original = RetriesExhausted(3, KeyError("user-42"))
    restored = pickle.loads(pickle.dumps(original))
    assert restored.attempts == 3
    assert type(restored.last_error) is KeyError
    assert restored.last_error.args == ("user-42",)
    assert restored.__cause__ is restored.last_error
    assert str(restored) == str(original) == "gave up after 3 attempts: KeyError: 'user-42'"


def test_nested_garrison_error_pickles_inside_retries_exhausted():
    original = RetriesExhausted(2, CircuitOpen("db", 5.0))
    restored = pickle.loads(pickle.dumps(original))
    assert isinstance(restored.last_error, CircuitOpen)
    assert (restored.last_error.service, restored.last_error.retry_after) == ("db", 5.0)
    assert restored.__cause__ is restored.last_error
