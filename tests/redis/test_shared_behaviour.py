"""One behaviour suite for the in-memory and the Redis rate limits.

Every test runs against both implementations (``limiter`` is parametrised): the in-memory
:class:`RateLimitPolicy` and :class:`RedisRateLimit` (a Lua script in a real redis-server).
Time is explicit: the Redis script takes it instead of ``TIME`` (the tests' only hook), in
microseconds; times here are multiples of 1/64 s, exact in binary and in microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Any, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.backends import BackendConfig
from garrison.backends._connection import RedisLink
from garrison.backends._redis_rate import RedisRateLimit
from garrison.policies.rate import Decision, RateLimitConfig, RateLimitPolicy

T0 = 1000.0
ALGORITHMS = ("sliding_log", "gcra", "sliding_window")


class Limiter(Protocol):
    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision: ...
    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision: ...
    def throttle(self, factor: float) -> None: ...


class Memory:
    def __init__(self, config: RateLimitConfig, _: Any) -> None:
        self.policy = RateLimitPolicy(config)

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        return self.policy.acquire(key, now, cost)

    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        return self.policy.peek(key, now, cost)

    def throttle(self, factor: float) -> None:
        self.policy.set_rate_factor(factor)


class Redis:
    count = 0

    def __init__(self, config: RateLimitConfig, link: RedisLink) -> None:
        Redis.count += 1
        self.store = RedisRateLimit(link, config, f"garrison:suite{Redis.count}:svc")
        self.shape = RateLimitPolicy(config)

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        return self.store.acquire(key, cost, at=now)

    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        return self.store.peek(key, cost, at=now)

    def throttle(self, factor: float) -> None:
        self.shape.set_rate_factor(factor)
        self.store.set_limits(self.shape.effective_limits())


@pytest.fixture(scope="module")
def link(redis_server: Any) -> Iterator[RedisLink]:
    link = RedisLink(BackendConfig(redis_server.url, socket_timeout=2.0), runtime="suite")
    link.client.flushdb()
    yield link
    link.close()


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return lambda config: Memory(config, None)
    link = request.getfixturevalue("link")
    return lambda config: Redis(config, link)


def admits_at(limiter: Limiter, key: Hashable, now: float, cost: int = 1) -> None:
    """The rejection at ``now`` says when; it is admitted then, and not a microsecond sooner."""
    rejected = limiter.peek(key, now, cost)
    assert not rejected.allowed
    when = now + rejected.retry_after
    assert not limiter.peek(key, when - 2e-6, cost).allowed
    assert limiter.peek(key, when + 1e-6, cost).allowed


# -- sliding log ---------------------------------------------------------------------------------


def test_sliding_log_admits_n_per_window_and_says_exactly_when(make: Any):
    limiter = make(RateLimitConfig(limits={"1s": 3}))
    for i in range(3):
        assert limiter.acquire("a", T0 + i * 0.125).allowed
    refused = limiter.acquire("a", T0 + 0.5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5, abs=1e-6)
    assert refused.limit_label == "1s"
    admits_at(limiter, "a", T0 + 0.5)
    assert limiter.acquire("a", T0 + 1.0).allowed
    assert not limiter.acquire("a", T0 + 1.0).allowed
    assert limiter.acquire("b", T0 + 1.0).allowed  # keys are separate


def test_a_rejection_counts_in_no_window(make: Any):
    limiter = make(RateLimitConfig(limits={"1s": 2, "10s": 3}))
    assert limiter.acquire("k", T0).allowed
    assert limiter.acquire("k", T0).allowed
    for _ in range(5):
        refused = limiter.acquire("k", T0 + 0.5)
        assert not refused.allowed
        assert refused.limit_label == "1s"
    assert limiter.acquire("k", T0 + 1.0).allowed  # the refusals took nothing from 10s
    refused = limiter.acquire("k", T0 + 2.0)
    assert not refused.allowed
    assert refused.limit_label == "10s"
    assert refused.retry_after == pytest.approx(8.0, abs=1e-6)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_windows_are_all_or_none(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 5, "1m": 6}, algorithm=algorithm))
    admitted = sum(limiter.acquire("k", T0 + i / 64).allowed for i in range(10))
    assert admitted == 5
    later = sum(limiter.acquire("k", T0 + 2 + i / 64).allowed for i in range(10))
    assert later == 1  # the minute window has one slot left, and only one was taken
    assert limiter.peek("k", T0 + 3).limit_label == "1m"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_costs_weigh_in_every_window(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 5}, algorithm=algorithm))
    assert limiter.acquire("k", T0, 3).allowed
    refused = limiter.acquire("k", T0, 3)
    assert not refused.allowed
    assert limiter.acquire("k", T0, 2).allowed
    assert not limiter.acquire("k", T0).allowed
    admits_at(limiter, "k", T0 + 0.25, 3)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_cost_above_the_limit_is_an_error(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 5, "1m": 50}, algorithm=algorithm))
    with pytest.raises(ValueError, match="exceeds the limit of the 1s window"):
        limiter.acquire("k", T0, 6)
    with pytest.raises(ValueError, match="cost must be >= 1"):
        limiter.acquire("k", T0, 0)
    with pytest.raises(TypeError):
        limiter.acquire("k", T0, 1.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_counts_nothing(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 2}, algorithm=algorithm))
    for _ in range(5):
        assert limiter.peek("k", T0).allowed
    assert limiter.acquire("k", T0).allowed
    assert limiter.acquire("k", T0).allowed
    assert not limiter.peek("k", T0).allowed


# -- gcra and sliding window ---------------------------------------------------------------------


def test_gcra_allows_a_burst_then_one_per_interval(make: Any):
    limiter = make(RateLimitConfig(limits={"1s": 4}, algorithm="gcra"))
    assert all(limiter.acquire("k", T0).allowed for _ in range(4))
    refused = limiter.acquire("k", T0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.25, abs=1e-6)
    admits_at(limiter, "k", T0 + 0.125)
    assert limiter.acquire("k", T0 + 0.25).allowed
    assert not limiter.acquire("k", T0 + 0.25).allowed


def test_sliding_window_weighs_the_previous_window(make: Any):
    limiter = make(RateLimitConfig(limits={"1s": 10}, algorithm="sliding_window"))
    assert sum(limiter.acquire("k", T0 + 0.25).allowed for _ in range(12)) == 10
    # half-way through the next window the previous one weighs 10 * 0.5 = 5
    assert sum(limiter.acquire("k", T0 + 1.5).allowed for _ in range(8)) == 5
    refused = limiter.peek("k", T0 + 1.5)
    assert refused.retry_after == pytest.approx(0.1, abs=1e-6)  # 10 * (1 - f) + 5 + 1 <= 10
    admits_at(limiter, "k", T0 + 1.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_throttling_lowers_the_limits(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 10}, algorithm=algorithm))
    limiter.throttle(0.5)
    assert sum(limiter.acquire("k", T0).allowed for _ in range(10)) == 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_of_any_type_stay_apart(make: Any, algorithm: str):
    limiter = make(RateLimitConfig(limits={"1s": 1}, algorithm=algorithm))
    for key in (None, "7", 7, "{7}", "}", ("a", 1), "", "~", "~int:7", "%7E"):
        assert limiter.acquire(key, T0).allowed, key
        assert not limiter.acquire(key, T0).allowed, key


# -- the two implementations decide alike ------------------------------------------------------

windows = st.dictionaries(
    st.sampled_from(["500ms", "1s", "2s"]), st.integers(1, 6), min_size=1, max_size=3
)
steps = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"]), st.integers(1, 3), st.booleans()),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=40)
@given(limits=windows, ops=steps)
def test_memory_and_redis_decide_alike(link: RedisLink, algorithm: str, limits: Any, ops: Any):
    config = RateLimitConfig(limits=limits, algorithm=algorithm)
    memory, redis = Memory(config, None), Redis(config, link)
    now = T0
    smallest = min(limits.values())
    for ticks, key, weight, write in ops:
        now += ticks / 64
        cost = min(weight, smallest)
        if write:
            ours, theirs = memory.acquire(key, now, cost), redis.acquire(key, now, cost)
        else:
            ours, theirs = memory.peek(key, now, cost), redis.peek(key, now, cost)
        assert ours.allowed == theirs.allowed, (now, key, cost)
        assert ours.limit_label == theirs.limit_label
        assert math.isclose(ours.retry_after, theirs.retry_after, abs_tol=2e-6)
