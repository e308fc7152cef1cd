"""Tests of the pure retry policy (garrison.policies.backoff)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.errors import (
    ActorUnavailable,
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    OperationTimeout,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Rejected,
)
from garrison.policies.backoff import (
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryDecision,
    RetryPolicy,
    backoff_delay,
    delay_for,
    exception_matches,
    parse_retry_after,
)


class HTTPError(Exception):
    """Stands in for requests/httpx HTTPError (matched by name)."""


class ServerError(HTTPError):
    """A subclass, to check matching through the MRO."""


class AppError(Exception):
    """A user-defined error matched by dotted path."""


def _fake_httpx_error() -> type[Exception]:
    transport = type("TransportError", (Exception,), {"__module__": "httpx"})
    return type("ConnectTimeout", (transport,), {"__module__": "httpx"})


def schedule(attempts: int, **kwargs: object) -> list[float]:
    config = RetryConfig(jitter=False, **kwargs)  # type: ignore[arg-type]
    rng = random.Random(0)
    return [delay_for(attempt, config, rng) for attempt in range(1, attempts + 1)]


def policy(seed: int = 0, **kwargs: object) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**kwargs), random.Random(seed))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def test_exponential_schedule() -> None:
    assert schedule(8, base_delay=1.0, max_delay=60.0) == [1, 2, 4, 8, 16, 32, 60, 60]
    assert schedule(4, base_delay=0.5, max_delay=10.0, multiplier=3.0) == [0.5, 1.5, 4.5, 10]


def test_linear_schedule() -> None:
    assert schedule(5, backoff_strategy="linear", base_delay=2.0, max_delay=7.0) == [2, 4, 6, 7, 7]


def test_fixed_schedule() -> None:
    assert schedule(3, backoff_strategy="fixed", base_delay=3.0) == [3, 3, 3]


def test_seed_defaults_schedule() -> None:
    # the seed's retry section: exponential, base 1, max 10
    assert schedule(6, base_delay=1.0, max_delay=10.0) == [1, 2, 4, 8, 10, 10]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    config = RetryConfig(jitter=False, max_delay=30.0)
    assert backoff_delay(10_000, config) == 30.0
    assert delay_for(10**9, config, random.Random(0)) == 30.0


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, RetryConfig())
    with pytest.raises(ValueError, match="attempt"):
        delay_for(0, RetryConfig(jitter="decorrelated"), random.Random(0))


def test_jitter_is_deterministic_with_a_seeded_rng() -> None:
    config = RetryConfig(jitter=True)
    first = [delay_for(a, config, random.Random(7)) for a in range(1, 6)]
    second = [delay_for(a, config, random.Random(7)) for a in range(1, 6)]
    assert first == second


def test_decorrelated_first_delay_starts_from_base() -> None:
    config = RetryConfig(jitter="decorrelated", base_delay=1.0, max_delay=100.0)
    rng = random.Random(3)
    expected = random.Random(3).uniform(1.0, 3.0)
    assert delay_for(1, config, rng) == expected


configs = st.builds(
    RetryConfig,
    backoff_strategy=st.sampled_from(["exponential", "linear", "fixed"]),
    base_delay=st.floats(0.0, 10.0),
    max_delay=st.floats(10.0, 120.0),
    jitter=st.sampled_from([True, False, "full", "equal", "decorrelated", "none"]),
    multiplier=st.floats(1.0, 4.0),
)


@given(
    config=configs,
    attempt=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    previous=st.none() | st.floats(0.0, 200.0),
)
def test_jitter_bounds(
    config: RetryConfig, attempt: int, seed: int, previous: float | None
) -> None:
    delay = delay_for(attempt, config, random.Random(seed), previous)
    plain = backoff_delay(attempt, config)
    kind = config.jitter_kind
    assert 0.0 <= delay <= config.max_delay
    if kind == "none":
        assert delay == plain
    elif kind == "full":
        assert 0.0 <= delay <= plain
    elif kind == "equal":
        assert plain / 2 <= delay <= plain
    else:
        prev = config.base_delay if previous is None else previous
        upper = max(config.base_delay, 3 * prev)
        assert min(config.base_delay, config.max_delay) <= delay <= min(upper, config.max_delay)


@given(seed=st.integers(0, 2**32))
def test_decorrelated_sequence_stays_within_bounds(seed: int) -> None:
    config = RetryConfig(jitter="decorrelated", base_delay=0.5, max_delay=20.0, max_attempts=30)
    rng = random.Random(seed)
    previous: float | None = None
    for attempt in range(1, 30):
        delay = delay_for(attempt, config, rng, previous)
        low, high = 0.5, min(20.0, 3 * (0.5 if previous is None else previous))
        assert low <= delay <= max(low, high)
        previous = delay


# ---------------------------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------------------------


def test_retries_until_attempts_are_used_up() -> None:
    retry = policy(max_attempts=3, jitter=False, base_delay=1.0)
    error = ConnectionError("reset")
    assert retry.on_error(1, error, 0.0, 0.0) == RetryDecision(True, 1.0, "retry", 1.0)
    assert retry.on_error(2, error, 1.0, 0.0) == RetryDecision(True, 2.0, "retry", 2.0)
    assert retry.on_error(3, error, 3.0, 0.0) == RetryDecision(False, 0.0, "attempts_exhausted")


def test_single_attempt_never_retries() -> None:
    assert policy(max_attempts=1).on_error(1, TimeoutError(), 0.0, 0.0).reason == (
        "attempts_exhausted"
    )


def test_default_retry_exceptions() -> None:
    retry = policy()
    assert retry.is_retryable(ConnectionResetError())
    assert retry.is_retryable(TimeoutError())
    assert retry.is_retryable(OperationTimeout(2.0))
    assert retry.is_retryable(_fake_httpx_error()("connect timed out"))
    assert not retry.is_retryable(ValueError())
    assert not retry.is_retryable(FileNotFoundError())  # OSError as a whole is not retried
    assert not retry.is_retryable(ActorUnavailable("a", "stopped"))
    assert retry.on_error(1, KeyError("k"), 0.0, 0.0) == RetryDecision(False, 0.0, "not_retryable")


def test_string_exception_names() -> None:
    retry = policy(
        retry_exceptions=["ConnectionError", "TimeoutError", "HTTPError", f"{__name__}.AppError"]
    )
    assert retry.is_retryable(ConnectionAbortedError())
    assert retry.is_retryable(ServerError())  # HTTPError found in the MRO
    assert retry.is_retryable(AppError())
    assert not retry.is_retryable(OSError())
    assert exception_matches(OSError, ["builtins.OSError"])
    assert exception_matches(ConnectionError, ["OSError"])
    assert not exception_matches(OSError, ["ConnectionError"])
    assert exception_matches(ServerError, [HTTPError])


def test_empty_retry_exceptions_retries_no_error() -> None:
    retry = policy(retry_exceptions=())
    assert retry.on_error(1, ConnectionError(), 0.0, 0.0).reason == "not_retryable"


@pytest.mark.parametrize(
    "error",
    [
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        concurrent.futures.CancelledError(),
    ],
)
def test_cancellation_and_exit_are_never_retried(error: BaseException) -> None:
    retry = policy(retry_exceptions=(BaseException,), max_attempts=10)
    assert retry.on_error(1, error, 0.0, 0.0) == RetryDecision(False, 0.0, "fatal")
    assert not retry.is_retryable(error)


def test_circuit_open_waits_for_retry_after() -> None:
    retry = policy(jitter=False, base_delay=1.0, max_delay=60.0, retry_exceptions=())
    decision = retry.on_error(1, CircuitOpen("billing", 12.5), 100.0, 100.0)
    assert decision == RetryDecision(True, 12.5, "retry", 1.0)
    # backoff longer than retry_after wins
    later = retry.on_error(2, CircuitOpen("billing", 0.5), 101.0, 100.0)
    assert later.delay == 2.0


def test_circuit_open_beyond_deadline_is_given_up() -> None:
    retry = policy(jitter=False, base_delay=1.0, deadline=10.0)
    decision = retry.on_error(1, CircuitOpen("billing", 30.0), 0.0, 0.0)
    assert decision.retry is False
    assert decision.reason == "deadline"


def test_forced_open_breaker_is_not_retried() -> None:
    retry = policy()
    error = CircuitOpen("billing", math.inf, state="forced_open")
    assert retry.on_error(1, error, 0.0, 0.0).reason == "retry_after_too_long"


def test_retry_after_longer_than_max_delay_gives_up() -> None:
    retry = policy(max_delay=10.0)
    assert retry.on_error(1, RateLimited(3600.0), 0.0, 0.0).reason == "retry_after_too_long"


def test_rate_limited_honours_retry_after() -> None:
    retry = policy(jitter=False, base_delay=0.1)
    assert retry.on_error(1, RateLimited(2.0, key="c"), 0.0, 0.0).delay == 2.0


def test_retry_after_attribute_on_any_error() -> None:
    class Throttled(ConnectionError):
        retry_after = 7

    retry = policy(jitter=False, base_delay=1.0)
    assert retry.on_error(1, Throttled(), 0.0, 0.0).delay == 7.0


def test_explicit_retry_after_overrides_the_attribute() -> None:
    retry = policy(jitter=False, base_delay=1.0)
    decision = retry.on_error(1, ConnectionError(), 0.0, 0.0, retry_after=4.0)
    assert decision.delay == 4.0
    assert decision.backoff == 1.0


def test_non_numeric_retry_after_attribute_is_ignored() -> None:
    class Odd(ConnectionError):
        retry_after = "soon"

    assert policy(jitter=False, base_delay=1.0).on_error(1, Odd(), 0.0, 0.0).delay == 1.0


def test_overload_rejections_retry_with_backoff() -> None:
    retry = policy(jitter=False, base_delay=1.0, retry_exceptions=())
    assert retry.on_error(1, QueueFull(10), 0.0, 0.0) == RetryDecision(True, 1.0, "retry", 1.0)
    assert retry.on_error(2, BulkheadFull("pool", 4, 8), 0.0, 0.0).delay == 2.0


def test_other_rejections_are_not_retried() -> None:
    class Shed(Rejected):
        pass

    retry = policy(retry_exceptions=(Exception,))
    assert retry.on_error(1, QueueTimeout(5.0), 0.0, 0.0).reason == "rejected"
    assert retry.on_error(1, Shed(), 0.0, 0.0).reason == "rejected"


def test_deadline_is_never_overshot_example() -> None:
    retry = policy(jitter=False, base_delay=2.0, deadline=10.0, max_attempts=10)
    assert retry.on_error(1, TimeoutError(), 7.0, 0.0) == RetryDecision(True, 2.0, "retry", 2.0)
    # the next wait would be 4 s, ending at 13 > 10: give up now instead of sleeping past it
    decision = retry.on_error(2, TimeoutError(), 9.0, 0.0)
    assert (decision.retry, decision.reason) == (False, "deadline")
    assert retry.deadline_at(0.0) == 10.0
    assert policy().deadline_at(0.0) is None


@given(
    config=st.builds(
        RetryConfig,
        max_attempts=st.just(50),
        backoff_strategy=st.sampled_from(["exponential", "linear", "fixed"]),
        base_delay=st.floats(0.0, 5.0),
        max_delay=st.floats(5.0, 60.0),
        jitter=st.sampled_from([True, False, "equal", "decorrelated"]),
        deadline=st.floats(0.1, 100.0),
    ),
    attempt=st.integers(1, 49),
    started_at=st.floats(0.0, 1e6),
    elapsed=st.floats(0.0, 150.0),
    retry_after=st.none() | st.floats(0.0, 80.0),
    seed=st.integers(0, 2**32),
)
def test_deadline_never_overshot(
    config: RetryConfig,
    attempt: int,
    started_at: float,
    elapsed: float,
    retry_after: float | None,
    seed: int,
) -> None:
    retry = RetryPolicy(config, random.Random(seed))
    now = started_at + elapsed
    decision = retry.on_error(attempt, ConnectionError(), now, started_at, retry_after=retry_after)
    assert config.deadline is not None
    if decision.retry:
        assert now + decision.delay <= started_at + config.deadline
        if retry_after is not None:
            assert decision.delay >= retry_after
    else:
        assert decision.reason in ("deadline", "retry_after_too_long")


def test_retry_on_result() -> None:
    retry = policy(jitter=False, base_delay=1.0, retry_on_result=lambda result: result is None)
    assert retry.on_result(1, None, 0.0, 0.0) == RetryDecision(True, 1.0, "retry", 1.0)
    assert retry.on_result(1, {"ok": True}, 0.0, 0.0) == RetryDecision(False, 0.0, "success")
    assert retry.on_result(3, None, 0.0, 0.0).reason == "attempts_exhausted"
    assert policy().on_result(1, None, 0.0, 0.0).reason == "success"


def test_status_is_plain_data() -> None:
    status = policy(budget={"max_tokens": 4}).status()
    assert status["jitter"] == "full"
    assert status["budget"]["tokens"] == 4.0


# ---------------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------------


def test_budget_exhaustion_and_refill() -> None:
    budget = RetryBudget(RetryBudgetConfig(max_tokens=4, token_ratio=0.5))
    assert budget.tokens == 4.0
    assert budget.try_spend()  # 3 > 2
    assert not budget.try_spend()  # 2 is not above half
    assert not budget.retries_allowed
    budget.on_success()  # 2.5
    assert budget.retries_allowed
    assert budget.status() == {
        "tokens": 2.5,
        "max_tokens": 4.0,
        "token_ratio": 0.5,
        "threshold": 2.0,
        "retries_allowed": True,
    }
    for _ in range(10):
        budget.on_success()
    assert budget.tokens == 4.0  # capped
    for _ in range(10):
        budget.try_spend()
    assert budget.tokens == 0.0  # floored


def test_budget_counts_exactly_in_thousandths() -> None:
    budget = RetryBudget(RetryBudgetConfig(max_tokens=10, token_ratio=0.1))
    for _ in range(5):
        budget.try_spend()
    assert budget.tokens == 5.0
    assert not budget.retries_allowed
    budget.on_success()
    assert budget.tokens == 5.1
    assert budget.retries_allowed


def test_policy_draws_from_the_budget() -> None:
    retry = policy(
        jitter=False,
        max_attempts=100,
        budget=RetryBudgetConfig(max_tokens=4, token_ratio=1.0),
    )
    assert retry.budget is not None
    assert retry.on_error(1, ConnectionError(), 0.0, 0.0).retry
    assert retry.on_error(2, ConnectionError(), 0.0, 0.0) == RetryDecision(
        False, 0.0, "budget_exhausted"
    )
    # rejections never reached the service: they neither spend nor refill
    assert retry.on_error(2, QueueFull(1), 0.0, 0.0).retry
    assert retry.budget.tokens == 2.0
    retry.on_result(1, "fine", 0.0, 0.0)  # a success refunds token_ratio
    assert retry.budget.tokens == 3.0
    assert retry.on_error(1, ConnectionError(), 0.0, 0.0).reason == "budget_exhausted"
    retry.on_success()
    retry.on_success()
    assert retry.on_error(1, ConnectionError(), 0.0, 0.0).retry


def test_budget_can_be_shared_between_policies() -> None:
    shared = RetryBudget(RetryBudgetConfig(max_tokens=2))
    first = RetryPolicy(RetryConfig(), random.Random(0), budget=shared)
    second = RetryPolicy(RetryConfig(), random.Random(1), budget=shared)
    first.on_error(1, ConnectionError(), 0.0, 0.0)
    assert second.budget is shared
    assert second.on_error(1, ConnectionError(), 0.0, 0.0).reason == "budget_exhausted"


def test_no_budget_by_default() -> None:
    assert policy().budget is None
    assert policy().status()["budget"] is None


# ---------------------------------------------------------------------------------------------
# Retry-After parsing
# ---------------------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(b"3") == 3.0
    assert parse_retry_after(4) == 4.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after(True) is None
    assert parse_retry_after("nan") is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date) is None  # a date needs the caller's wall clock
    assert parse_retry_after(date, wall_now=1445412480.0 - 30) == 30.0
    assert parse_retry_after(date, wall_now=1445412480.0 + 30) == 0.0


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_normalisation() -> None:
    config = RetryConfig(base_delay=1, max_delay=10, retry_exceptions=["HTTPError"])  # type: ignore[arg-type]
    assert (config.max_attempts, config.backoff_strategy, config.jitter_kind) == (
        3,
        "exponential",
        "full",
    )
    assert isinstance(config.base_delay, float)
    assert config.retry_exceptions == ("HTTPError",)
    assert RetryConfig(jitter=False).jitter_kind == "none"
    assert RetryConfig(jitter="equal").jitter_kind == "equal"
    assert RetryConfig(budget={"max_tokens": 5}).budget == RetryBudgetConfig(max_tokens=5)


def test_from_dict() -> None:
    config = RetryConfig.from_dict(
        {
            "max_attempts": 3,
            "backoff_strategy": "exponential",
            "base_delay": 1.0,
            "max_delay": 10.0,
            "jitter": True,
            "retry_exceptions": ["ConnectionError", "TimeoutError", "HTTPError"],
            "budget": {"max_tokens": 20, "token_ratio": 0.2},
        }
    )
    assert config.budget == RetryBudgetConfig(max_tokens=20, token_ratio=0.2)
    with pytest.raises(ConfigError) as info:
        RetryConfig.from_dict({"max_attempt": 3})
    assert info.value.key == "max_attempt"
    with pytest.raises(ConfigError) as info:
        RetryConfig.from_dict({"budget": {"max_tokens": 0}})
    assert info.value.key == "budget.max_tokens"
    with pytest.raises(ConfigError) as info:
        RetryConfig.from_dict({"budget": {"tokens": 1}})
    assert info.value.key == "budget.tokens"
    with pytest.raises(ConfigError) as info:
        RetryBudgetConfig.from_dict({"ratio": 0.1})
    assert info.value.key == "ratio"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"backoff_strategy": "quadratic"}, "backoff_strategy"),
        ({"base_delay": -1}, "base_delay"),
        ({"base_delay": "1"}, "base_delay"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"max_delay": 0.5}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"jitter": "random"}, "jitter"),
        ({"jitter": 1}, "jitter"),
        ({"retry_exceptions": "ConnectionError"}, "retry_exceptions"),
        ({"retry_exceptions": [ValueError, 3]}, "retry_exceptions"),
        ({"retry_exceptions": ["bad name"]}, "retry_exceptions"),
        ({"retry_exceptions": [dict]}, "retry_exceptions"),
        ({"retry_on_result": True}, "retry_on_result"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": False}, "deadline"),
        ({"budget": 5}, "budget"),
        ({"budget": {"token_ratio": 0}}, "budget.token_ratio"),
        ({"budget": {"token_ratio": 0.0001}}, "budget.token_ratio"),
        ({"multiplier": 0.5}, "multiplier"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_bad_budget_config_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        RetryBudgetConfig(max_tokens=True)
    assert info.value.key == "max_tokens"
