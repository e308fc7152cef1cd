"""Tests of the pure circuit-breaker policy (garrison.policies.breaker)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from garrison.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    OperationTimeout,
    QueueFull,
    RateLimited,
)
from garrison.policies.breaker import (
    BreakerPolicy,
    CircuitBreakerConfig,
    Permit,
    Rejection,
    Transition,
)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make(rng_seed: int = 0, **kwargs: object) -> BreakerPolicy:
    return BreakerPolicy(CircuitBreakerConfig(**kwargs), random.Random(rng_seed))  # type: ignore[arg-type]


def admit(policy: BreakerPolicy, now: float) -> Permit:
    decision = policy.before_call(now)
    assert isinstance(decision, Permit), decision
    return decision


def succeed(policy: BreakerPolicy, now: float, duration: float = 0.01) -> None:
    policy.on_success(admit(policy, now), duration, now)


def fail(
    policy: BreakerPolicy,
    now: float,
    duration: float = 0.01,
    error: BaseException | None = None,
) -> None:
    policy.on_failure(admit(policy, now), duration, now, error)


def trip(policy: BreakerPolicy, now: float) -> None:
    """Open a closed breaker with consecutive failures."""
    while policy.state == "closed":
        fail(policy, now)
    assert policy.state == "open"


class AppError(Exception):
    """A user-defined error, for dotted-path matching."""


# ---------------------------------------------------------------------------------------------
# reference model
# ---------------------------------------------------------------------------------------------


@dataclass
class Token:
    epoch: int
    probe: int


@dataclass
class Model:
    """An obviously-correct (slow) breaker written from the specification."""

    cfg: CircuitBreakerConfig
    rng: random.Random
    state: str = "closed"
    epoch: int = 0
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)
    consecutive: int = 0
    opened_at: float = 0.0
    wait: float = 0.0
    reopenings: int = 0
    probes: dict[int, float] = field(default_factory=dict)
    next_probe: int = 1
    admitted: int = 0
    successes: int = 0
    slow_probes: int = 0
    transitions: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wait = self.cfg.recovery_timeout

    # window -----------------------------------------------------------------------------
    def buckets(self) -> tuple[int, float]:
        size = self.cfg.window_size
        count = min(max(1, math.ceil(size)), 1024)
        return count, size / count

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.cfg.window_type == "count":
            return self.outcomes[-int(self.cfg.window_size) :]
        count, width = self.buckets()
        current = int(now // width)
        return [o for o in self.outcomes if current - count < int(o[0] // width) <= current]

    def counts(self, now: float) -> tuple[int, int, int]:
        win = self.window(now)
        return len(win), sum(o[1] for o in win), sum(o[2] for o in win)

    # transitions ------------------------------------------------------------------------
    def change(self, to: str, reason: str) -> None:
        if to != self.state:
            self.transitions.append((self.state, to, reason))
        self.state = to
        self.epoch += 1
        self.probes = {}
        self.admitted = self.successes = self.slow_probes = 0

    def open(self, now: float, reason: str) -> None:
        self.reopenings = self.reopenings + 1 if self.state == "half_open" else 0
        cfg = self.cfg
        if self.reopenings == 0 or cfg.recovery_backoff_multiplier == 1.0:
            self.wait = cfg.recovery_timeout
        else:
            raw = cfg.recovery_timeout * cfg.recovery_backoff_multiplier**self.reopenings
            raw *= self.rng.uniform(0.9, 1.1)
            self.wait = min(max(raw, cfg.recovery_timeout), cfg.effective_max_recovery_timeout)
        self.opened_at = now
        self.change("open", reason)

    def close(self, reason: str) -> None:
        self.outcomes = []
        self.consecutive = 0
        self.reopenings = 0
        self.wait = self.cfg.recovery_timeout
        self.change("closed", reason)

    def expire(self, now: float) -> bool:
        if any(now - at >= self.cfg.effective_probe_timeout for at in self.probes.values()):
            self.open(now, "probe_timeout")
            return True
        return False

    # calls ------------------------------------------------------------------------------
    def before_call(self, now: float) -> Token | tuple[str, float]:
        if self.state in ("closed", "disabled"):
            return Token(self.epoch, 0)
        if self.state == "forced_open":
            return ("forced_open", math.inf)
        if self.state == "open":
            if now < self.opened_at + self.wait:
                return ("open", self.opened_at + self.wait - now)
            self.change("half_open", "recovery_timeout")
        elif self.expire(now):
            return ("open", self.wait)
        if self.admitted >= self.cfg.half_open_max_calls:
            return ("half_open", 0.0)
        self.admitted += 1
        probe = self.next_probe
        self.next_probe += 1
        self.probes[probe] = now
        return Token(self.epoch, probe)

    def report(self, token: Token, kind: str, duration: float, now: float) -> None:
        if token.epoch != self.epoch:
            return
        slow_limit = self.cfg.slow_call_duration
        slow = slow_limit is not None and duration >= slow_limit
        if kind == "ignored":
            if self.state == "half_open" and token.probe in self.probes:
                del self.probes[token.probe]
                self.admitted -= 1
            return
        failure = kind == "failure"
        if self.state == "closed":
            self.consecutive = self.consecutive + 1 if failure else 0
            self.outcomes.append((now, failure, slow))
            calls, failures, slows = self.counts(now)
            if self.consecutive >= self.cfg.failure_threshold:
                self.open(now, "failure_threshold")
            elif calls >= self.cfg.min_calls:
                if failures / calls >= self.cfg.error_rate_threshold:
                    self.open(now, "error_rate")
                elif slow_limit is not None and slows / calls >= self.cfg.slow_call_rate_threshold:
                    self.open(now, "slow_call_rate")
        elif self.state == "half_open" and token.probe in self.probes:
            del self.probes[token.probe]
            if failure:
                self.open(now, "probe_failed")
                return
            self.successes += 1
            self.slow_probes += slow
            if self.successes == self.cfg.half_open_max_calls:
                share = self.slow_probes / self.cfg.half_open_max_calls
                if slow_limit is not None and share >= self.cfg.slow_call_rate_threshold:
                    self.open(now, "probe_slow_calls")
                else:
                    self.close("probes_succeeded")

    def on_timer(self, now: float) -> None:
        if self.state == "open" and now >= self.opened_at + self.wait:
            self.change("half_open", "recovery_timeout")
        elif self.state == "half_open":
            self.expire(now)

    def next_transition_at(self) -> float | None:
        if self.state == "open":
            return self.opened_at + self.wait
        if self.state == "half_open" and self.probes:
            return min(self.probes.values()) + self.cfg.effective_probe_timeout
        return None

    def retry_after(self, now: float) -> float:
        if self.state == "open":
            return max(0.0, self.opened_at + self.wait - now)
        return math.inf if self.state == "forced_open" else 0.0


# ---------------------------------------------------------------------------------------------
# stateful comparison
# ---------------------------------------------------------------------------------------------


@st.composite
def breaker_configs(draw: st.DrawFn) -> CircuitBreakerConfig:
    window_type = draw(st.sampled_from(["count", "time"]))
    if window_type == "count":
        window_size: float = draw(st.integers(1, 8))
        min_calls = draw(st.integers(1, int(window_size)))
    else:
        window_size = draw(st.sampled_from([1, 2, 2.5, 5, 10]))
        min_calls = draw(st.integers(1, 6))
    recovery = draw(st.sampled_from([1.0, 5.0]))
    return CircuitBreakerConfig(
        failure_threshold=draw(st.integers(1, 6)),
        recovery_timeout=recovery,
        error_rate_threshold=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])),
        min_calls=min_calls,
        window_size=window_size,
        window_type=window_type,
        slow_call_duration=draw(st.sampled_from([None, 1.0])),
        slow_call_rate_threshold=draw(st.sampled_from([0.5, 1.0])),
        half_open_max_calls=draw(st.integers(1, 3)),
        recovery_backoff_multiplier=draw(st.sampled_from([1.0, 1.5, 2.0])),
        max_recovery_timeout=draw(st.sampled_from([None, recovery * 3])),
        record_exceptions=draw(st.sampled_from([(), ("ConnectionError",)])),
        ignore_exceptions=("KeyError",),
        probe_timeout=draw(st.sampled_from([None, 2.0])),
    )


KINDS = st.sampled_from(["success", "failure", "failure_none", "ignored", "other_error"])
DURATIONS = st.sampled_from([0.01, 0.5, 1.0, 3.0])


class BreakerMachine(RuleBasedStateMachine):
    """Drive BreakerPolicy and the Model with the same random steps; they must agree."""

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    @initialize(cfg=breaker_configs(), seed=st.integers(0, 2**32))
    def setup(self, cfg: CircuitBreakerConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.policy = BreakerPolicy(cfg, self.rng)
        self.model = Model(cfg, random.Random(seed))

    @rule(dt=st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 11.0]), st.floats(0, 20)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(target=calls)
    def call(self) -> tuple[Permit, Token] | None:
        decision = self.policy.before_call(self.now)
        expected = self.model.before_call(self.now)
        if isinstance(expected, Token):
            assert isinstance(decision, Permit), (decision, expected)
            return (decision, expected)
        assert isinstance(decision, Rejection), (decision, expected)
        assert (decision.state, decision.retry_after) == expected
        return None

    def _report(self, permit: Permit, token: Token, kind: str, duration: float, which: int) -> None:
        recorded = bool(self.cfg.record_exceptions)
        if kind == "success":
            self.policy.on_success(permit, duration, self.now)
            model_kind = "success"
        elif kind == "failure":
            self.policy.on_failure(permit, duration, self.now, ConnectionRefusedError("down"))
            model_kind = "failure"
        elif kind == "failure_none":
            self.policy.on_failure(permit, duration, self.now)
            model_kind = "failure"
        elif kind == "ignored":
            error = (RateLimited(1.0), KeyError("x"), QueueFull(3))[which]
            self.policy.on_failure(permit, duration, self.now, error)
            model_kind = "ignored"
        else:
            self.policy.on_failure(permit, duration, self.now, ValueError("bad input"))
            model_kind = "success" if recorded else "failure"
        self.model.report(token, model_kind, duration, self.now)

    @rule(pending=consumes(calls), kind=KINDS, duration=DURATIONS, which=st.integers(0, 2))
    def finish(
        self, pending: tuple[Permit, Token] | None, kind: str, duration: float, which: int
    ) -> None:
        if pending is not None:
            self._report(*pending, kind, duration, which)

    @rule(kind=KINDS, duration=DURATIONS, which=st.integers(0, 2))
    def call_and_finish(self, kind: str, duration: float, which: int) -> None:
        pending = self.call()
        if pending is not None:
            self._report(*pending, kind, duration, which)

    @rule(action=st.sampled_from(["timer", "expire", "restart"]))
    def housekeeping(self, action: str) -> None:
        if action == "timer":
            self.policy.on_timer(self.now)
            self.model.on_timer(self.now)
        elif action == "expire":
            self.policy.expire_probes(self.now)
            if self.model.state == "half_open":
                self.model.expire(self.now)
        else:
            snapshot = json.loads(json.dumps(self.policy.snapshot()))
            self.policy = BreakerPolicy.restore(self.cfg, self.rng, snapshot)

    @rule(
        action=st.sampled_from(["force_open", "force_close", "reset", "disable"]),
        gate=st.integers(0, 9),
    )
    def manual(self, action: str, gate: int) -> None:
        if gate:  # manual control is rare in real life: mostly a no-op step
            return
        getattr(self.policy, action)(self.now)
        if action == "force_open":
            if self.model.state != "forced_open":
                self.model.change("forced_open", "forced_open")
        elif action == "disable":
            if self.model.state != "disabled":
                self.model.change("disabled", "disabled")
        else:
            self.model.close("forced_close" if action == "force_close" else "reset")

    @invariant()
    def agree(self) -> None:
        policy, model, now = self.policy, self.model, self.now
        assert policy.state == model.state
        assert policy.next_transition_at == model.next_transition_at()
        assert policy.consecutive_failures == model.consecutive
        status = policy.status(now)
        assert (status["calls"], status["failures"], status["slow_calls"]) == model.counts(now)
        assert status["retry_after"] == model.retry_after(now)
        assert status["recovery_timeout"] == model.wait
        assert status["half_open_in_flight"] == len(model.probes)
        drained = [(t.from_state, t.to_state, t.reason) for t in policy.drain_transitions()]
        assert drained == model.transitions
        for _, to_state, reason in drained:
            event(f"{to_state} by {reason}")
        model.transitions.clear()


BreakerMachine.TestCase.settings = settings(
    max_examples=max(settings.default.max_examples, 200),
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerAgainstModel = BreakerMachine.TestCase


# ---------------------------------------------------------------------------------------------
# closed → open
# ---------------------------------------------------------------------------------------------


def test_consecutive_failures_open_regardless_of_min_calls() -> None:
    policy = make(failure_threshold=3, min_calls=50, error_rate_threshold=1.0)
    fail(policy, 0.0)
    fail(policy, 0.0)
    succeed(policy, 0.0)  # a success breaks the run
    fail(policy, 0.0)
    fail(policy, 0.0)
    assert policy.state == "closed"
    assert policy.consecutive_failures == 2
    fail(policy, 1.0)
    assert policy.state == "open"
    assert policy.drain_transitions() == (Transition("closed", "open", "failure_threshold", 1.0),)


def test_error_rate_needs_min_calls() -> None:
    policy = make(failure_threshold=100, min_calls=10, error_rate_threshold=0.5)
    for i in range(9):  # 5 failures of 9 calls: 55%, but only 9 calls
        if i % 2 == 0:
            fail(policy, 0.0)
        else:
            succeed(policy, 0.0)
    assert policy.state == "closed"
    assert policy.status(0.0)["error_rate"] == pytest.approx(5 / 9)
    succeed(policy, 0.0)  # 5/10 = 50% >= 50%: even a success completes the sample
    assert policy.state == "open"
    assert policy.drain_transitions()[-1].reason == "error_rate"


def test_error_rate_below_threshold_stays_closed() -> None:
    policy = make(failure_threshold=100, min_calls=4, window_size=4, error_rate_threshold=0.75)
    for outcome in "FSFSFSFS":
        (fail if outcome == "F" else succeed)(policy, 0.0)
    assert policy.state == "closed"
    assert policy.status(0.0)["error_rate"] == 0.5


def test_slow_call_rate_opens_even_when_calls_succeed() -> None:
    policy = make(
        failure_threshold=100,
        min_calls=4,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
    )
    succeed(policy, 0.0, duration=2.0)
    succeed(policy, 0.0, duration=0.1)
    succeed(policy, 0.0, duration=1.0)  # exactly the limit counts as slow
    assert policy.state == "closed"
    succeed(policy, 0.0, duration=0.1)
    status = policy.status(0.0)
    assert status["error_rate"] == 0.0
    assert status["slow_calls"] == 2
    assert policy.state == "open"
    assert policy.drain_transitions()[-1].reason == "slow_call_rate"


def test_slow_calls_ignored_without_slow_call_duration() -> None:
    policy = make(failure_threshold=100, min_calls=1)
    for _ in range(20):
        succeed(policy, 0.0, duration=100.0)
    assert policy.state == "closed"
    assert policy.status(0.0)["slow_calls"] == 0


def test_count_window_keeps_only_the_last_outcomes() -> None:
    policy = make(failure_threshold=100, window_size=4, min_calls=4, error_rate_threshold=0.75)
    fail(policy, 0.0)
    fail(policy, 0.0)
    for _ in range(4):
        succeed(policy, 0.0)
    status = policy.status(0.0)
    assert (status["calls"], status["failures"]) == (4, 0)
    fail(policy, 0.0)
    fail(policy, 0.0)
    assert policy.state == "closed"  # S S F F: 50%
    fail(policy, 0.0)
    assert policy.state == "open"  # S F F F: 75%


def test_time_window_forgets_old_buckets() -> None:
    policy = make(
        failure_threshold=100,
        window_type="time",
        window_size=10,
        min_calls=3,
        error_rate_threshold=0.5,
    )
    fail(policy, 0.0)
    fail(policy, 0.5)
    assert policy.status(9.9)["calls"] == 2
    assert policy.status(10.0)["calls"] == 0  # bucket [0, 1) left the 10 s window
    succeed(policy, 10.0)
    succeed(policy, 10.5)
    fail(policy, 11.0)
    assert policy.state == "closed"  # 1 of 3 within the window; the old failures are gone
    status = policy.status(11.0)
    assert (status["calls"], status["failures"]) == (3, 1)
    fail(policy, 12.0)
    assert policy.state == "open"


def test_time_window_partial_expiry_and_long_gaps() -> None:
    policy = make(failure_threshold=100, window_type="time", window_size=3, min_calls=100)
    for t in (0.0, 1.0, 2.0):
        fail(policy, t)
    assert policy.status(2.5)["calls"] == 3
    assert policy.status(3.0)["calls"] == 2
    assert policy.status(4.0)["calls"] == 1
    succeed(policy, 4.2)
    assert policy.status(4.2)["calls"] == 2
    succeed(policy, 1e6)  # a long gap clears everything in one step
    assert policy.status(1e6)["calls"] == 1


def test_time_window_forgets_slow_calls_too() -> None:
    policy = make(
        failure_threshold=100,
        window_type="time",
        window_size=2,
        min_calls=100,
        slow_call_duration=1.0,
    )
    succeed(policy, 0.0, duration=5.0)
    succeed(policy, 1.0, duration=5.0)
    succeed(policy, 1.5, duration=0.1)
    assert policy.status(1.9)["slow_calls"] == 2
    succeed(policy, 2.0, duration=0.1)  # the bucket [0, 1) leaves the window
    status = policy.status(2.0)
    assert (status["calls"], status["slow_calls"]) == (3, 1)
    assert status["slow_call_rate"] == pytest.approx(1 / 3)


def test_time_window_memory_is_bounded() -> None:
    policy = make(window_type="time", window_size=86400.0, min_calls=10)
    snapshot = policy.snapshot()["window"]
    assert snapshot["buckets"] == 1024
    assert snapshot["width"] == pytest.approx(86400 / 1024)


def test_ignored_outcomes_count_nothing() -> None:
    policy = make(failure_threshold=2, min_calls=2, error_rate_threshold=1.0)
    fail(policy, 0.0)
    for error in (RateLimited(1.0), BulkheadFull("b", 1, 1), QueueFull(5), CircuitOpen("s", 3)):
        fail(policy, 0.0, error=error)
        assert policy.classify(error) == "ignored"
    fail(policy, 0.0, error=KeyboardInterrupt())
    assert policy.state == "closed"
    assert policy.consecutive_failures == 1
    assert policy.status(0.0)["calls"] == 1


def test_operation_timeout_is_a_failure() -> None:
    policy = make(failure_threshold=1)
    fail(policy, 0.0, error=OperationTimeout(2.0))
    assert policy.state == "open"


def test_record_and_ignore_exceptions_by_class_and_name() -> None:
    policy = make(
        failure_threshold=1,
        record_exceptions=("ConnectionError", TimeoutError, f"{__name__}.AppError"),
        ignore_exceptions=("builtins.KeyError",),
    )
    assert policy.classify(ConnectionRefusedError()) == "failure"  # subclass via the MRO
    assert policy.classify(TimeoutError()) == "failure"
    assert policy.classify(AppError()) == "failure"
    assert policy.classify(KeyError("k")) == "ignored"
    assert policy.classify(ValueError()) == "success"  # not recorded: the service answered
    assert policy.classify(RateLimited(1.0)) == "ignored"
    fail(policy, 0.0, error=ValueError("not the service's fault"))
    fail(policy, 0.0, error=KeyError("k"))
    assert policy.state == "closed"
    assert policy.status(0.0)["calls"] == 1  # the ValueError counted as a success
    fail(policy, 0.0, error=ConnectionResetError())
    assert policy.state == "open"


def test_ignore_beats_record() -> None:
    policy = make(record_exceptions=(OSError,), ignore_exceptions=("FileNotFoundError",))
    assert policy.classify(FileNotFoundError()) == "ignored"
    assert policy.classify(PermissionError()) == "failure"


def test_empty_record_exceptions_counts_every_error() -> None:
    policy = make()
    assert policy.classify(ValueError()) == "failure"
    assert policy.classify(AppError()) == "failure"


# ---------------------------------------------------------------------------------------------
# open → half-open → closed / open
# ---------------------------------------------------------------------------------------------


def test_open_rejects_with_retry_after_until_recovery() -> None:
    policy = make(failure_threshold=1, recovery_timeout=30.0)
    fail(policy, 100.0)
    assert policy.next_transition_at == 130.0
    decision = policy.before_call(110.0)
    assert decision == Rejection("open", 20.0)
    assert not decision.admitted
    assert policy.status(110.0)["retry_after"] == 20.0
    permit = policy.before_call(130.0)  # lazily half-open at the due time
    assert isinstance(permit, Permit)
    assert permit.admitted
    assert permit.probe >= 1
    assert policy.state == "half_open"


def test_on_timer_moves_to_half_open() -> None:
    policy = make(failure_threshold=1, recovery_timeout=5.0)
    fail(policy, 0.0)
    policy.drain_transitions()
    policy.on_timer(4.999)
    assert policy.state == "open"
    policy.on_timer(5.0)
    assert policy.state == "half_open"
    assert policy.next_transition_at is None  # no probe out yet
    assert policy.drain_transitions() == (Transition("open", "half_open", "recovery_timeout", 5.0),)


def test_half_open_admits_exactly_max_calls() -> None:
    policy = make(failure_threshold=1, recovery_timeout=1.0, half_open_max_calls=3)
    fail(policy, 0.0)
    decisions = [policy.before_call(1.0 + i * 0.001) for i in range(50)]
    permits = [d for d in decisions if isinstance(d, Permit)]
    rejections = [d for d in decisions if isinstance(d, Rejection)]
    assert len(permits) == 3
    assert len(rejections) == 47
    assert all(r == Rejection("half_open", 0.0) for r in rejections)
    assert decisions[:3] == permits  # the first three callers got the probes
    for permit in permits[:2]:
        policy.on_success(permit, 0.1, 1.1)
        assert policy.state == "half_open"
    policy.on_success(permits[2], 0.1, 1.1)
    assert policy.state == "closed"
    transitions = policy.drain_transitions()
    assert transitions[-1] == Transition("half_open", "closed", "probes_succeeded", 1.1)


def test_any_probe_failure_reopens() -> None:
    policy = make(failure_threshold=1, recovery_timeout=1.0, half_open_max_calls=2)
    fail(policy, 0.0)
    first = admit(policy, 1.0)
    second = admit(policy, 1.0)
    policy.on_success(first, 0.1, 1.1)
    policy.on_failure(second, 0.1, 1.2, ConnectionError())
    assert policy.state == "open"
    assert policy.drain_transitions()[-1].reason == "probe_failed"
    assert policy.next_transition_at == pytest.approx(2.2)


def test_ignored_probe_frees_its_slot() -> None:
    policy = make(failure_threshold=1, recovery_timeout=1.0)
    fail(policy, 0.0)
    probe = admit(policy, 1.0)
    assert isinstance(policy.before_call(1.0), Rejection)
    policy.on_failure(probe, 0.1, 1.1, RateLimited(0.5))
    assert policy.state == "half_open"
    replacement = admit(policy, 1.2)
    policy.on_success(replacement, 0.1, 1.3)
    assert policy.state == "closed"


def test_slow_probes_reopen() -> None:
    policy = make(
        failure_threshold=1,
        recovery_timeout=1.0,
        slow_call_duration=2.0,
        slow_call_rate_threshold=1.0,
    )
    fail(policy, 0.0)
    probe = admit(policy, 1.0)
    policy.on_success(probe, 5.0, 6.0)
    assert policy.state == "open"
    assert policy.drain_transitions()[-1].reason == "probe_slow_calls"


def test_probe_that_never_reports_expires() -> None:
    policy = make(failure_threshold=1, recovery_timeout=10.0, probe_timeout=5.0)
    fail(policy, 0.0)
    probe = admit(policy, 10.0)
    assert policy.next_transition_at == 15.0
    assert policy.before_call(14.9) == Rejection("half_open", 0.0)
    assert not policy.expire_probes(14.9)
    assert policy.expire_probes(15.0)
    assert policy.state == "open"
    assert policy.drain_transitions()[-1] == Transition("half_open", "open", "probe_timeout", 15.0)
    policy.on_success(probe, 5.5, 15.5)  # the straggler is stale now
    assert policy.state == "open"


def test_probe_timeout_at_next_decision_and_default() -> None:
    policy = make(failure_threshold=1, recovery_timeout=4.0)  # probe_timeout = 4.0
    fail(policy, 0.0)
    admit(policy, 4.0)
    decision = policy.before_call(8.0)
    assert decision == Rejection("open", 4.0)
    assert policy.state == "open"
    assert policy.next_transition_at == 12.0


def test_probe_timeout_via_timer() -> None:
    policy = make(failure_threshold=1, recovery_timeout=4.0, probe_timeout=1.0)
    fail(policy, 0.0)
    admit(policy, 4.0)
    policy.on_timer(5.0)
    assert policy.state == "open"


def test_late_report_after_reset_is_ignored() -> None:
    policy = make(failure_threshold=2, min_calls=1, error_rate_threshold=1.0)
    before = admit(policy, 0.0)
    policy.reset(0.5)
    policy.on_success(before, 1.0, 1.0)
    policy.on_failure(before, 1.0, 1.0)
    assert policy.status(1.0)["calls"] == 0
    assert policy.consecutive_failures == 0


def test_late_reports_from_older_generations_are_ignored() -> None:
    policy = make(failure_threshold=2, recovery_timeout=1.0, half_open_max_calls=1)
    slow_success = admit(policy, 0.0)
    slow_failure = admit(policy, 0.0)
    fail(policy, 0.1)
    fail(policy, 0.2)
    assert policy.state == "open"
    policy.on_success(slow_success, 5.0, 0.5)  # admitted while closed: must not count
    policy.on_failure(slow_failure, 5.0, 0.5, ConnectionError())
    assert policy.state == "open"
    probe = admit(policy, 1.2)
    policy.on_success(slow_success, 5.0, 1.3)  # not a probe: must not close the breaker
    assert policy.state == "half_open"
    policy.on_success(probe, 0.1, 1.3)
    assert policy.state == "closed"
    policy.on_failure(slow_failure, 6.0, 1.4, ConnectionError())  # from two generations ago
    policy.on_failure(probe, 0.1, 1.4, ConnectionError())  # a probe reporting twice
    assert policy.consecutive_failures == 0
    assert policy.status(1.4)["calls"] == 0


# ---------------------------------------------------------------------------------------------
# recovery backoff
# ---------------------------------------------------------------------------------------------


def _reopen(policy: BreakerPolicy) -> float:
    """Fail the next probe; return the new wait."""
    due = policy.next_transition_at
    assert due is not None
    probe = admit(policy, due)
    policy.on_failure(probe, 0.1, due)
    return policy.recovery_wait


def test_recovery_backoff_grows_with_jitter_and_caps() -> None:
    cfg = CircuitBreakerConfig(
        failure_threshold=1,
        recovery_timeout=10.0,
        recovery_backoff_multiplier=2.0,
        max_recovery_timeout=50.0,
    )
    policy = BreakerPolicy(cfg, random.Random(42))
    fail(policy, 0.0)
    assert policy.recovery_wait == 10.0  # the first opening is exact
    reference = random.Random(42)
    waits = [_reopen(policy) for _ in range(4)]
    expected = [
        min(max(10.0 * 2**k * reference.uniform(0.9, 1.1), 10.0), 50.0) for k in (1, 2, 3, 4)
    ]
    assert waits == expected
    assert 18.0 <= waits[0] <= 22.0
    assert 36.0 <= waits[1] <= 44.0
    assert waits[2] == waits[3] == 50.0
    assert policy.status(0.0)["reopenings"] == 4
    # a successful close resets the wait
    due = policy.next_transition_at
    assert due is not None
    policy.on_success(admit(policy, due), 0.1, due)
    assert policy.state == "closed"
    fail(policy, due + 1)
    assert policy.recovery_wait == 10.0


def test_default_cap_is_ten_times_recovery() -> None:
    policy = make(failure_threshold=1, recovery_timeout=1.0, recovery_backoff_multiplier=100.0)
    fail(policy, 0.0)
    assert _reopen(policy) == 10.0


def test_no_backoff_without_multiplier() -> None:
    policy = make(failure_threshold=1, recovery_timeout=3.0)
    fail(policy, 0.0)
    assert [_reopen(policy) for _ in range(3)] == [3.0, 3.0, 3.0]


# ---------------------------------------------------------------------------------------------
# manual control
# ---------------------------------------------------------------------------------------------


def test_forced_open_rejects_until_forced_close() -> None:
    policy = make(failure_threshold=3)
    fail(policy, 0.0)
    policy.force_open(1.0)
    assert policy.state == "forced_open"
    decision = policy.before_call(1e9)
    assert isinstance(decision, Rejection)
    assert decision.state == "forced_open"
    assert decision.retry_after == math.inf
    policy.on_timer(1e9)
    assert policy.state == "forced_open"
    assert policy.next_transition_at is None
    policy.force_close(2.0)
    assert policy.state == "closed"
    assert policy.consecutive_failures == 0
    assert [t.reason for t in policy.drain_transitions()] == [
        "forced_open",
        "forced_close",
    ]


def test_force_close_from_open_resets_counters() -> None:
    policy = make(failure_threshold=2)
    trip(policy, 0.0)
    policy.force_close(1.0)
    status = policy.status(1.0)
    assert (status["state"], status["calls"], status["consecutive_failures"]) == ("closed", 0, 0)
    succeed(policy, 1.0)


def test_disabled_admits_everything_and_counts_nothing() -> None:
    policy = make(failure_threshold=1)
    policy.disable()
    for _ in range(10):
        fail(policy, 0.0)
    assert policy.state == "disabled"
    assert policy.status(0.0)["calls"] == 0
    policy.reset(1.0)
    assert policy.state == "closed"
    fail(policy, 1.0)
    assert policy.state == "open"
    assert [t.to_state for t in policy.drain_transitions()] == ["disabled", "closed", "open"]


def test_reset_returns_to_initial_state() -> None:
    policy = make(failure_threshold=1, recovery_timeout=1.0, recovery_backoff_multiplier=2.0)
    fail(policy, 0.0)
    _reopen(policy)
    policy.reset(5.0)
    assert policy.state == "closed"
    assert policy.recovery_wait == 1.0
    assert policy.status(5.0)["reopenings"] == 0


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------


def test_snapshot_restore_keeps_open_state_and_remaining_time() -> None:
    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=30.0)
    policy = BreakerPolicy(cfg, random.Random(0))
    fail(policy, 100.0)
    snapshot = json.loads(json.dumps(policy.snapshot()))  # plain data
    restored = BreakerPolicy.restore(cfg, random.Random(0), snapshot)
    assert restored.state == "open"
    assert restored.before_call(120.0) == Rejection("open", 10.0)
    assert restored.next_transition_at == 130.0
    assert isinstance(restored.before_call(130.0), Permit)


def test_snapshot_restore_keeps_counts_and_permits() -> None:
    cfg = CircuitBreakerConfig(failure_threshold=3, window_size=5, min_calls=5)
    policy = BreakerPolicy(cfg, random.Random(0))
    fail(policy, 0.0)
    fail(policy, 0.0)
    in_flight = admit(policy, 0.0)
    restored = BreakerPolicy.restore(cfg, None, policy.snapshot())
    assert restored.consecutive_failures == 2
    assert restored.status(0.0)["calls"] == 2
    restored.on_failure(in_flight, 0.1, 0.1)  # issued before the restart: still counts
    assert restored.state == "open"


def test_snapshot_restore_time_window_and_half_open() -> None:
    cfg = CircuitBreakerConfig(
        failure_threshold=1,
        recovery_timeout=1.0,
        half_open_max_calls=2,
        window_type="time",
        window_size=5,
    )
    policy = BreakerPolicy(cfg, random.Random(0))
    succeed(policy, 0.0)
    restored = BreakerPolicy.restore(cfg, None, policy.snapshot())
    assert restored.status(0.0)["calls"] == 1
    fail(restored, 0.5)
    probe = admit(restored, 1.5)
    again = BreakerPolicy.restore(cfg, None, json.loads(json.dumps(restored.snapshot())))
    assert again.state == "half_open"
    assert again.status(1.5)["half_open_in_flight"] == 1
    second = admit(again, 1.6)
    assert isinstance(again.before_call(1.6), Rejection)
    again.on_success(probe, 0.1, 1.7)
    again.on_success(second, 0.1, 1.7)
    assert again.state == "closed"


def test_restore_with_changed_window_starts_empty() -> None:
    policy = make(window_size=5, min_calls=5)
    fail(policy, 0.0)
    restored = BreakerPolicy.restore(
        CircuitBreakerConfig(window_size=7, min_calls=5), None, policy.snapshot()
    )
    assert restored.status(0.0)["calls"] == 0
    assert restored.consecutive_failures == 1


@pytest.mark.parametrize(
    "mutation",
    [
        {"version": 99},
        {"state": "ajar"},
        {"generation": "1"},
        {"probes": "none"},
        {"window": None},
        {"opened_at": True},
    ],
)
def test_restore_rejects_malformed_snapshots(mutation: dict[str, object]) -> None:
    snapshot = make().snapshot()
    snapshot.update(mutation)
    with pytest.raises(ValueError, match="invalid breaker snapshot"):
        BreakerPolicy.restore(CircuitBreakerConfig(), None, snapshot)


# ---------------------------------------------------------------------------------------------
# status and config
# ---------------------------------------------------------------------------------------------


def test_status_reports_the_contract_keys() -> None:
    policy = make(failure_threshold=10, min_calls=2, error_rate_threshold=0.75)
    fail(policy, 0.0)
    succeed(policy, 0.0)
    status = policy.status(0.0)
    assert status["state"] == "closed"
    assert status["failures"] == 1
    assert status["consecutive_failures"] == 0
    assert status["error_rate"] == 0.5
    assert status["slow_call_rate"] == 0.0
    assert status["calls"] == 2
    assert status["retry_after"] == 0.0
    assert status["recovery_timeout"] == 30.0
    json.dumps(status)


def test_drain_transitions_empties_the_queue() -> None:
    policy = make(failure_threshold=1)
    assert policy.drain_transitions() == ()
    fail(policy, 0.0)
    assert len(policy.drain_transitions()) == 1
    assert policy.drain_transitions() == ()


def test_config_defaults_and_normalisation() -> None:
    cfg = CircuitBreakerConfig(recovery_timeout=30, record_exceptions=["OSError"])  # type: ignore[arg-type]
    assert cfg.recovery_timeout == 30.0
    assert isinstance(cfg.recovery_timeout, float)
    assert cfg.record_exceptions == ("OSError",)
    assert cfg.effective_max_recovery_timeout == 300.0
    assert cfg.effective_probe_timeout == 30.0
    assert (
        CircuitBreakerConfig(max_recovery_timeout=40, probe_timeout=2).effective_probe_timeout
        == 2.0
    )


def test_from_dict() -> None:
    cfg = CircuitBreakerConfig.from_dict(
        {
            "failure_threshold": 3,
            "recovery_timeout": 60,
            "error_rate_threshold": 0.3,
            "min_calls": 5,
        }
    )
    assert (cfg.failure_threshold, cfg.recovery_timeout, cfg.min_calls) == (3, 60.0, 5)
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig.from_dict({"failure_treshold": 3})
    assert info.value.key == "failure_treshold"
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig.from_dict({"min_calls": 0})
    assert info.value.key == "min_calls"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"failure_threshold": 2.0}, "failure_threshold"),
        ({"recovery_timeout": 0}, "recovery_timeout"),
        ({"recovery_timeout": "30"}, "recovery_timeout"),
        ({"recovery_timeout": math.inf}, "recovery_timeout"),
        ({"error_rate_threshold": 0}, "error_rate_threshold"),
        ({"error_rate_threshold": 1.5}, "error_rate_threshold"),
        ({"min_calls": 0}, "min_calls"),
        ({"min_calls": 200}, "min_calls"),
        ({"window_size": 0}, "window_size"),
        ({"window_size": 10.5}, "window_size"),
        ({"window_type": "time", "window_size": -1}, "window_size"),
        ({"window_type": "sliding"}, "window_type"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_rate_threshold": 0}, "slow_call_rate_threshold"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"recovery_backoff_multiplier": 0.5}, "recovery_backoff_multiplier"),
        ({"max_recovery_timeout": 10}, "max_recovery_timeout"),
        ({"record_exceptions": "ConnectionError"}, "record_exceptions"),
        ({"record_exceptions": [42]}, "record_exceptions"),
        ({"ignore_exceptions": ["not a name"]}, "ignore_exceptions"),
        ({"ignore_exceptions": [int]}, "ignore_exceptions"),
        ({"probe_timeout": 0}, "probe_timeout"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_time_window_accepts_float_seconds() -> None:
    cfg = CircuitBreakerConfig(window_type="time", window_size=2.5, min_calls=100)
    assert cfg.window_size == 2.5
