"""Tests of the pure rate-limiting policy (garrison.policies.rate).

The three algorithms are checked against small exact reference models (fractions, brute
force), with hypothesis drawing windows, limits, rate factors and arrival sequences. Times
are multiples of 1/4 s so that the float arithmetic of the policy is exact where the
semantics are exact.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import tracemalloc
from collections.abc import Hashable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.errors import ConfigError, RateLimited
from garrison.policies.rate import (
    Decision,
    RateLimitConfig,
    RateLimitPolicy,
    Window,
    parse_window,
)

EPS = 1e-6

Windows = list[tuple[float, int]]
Scenario = tuple[Windows, float, list[tuple[float, str, int]]]

# --------------------------------------------------------------------------- references


def effective(limit: int, factor: float) -> int:
    return max(1, math.floor(limit * Fraction(str(factor))))


class RefLog:
    """Brute force: every admission kept; a request fits iff each window has room."""

    def __init__(self, windows: Windows, factor: float) -> None:
        self.windows = [(s, effective(n, factor)) for s, n in windows]
        self.admitted: dict[Hashable, list[tuple[float, int]]] = {}

    def used(self, key: Hashable, now: float, seconds: float) -> int:
        return sum(c for t, c in self.admitted.get(key, []) if t > now - seconds)

    def fits(self, key: Hashable, now: float, cost: int) -> bool:
        return all(self.used(key, now, s) + cost <= max(n, cost) for s, n in self.windows)

    def acquire(self, key: Hashable, now: float, cost: int) -> bool:
        if self.fits(key, now, cost):
            self.admitted.setdefault(key, []).append((now, cost))
            return True
        return False

    def earliest(self, key: Hashable, now: float, cost: int) -> float:
        candidates = sorted(
            {t + s for t, _ in self.admitted.get(key, []) for s, _ in self.windows} | {now}
        )
        return next(x for x in candidates if x >= now and self.fits(key, x, cost))


class RefGcra:
    """GCRA in exact rationals: TAT per window, burst tolerance T (or one heavy request)."""

    def __init__(self, windows: Windows, factor: float) -> None:
        self.windows = [
            (Fraction(s), Fraction(s) / n, Fraction(s) / effective(n, factor)) for s, n in windows
        ]
        self.tats: dict[Hashable, list[Fraction]] = {}

    def _new(self, key: Hashable, now: Fraction, cost: int) -> list[Fraction]:
        tats = self.tats.get(key, [Fraction(-(10**9))] * len(self.windows))
        return [max(tat, now) + cost * e for tat, (_, _, e) in zip(tats, self.windows, strict=True)]

    def fits_at(self, key: Hashable, now: Fraction, cost: int) -> bool:
        new = self._new(key, now, cost)
        return all(
            n - now <= max(s, cost * e) for n, (s, _, e) in zip(new, self.windows, strict=True)
        )

    def acquire(self, key: Hashable, now: float, cost: int) -> bool:
        t = Fraction(now)
        if self.fits_at(key, t, cost):
            self.tats[key] = self._new(key, t, cost)
            return True
        return False

    def earliest(self, key: Hashable, now: float, cost: int) -> Fraction:
        tats = self.tats[key]
        return max(
            max(Fraction(now), tat + cost * e - max(s, cost * e))
            for tat, (s, _, e) in zip(tats, self.windows, strict=True)
        )


class RefSlidingWindow:
    """The two-counter estimate in exact rationals (windows aligned to time 0)."""

    def __init__(self, windows: Windows, factor: float) -> None:
        self.windows = [(Fraction(s), effective(n, factor)) for s, n in windows]
        self.state: dict[Hashable, list[tuple[int, int, int]]] = {}

    def view(self, key: Hashable, now: Fraction) -> list[tuple[Fraction, int, int, int]]:
        out = []
        for i, (s, _) in enumerate(self.windows):
            idx = math.floor(now / s)
            stored, prev, cur = self.state.get(key, [(-10, 0, 0)] * len(self.windows))[i]
            if stored == idx:
                out.append((now / s - idx, idx, prev, cur))
            elif stored == idx - 1:
                out.append((now / s - idx, idx, cur, 0))
            else:
                out.append((now / s - idx, idx, 0, 0))
        return out

    def fits_at(self, key: Hashable, now: Fraction, cost: int) -> bool:
        return all(
            prev * (1 - frac) + cur + cost <= max(n, cost)
            for (frac, _, prev, cur), (_, n) in zip(self.view(key, now), self.windows, strict=True)
        )

    def acquire(self, key: Hashable, now: float, cost: int) -> bool:
        t = Fraction(now)
        if not self.fits_at(key, t, cost):
            return False
        self.state[key] = [(idx, prev, cur + cost) for _, idx, prev, cur in self.view(key, t)]
        return True

    def earliest(self, key: Hashable, now: float, cost: int) -> Fraction:
        t = Fraction(now)
        best = t
        for (frac, idx, prev, cur), (s, n) in zip(self.view(key, t), self.windows, strict=True):
            room = max(n, cost) - cost
            if prev * (1 - frac) + cur <= room:
                continue
            if cur <= room:
                at = (idx + 1 - Fraction(room - cur, prev)) * s
            else:
                at = (idx + 2 - Fraction(room, cur)) * s
            best = max(best, at)
        return best


REFERENCES: dict[str, type[RefLog | RefGcra | RefSlidingWindow]] = {
    "sliding_log": RefLog,
    "gcra": RefGcra,
    "sliding_window": RefSlidingWindow,
}

# --------------------------------------------------------------------------- strategies

POW2_SECONDS = [0.5, 1.0, 2.0, 4.0, 8.0]
ANY_SECONDS = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]


@st.composite
def scenarios(draw: st.DrawFn, seconds_pool: list[float], max_limit: int = 12) -> Scenario:
    count = draw(st.integers(1, 3))
    seconds = draw(
        st.lists(st.sampled_from(seconds_pool), min_size=count, max_size=count, unique=True)
    )
    windows = [(s, draw(st.integers(1, max_limit))) for s in seconds]
    factor = draw(st.sampled_from([1.0, 1.0, 1.0, 0.5, 0.3]))
    max_cost = min(n for _, n in windows)
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.5]),
                st.sampled_from(["a", "a", "b"]),
                st.integers(1, max_cost) if max_cost > 1 else st.just(1),
            ),
            min_size=1,
            max_size=60,
        )
    )
    return windows, factor, steps


def make_policy(
    algorithm: str, windows: Windows, factor: float = 1.0, **kw: Any
) -> RateLimitPolicy:
    config = RateLimitConfig.from_dict(
        {"limits": {f"{s:g}s": n for s, n in windows}, "algorithm": algorithm, **kw}
    )
    policy = RateLimitPolicy(config)
    if factor != 1.0:
        policy.set_rate_factor(factor)
    return policy


def run_against_reference(algorithm: str, scenario: Scenario) -> dict[str, list[tuple[float, int]]]:
    """Drive the policy and its reference side by side; return the admissions per key."""
    windows, factor, steps = scenario
    policy = make_policy(algorithm, windows, factor)
    ref = REFERENCES[algorithm](windows, factor)
    admitted: dict[str, list[tuple[float, int]]] = {}
    now = 0.0
    for gap, key, cost in steps:
        now += gap
        decision = policy.acquire(key, now, cost)
        assert decision.allowed == ref.acquire(key, now, cost), (now, key, cost)
        if decision:
            admitted.setdefault(key, []).append((now, cost))
            continue
        retry = decision.retry_after
        assert retry > 0
        assert decision.limit_label in {f"{s:g}s" for s, _ in windows}
        expected = float(ref.earliest(key, now, cost)) - now
        assert retry == pytest.approx(expected, rel=1e-9, abs=1e-9 + 64 * math.ulp(now))
        # Exact: admitted at now + retry_after, not just before (nothing else happening).
        assert policy.peek(key, now + retry, cost).allowed
        if retry > EPS:
            assert not policy.peek(key, now + retry - EPS, cost).allowed
    return admitted


def units_in(admitted: list[tuple[float, int]], lo: float, hi: float) -> int:
    """Units admitted at times t with lo < t <= hi."""
    return sum(c for t, c in admitted if lo < t <= hi)


# --------------------------------------------------------------------------- sliding log


@given(scenarios(ANY_SECONDS))
def test_sliding_log_matches_brute_force(scenario: Scenario) -> None:
    run_against_reference("sliding_log", scenario)


@given(scenarios(ANY_SECONDS, max_limit=20))
def test_sliding_log_never_exceeds_any_window(scenario: Scenario) -> None:
    windows, factor, _ = scenario
    admitted = run_against_reference("sliding_log", scenario)
    for times in admitted.values():
        for seconds, limit in windows:
            cap = effective(limit, factor)
            for t, cost in times:
                # every window (x - T, x] is at its fullest at an admission time x
                assert units_in(times, t - seconds, t) <= max(cap, cost)


def test_sliding_log_admits_n_then_exactly_after_the_window() -> None:
    policy = make_policy("sliding_log", [(1.0, 3)])
    assert all(policy.acquire("k", t) for t in (0.0, 0.25, 0.5))
    denied = policy.acquire("k", 0.75)
    assert denied == Decision(False, 0.25, "1s")
    assert not policy.acquire("k", 0.999).allowed
    assert policy.acquire("k", 1.0).allowed  # 0.0 left the window (1.0 - 1, 1.0]


def test_sliding_log_ring_wraps_and_compacts() -> None:
    policy = make_policy("sliding_log", [(10.0, 20)])
    ref = RefLog([(10.0, 20)], 1.0)
    now = 0.0
    for i in range(2000):
        now += (0.25, 0.5, 0.0, 3.0)[i % 4]
        assert policy.acquire("k", now).allowed == ref.acquire("k", now, 1)


def test_sliding_log_memory_follows_use_not_the_limit() -> None:
    config = RateLimitConfig(per_hour=1_000_000)
    tracemalloc.start()
    try:
        policy = RateLimitPolicy(config)
        before = tracemalloc.get_traced_memory()[0]
        for t in (0.0, 1.0, 2.0):
            assert policy.acquire("k", t)
        three_calls = tracemalloc.get_traced_memory()[0] - before
        # A key calling once a minute for 10 hours holds ~60 admissions in its window;
        # without compaction its log would hold all 600.
        for minute in range(1, 600):
            assert policy.acquire("slow", minute * 60.0)
        slow = tracemalloc.get_traced_memory()[0] - before - three_calls
    finally:
        tracemalloc.stop()
    assert three_calls < 2_000
    assert slow < 10_000


# --------------------------------------------------------------------------- gcra


@given(scenarios(ANY_SECONDS))
def test_gcra_matches_exact_reference(scenario: Scenario) -> None:
    run_against_reference("gcra", scenario)


@given(scenarios(POW2_SECONDS))
def test_gcra_bound_in_any_interval(scenario: Scenario) -> None:
    windows, _, steps = scenario
    admitted = run_against_reference("gcra", (windows, 1.0, steps))
    for times in admitted.values():
        for seconds, limit in windows:
            for a, _ in times:
                for b, _ in times:
                    if b >= a:
                        # [a, b] holds at most a burst of N plus the rate for b - a
                        inside = sum(c for t, c in times if a <= t <= b)
                        assert inside <= limit + (b - a) * limit / seconds + 1e-9


def test_gcra_burst_then_smooth_rate() -> None:
    policy = make_policy("gcra", [(1.0, 4)])  # emission interval 0.25 s
    assert all(policy.acquire("k", 0.0) for _ in range(4))
    denied = policy.acquire("k", 0.0)
    assert not denied
    assert denied.retry_after == pytest.approx(0.25)
    for i in range(1, 20):
        t = i * 0.25
        assert policy.acquire("k", t).allowed
        assert not policy.acquire("k", t).allowed


def test_gcra_admits_2n_minus_1_in_one_window_by_design() -> None:
    n = 5
    policy = make_policy("gcra", [(1.0, n)])  # emission interval 0.2 s
    times = [0.0] * n + [0.2 * i for i in range(1, n)]
    assert all(policy.acquire("k", t) for t in times)
    assert max(times) - min(times) < 1.0  # all inside one window of length 1 s ...
    assert len(times) == 2 * n - 1  # ... which holds 2N - 1 admissions
    assert not policy.acquire("k", 0.8)


# --------------------------------------------------------------------------- sliding window


@given(scenarios(POW2_SECONDS))
def test_sliding_window_matches_exact_estimate(scenario: Scenario) -> None:
    run_against_reference("sliding_window", scenario)


@given(scenarios(ANY_SECONDS, max_limit=20))
def test_sliding_window_documented_bounds(scenario: Scenario) -> None:
    windows, _, steps = scenario
    policy = make_policy("sliding_window", windows)
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for gap, _, cost in steps:
        now += gap
        decision = policy.acquire("k", now, cost)
        if decision:
            admitted.append((now, cost))
        else:
            # never "retry" into another rejection
            assert policy.peek("k", now + decision.retry_after, cost).allowed
    for seconds, limit in windows:
        for t, _ in admitted:
            assert units_in(admitted, t - seconds, t) <= 2 * limit - 1
            start = math.floor(t / seconds) * seconds  # the aligned window holding t
            assert sum(c for u, c in admitted if start <= u < start + seconds) <= limit


def test_sliding_window_worst_case_is_2n_minus_1() -> None:
    policy = make_policy("sliding_window", [(1.0, 10)])
    assert all(policy.acquire("k", 0.99) for _ in range(10))
    second = [t for t in (1.0, 1.5, 1.9, 1.95, 1.98) for _ in range(10) if policy.acquire("k", t)]
    assert 0 < len(second) <= 9  # 10 + 9 = 2N - 1 inside (0.98, 1.98]


def test_sliding_window_retry_after_crossing_into_the_next_window() -> None:
    policy = make_policy("sliding_window", [(1.0, 4)])
    assert all(policy.acquire("k", 0.5) for _ in range(4))
    denied = policy.acquire("k", 0.5)
    # cur = 4 must become prev and decay to 3: 4 * (1 - f) <= 3 at f = 1/4 of window 1
    assert denied.retry_after == pytest.approx(0.75)
    assert policy.peek("k", 0.5 + denied.retry_after).allowed
    assert not policy.peek("k", 0.5 + denied.retry_after - EPS).allowed


# --------------------------------------------------------------------------- all algorithms

ALGORITHMS = ["sliding_log", "gcra", "sliding_window"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rejection_consumes_no_window(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 1), (60.0, 2)])
    assert policy.acquire("k", 0.0)
    for _ in range(50):  # rejected by the 1s window: must not use up the 1m window
        denied = policy.acquire("k", 0.5)
        assert not denied
        assert denied.limit_label == "1s"
    assert policy.acquire("k", 2.0)  # the 1m window still has room for it
    denied = policy.acquire("k", 3.0)
    assert not denied
    assert denied.limit_label == "60s"
    assert denied.retry_after > 10
    assert policy.peek("k", 3.0 + denied.retry_after).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_are_isolated(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 2)])
    assert policy.acquire("a", 0.0)
    assert policy.acquire("a", 0.0)
    assert not policy.acquire("a", 0.0)
    assert policy.acquire("b", 0.0)
    assert policy.acquire(None, 0.0)
    assert policy.key_count() == 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_counts_nothing(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 1)])
    for _ in range(5):
        assert policy.peek("k", 0.0).allowed
    assert policy.key_count() == 0
    assert policy.acquire("k", 0.0)
    assert not policy.peek("k", 0.0)
    assert not policy.acquire("k", 0.0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_idle_keys_expire_a_few_per_call(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 5)])
    for i in range(100):
        assert policy.acquire(i, 0.0)
    assert policy.acquire("other", 0.5)
    assert policy.key_count() == 101  # not idle long enough yet
    assert policy.acquire("other", 3.0)  # past the ttl (+ a window for sliding_window)
    assert 101 - 8 <= policy.key_count() < 101  # bounded work: no sweep of every key
    for _ in range(60):
        policy.acquire("other", 3.0)
    assert policy.key_count() == 1
    assert policy.status()["keys"] == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expire_frees_everything_idle(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 5)], key_ttl=10.0)
    for i in range(10):
        policy.acquire(i, float(i))
    assert policy.expire(5.0) == 0
    assert 0 < policy.expire(14.0) <= 5  # last admitted at 0..4, ttl 10
    assert policy.key_count() >= 5
    policy.expire(100.0)
    assert policy.key_count() == 0


def test_sliding_log_key_dropped_exactly_key_ttl_after_last_admission() -> None:
    policy = make_policy("sliding_log", [(1.0, 5)], key_ttl=10.0)
    policy.acquire("a", 0.0)
    policy.acquire("a", 2.0)
    policy.acquire("b", 11.9)
    assert policy.key_count() == 2
    policy.acquire("b", 12.0)
    assert policy.key_count() == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_memory_per_key_is_small(algorithm: str) -> None:
    keys = [f"client-{i}" for i in range(100_000)]
    tracemalloc.start()
    try:
        policy = make_policy(algorithm, [(1.0, 10)])
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            policy.acquire(key, 1.0)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert per_key <= (150 if algorithm != "sliding_log" else 250)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rate_factor_scales_limits_down(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 10)])
    assert policy.set_rate_factor(0.5) == 0.5
    assert policy.effective_limits() == (5,)
    assert sum(policy.acquire("k", 0.0).allowed for _ in range(10)) == 5
    assert policy.set_rate_factor(0.01) == 0.1  # min_rate_fraction
    assert policy.effective_limits() == (1,)
    assert policy.set_rate_factor(1) == 1.0
    assert policy.status()["windows"][0]["effective_limit"] == 10
    for bad in (0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="rate factor"):
            policy.set_rate_factor(bad)
    with pytest.raises(TypeError):
        policy.set_rate_factor("0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_heavy_request_under_throttle_needs_an_empty_window(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 10)], 0.3)  # effective limit 3
    assert policy.acquire("fresh", 0.0, cost=8)  # nothing else in its window
    assert policy.acquire("k", 0.0)
    denied = policy.acquire("k", 0.0, cost=8)
    assert not denied
    assert policy.peek("k", denied.retry_after, cost=8).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_is_checked(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 10), (60.0, 5)])
    with pytest.raises(ValueError, match="never be admitted"):
        policy.acquire("k", 0.0, cost=6)
    with pytest.raises(ValueError, match=">= 1"):
        policy.acquire("k", 0.0, cost=0)
    with pytest.raises(TypeError):
        policy.peek("k", 0.0, cost=1.5)  # type: ignore[arg-type]
    assert policy.acquire("k", 0.0, cost=5)
    assert not policy.acquire("k", 0.0)
    assert policy.key_count() == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("windows", [[(1.0, 3)], [(1.0, 3), (10.0, 5)]])
def test_snapshot_restore_keeps_decisions(algorithm: str, windows: Windows) -> None:
    policy = make_policy(algorithm, windows)
    for t in (0.0, 0.25, 0.5, 0.5):
        policy.acquire("k", t)
    copy = make_policy(algorithm, windows)
    copy.restore(pickle.loads(pickle.dumps(policy.snapshot())))
    for t in (0.5, 0.75, 1.0, 1.25, 2.0, 9.0, 11.0):
        assert copy.acquire("k", t) == policy.acquire("k", t)
    with pytest.raises(ValueError, match="other windows"):
        make_policy(algorithm, [(2.0, 3)]).restore(policy.snapshot())


# --------------------------------------------------------------------------- memoised rejections
# Policies with several windows remember a key's next admitting time T after a rejection and
# answer repeated rejections from it. The twin below clears that memo before every call, so
# it always runs the full computation: every Decision must be the same, bit for bit.

GAPS = [0.0, 0.0, 0.0, 1e-7, 0.01, 0.1, 0.25, 0.3, 1.0, 2.5, 61.0]

Op = tuple[Any, ...]


@st.composite
def memo_scenarios(draw: st.DrawFn) -> tuple[Windows, float, list[Op]]:
    count = draw(st.integers(1, 3))
    seconds = draw(
        st.lists(st.sampled_from([*ANY_SECONDS, 60.0]), min_size=count, max_size=count, unique=True)
    )
    windows = [(s, draw(st.integers(1, 12))) for s in seconds]
    max_cost = min(n for _, n in windows)
    cost = st.integers(1, max_cost) if max_cost > 1 else st.just(1)
    key = st.sampled_from(["a", "a", "b"])
    request = st.tuples(st.sampled_from(["acquire", "peek"]), st.sampled_from(GAPS), key, cost)
    # a burst of the same request: the first rejection fills the memo, the next ones hit it
    burst = st.builds(
        lambda gap, k, c, n: ("burst", gap, k, c, n),
        st.sampled_from(GAPS),
        key,
        cost,
        st.integers(2, 6),
    )
    other = st.one_of(
        st.tuples(st.just("factor"), st.sampled_from([1.0, 0.5, 0.3, 0.1])),
        st.tuples(st.just("reset"), key),
        st.just(("reset_all",)),
        st.just(("restore",)),
        st.tuples(st.just("expire"), st.sampled_from(GAPS)),
    )
    ops = draw(st.lists(st.one_of(request, request, burst, burst, other), min_size=1, max_size=60))
    start = draw(st.sampled_from([0.0, 0.3, 10_000.0, 1e6 + 0.1]))
    return windows, start, ops


def check_memoised_rejection(
    policy: RateLimitPolicy, twin: RateLimitPolicy, key: str, now: float, cost: int
) -> None:
    """After a rejection by several windows: the memo holds the least admitting time T.

    ``twin`` has the same state and no memo: its peeks are the decision itself.
    """
    denied = policy.peek(key, now, cost)
    memo = policy._memo.get(key)
    assert memo is not None
    assert memo[0] == cost
    at = memo[1]
    assert at > now
    twin._memo.clear()
    assert twin.peek(key, at, cost).allowed
    assert not twin.peek(key, math.nextafter(at, -math.inf), cost).allowed
    # now + retry_after is T (or, when T - now rounds, the float just after it)
    assert at <= now + denied.retry_after <= math.nextafter(at, math.inf)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@given(scenario=memo_scenarios())
def test_memoised_rejections_match_the_full_computation(
    algorithm: str, scenario: tuple[Windows, float, list[Op]]
) -> None:
    windows, now, ops = scenario
    cached = make_policy(algorithm, windows)
    uncached = make_policy(algorithm, windows)
    memo = cached._memo
    several = len(windows) > 1
    for op in ops:
        kind = op[0]
        if kind in ("acquire", "peek", "burst"):
            _, gap, key, cost, *rest = op
            now += gap
            for _ in range(rest[0] if rest else 1):
                uncached._memo.clear()
                if kind == "peek":
                    decision = cached.peek(key, now, cost)
                    assert decision == uncached.peek(key, now, cost), (op, now)
                    continue
                decision = cached.acquire(key, now, cost)
                assert decision == uncached.acquire(key, now, cost), (op, now)
                if several:  # admissions drop the memo, rejections leave one
                    assert decision.allowed == (key not in memo)
                    if not decision:
                        check_memoised_rejection(cached, uncached, key, now, cost)
                now += 1e-7 if gap == 1e-7 else 0.0  # (other bursts stay at one instant)
        elif kind == "factor":
            assert cached.set_rate_factor(op[1]) == uncached.set_rate_factor(op[1])
            assert not memo
        elif kind == "reset":
            cached.reset(op[1])
            uncached.reset(op[1])
            assert op[1] not in memo
        elif kind == "reset_all":
            cached.reset(all_keys=True)
            uncached.reset(all_keys=True)
            assert not memo
        elif kind == "restore":
            cached.restore(pickle.loads(pickle.dumps(cached.snapshot())))
            uncached.restore(pickle.loads(pickle.dumps(uncached.snapshot())))
            assert not memo
        else:
            now += op[1]
            assert cached.expire(now) == uncached.expire(now)
        # only keys with state can have a memo (dropped with it on expiry)
        assert set(memo) <= set(cached._states)
        assert uncached.key_count() == cached.key_count()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repeated_rejections_are_answered_from_the_memo(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 10), (60.0, 100), (3600.0, 1000)])
    memo = policy._memo
    now = 10_000.0
    assert policy.acquire("k", now, 10)
    first = policy.acquire("k", now)
    assert not first
    assert first.limit_label == "1s"
    at = memo["k"][1]
    assert now + first.retry_after == at
    for i in range(1, 100):  # the same T, counted down
        t = now + i * 1e-4
        denied = policy.acquire("k", t)
        assert denied == Decision(False, at - t, "1s")
        assert t + denied.retry_after == at
    assert memo["k"][1] == at
    assert not policy.acquire("k", now, 2)  # another cost: its own memo
    assert memo["k"][0] == 2
    assert policy.acquire("k", at)  # admitted at T exactly: the memo goes
    assert "k" not in memo
    assert not policy.acquire("k", at, 10)
    assert memo["k"][0] == 10
    policy.set_rate_factor(0.5)  # other limits: every memo goes
    assert not memo
    assert not policy.acquire("k", at, 10)
    assert "k" in memo
    policy.reset("k")
    assert not memo
    assert policy.acquire("k", at, 5)
    assert not policy.acquire("k", at)
    assert "k" in memo
    policy.restore(policy.snapshot())
    assert not memo
    assert not policy.acquire("k", at)
    assert "k" in memo
    policy.expire(at + 10_000.0)
    assert not memo
    assert policy.key_count() == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_memo_is_kept_only_for_rejected_keys(algorithm: str) -> None:
    policy = make_policy(algorithm, [(1.0, 2), (60.0, 100)])
    memo = policy._memo
    keys = [f"client-{i}" for i in range(1000)]
    for key in keys:
        assert policy.acquire(key, 0.0, 2)
        assert not policy.acquire(key, 0.25)
    assert len(memo) == len(keys)
    for key in keys:
        assert policy.acquire(key, 2.0)
    assert not memo
    fresh = make_policy(algorithm, [(1.0, 1), (60.0, 100)])
    assert fresh.acquire("k", -5.0)
    assert not fresh.acquire("k", -4.5)  # before time 0: answered, never memoised
    assert not fresh._memo


def test_decision_is_truthy_only_when_allowed_and_converts_to_an_error() -> None:
    policy = make_policy("sliding_log", [(1.0, 1)])
    assert policy.acquire("k", 0.0)
    denied = policy.acquire("k", 0.5)
    assert not denied
    error = denied.to_error("k")
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(0.5)
    assert error.key == "k"
    assert error.limit == "1s"


def test_policy_requires_a_config() -> None:
    with pytest.raises(TypeError):
        RateLimitPolicy({"per_second": 1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- config


def test_windows_are_parsed_and_sorted() -> None:
    config = RateLimitConfig(limits={"1h": 1000, "500ms": 2, "10": 5}, per_minute=100)
    assert config.windows == (
        Window(0.5, 2, "500ms"),
        Window(10.0, 5, "10"),
        Window(60.0, 100, "1m"),
        Window(3600.0, 1000, "1h"),
    )
    assert config.effective_key_ttl == 3600.0
    assert parse_window("1d") == 86400.0
    assert parse_window(2.5) == 2.5


def test_config_defaults_and_immutability() -> None:
    limits = {"1s": 10}
    config = RateLimitConfig(limits=limits)
    limits["1s"] = 1  # the caller's dict is copied
    assert config.windows[0].limit == 10
    assert config.algorithm == "sliding_log"
    assert config.on_limit == "reject"
    assert config.throttle_strategy == "fixed"
    assert (config.backoff_multiplier, config.max_wait_time) == (1.5, 60.0)
    assert (config.queue_size, config.queue_timeout, config.priority_queue) == (1000, 300.0, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.per_second = 3  # type: ignore[misc]
    assert hash(config) == hash(RateLimitConfig(limits={"1s": 10}))
    assert pickle.loads(pickle.dumps(config)) == config
    replaced = dataclasses.replace(config, per_minute=100)
    assert [w.label for w in replaced.windows] == ["1s", "1m"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({}, "limits"),
        ({"per_second": 0}, "per_second"),
        ({"per_minute": -5}, "per_minute"),
        ({"per_hour": True}, "per_hour"),
        ({"per_second": "10"}, "per_second"),
        ({"per_second": 2.5}, "per_second"),
        ({"limits": {"1x": 10}}, "limits.1x"),
        ({"limits": {"abc": 10}}, "limits.abc"),
        ({"limits": {"0s": 10}}, "limits.0s"),
        ({"limits": {"-1s": 10}}, "limits.-1s"),
        ({"limits": {"1s": 0}}, "limits.1s"),
        ({"limits": {"1s": "ten"}}, "limits.1s"),
        ({"limits": [("1s", 10)]}, "limits"),
        ({"limits": {"1s": 10, "1000ms": 5}}, "limits.1000ms"),
        ({"limits": {"60s": 10}, "per_minute": 5}, "per_minute"),
        ({"per_second": 1, "algorithm": "token_bucket"}, "algorithm"),
        ({"per_second": 1, "on_limit": "drop"}, "on_limit"),
        ({"per_second": 1, "throttle_strategy": "linear"}, "throttle_strategy"),
        ({"per_second": 1, "backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"per_second": 1, "backoff_multiplier": "2"}, "backoff_multiplier"),
        ({"per_second": 1, "max_wait_time": 0}, "max_wait_time"),
        ({"per_second": 1, "max_wait_time": math.inf}, "max_wait_time"),
        ({"per_second": 1, "queue_size": -1}, "queue_size"),
        ({"per_second": 1, "queue_size": False}, "queue_size"),
        ({"per_second": 1, "queue_timeout": 0}, "queue_timeout"),
        ({"per_second": 1, "priority_queue": "yes"}, "priority_queue"),
        ({"per_minute": 1, "key_ttl": 30}, "key_ttl"),
        ({"per_second": 1, "key_ttl": math.nan}, "key_ttl"),
        ({"per_second": 1, "min_rate_fraction": 0}, "min_rate_fraction"),
        ({"per_second": 1, "min_rate_fraction": 1.5}, "min_rate_fraction"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitConfig(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_bad_values_messages() -> None:
    with pytest.raises(ConfigError, match="unknown window unit 'x'"):
        RateLimitConfig(limits={"1x": 10})
    with pytest.raises(ConfigError, match="must be > 0, got 0"):
        RateLimitConfig(per_second=0)


def test_from_dict_accepts_seed_names() -> None:
    config = RateLimitConfig.from_dict(
        {
            "rate_limit_per_second": 10,
            "rate_limit_per_minute": 100,
            "rate_limit_per_hour": 1000,
            "strategy": "adaptive",
            "queue_size": 10,
            "algorithm": "gcra",
        }
    )
    assert [w.label for w in config.windows] == ["1s", "1m", "1h"]
    assert config.throttle_strategy == "adaptive"
    assert config.algorithm == "gcra"
    assert RateLimitConfig.from_dict({"limits": {"1s": 2}}) == RateLimitConfig(limits={"1s": 2})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"per_second": 1, "per_secnd": 2}, "per_secnd"),
        ({"per_second": 1, "strategy": "fixed", "throttle_strategy": "fixed"}, "throttle_strategy"),
        ({"per_second": 1, "_windows": ()}, "_windows"),
        ({"per_second": 0}, "per_second"),
    ],
)
def test_from_dict_rejects_unknown_and_repeated_keys(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitConfig.from_dict(data)
    assert info.value.key == key


def test_from_dict_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'per_second'"):
        RateLimitConfig.from_dict({"per_secnd": 2})
    with pytest.raises(ConfigError):
        RateLimitConfig.from_dict([("per_second", 1)])  # type: ignore[arg-type]
