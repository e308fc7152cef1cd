"""The circuit-breaker actor: one per service, a thin shell around :class:`BreakerPolicy`.

The policy (pure, no locks) is owned by the actor's thread. The actor serves two kinds of
callers:

- **Execute messages** (pipelines, refs): the actor asks the policy, rejects at once with
  :class:`~garrison.errors.CircuitOpen` or hands the operation on with a reply of its own
  (:meth:`Stage.pass_on_observed`). When the outcome comes back it reports it to the policy
  *first* and only then completes the caller's reply, so a caller who waits for one call and
  makes the next sees the state the first one produced. It never waits for an operation:
  any number of them are in flight at once.
- **Handles** (:class:`garrison.breakers.CircuitBreakerHandle`): ``Acquire()`` returns a
  :class:`~garrison.policies.breaker.Permit` (or fails with ``CircuitOpen``), the caller runs
  its function in its own thread, then ``Report(permit, ok, duration, error)`` records the
  outcome. The breaker is never held across a call.

Timed changes are scheduler timers, never sleeps: when the policy has a
``next_transition_at`` (open → half-open, or the oldest half-open probe's timeout) the actor
arms one timer for it and replaces it when the time changes. Every state change is logged as
a ``garrison.breaker.<state>`` event and passed to the transition listeners. ``snapshot()`` /
``restore()`` keep the policy's state across a supervised restart: an open breaker stays open.

With a ``backend`` (see :mod:`garrison.backends`) the breaker shares its trips with the
other processes of the fleet, never touching Redis on the call path: when it opens by
itself (failures, error rate, slow calls, a failed probe) it hands the trip to the
backend's io thread, which records and publishes it; the backend's subscriber tells it
(``FleetTrip``) when other processes tripped, and it opens with the reason ``fleet_trip``.
Half-open probing is fleet-wide: when its recovery wait is over the breaker asks the backend
for the service's probe lock and stays open until the answer (``FleetProbe``) comes; only
the process that holds the lock probes, and when its probes close its breaker the others
close too (``FleetRecovered``); if they fail, its new trip re-opens the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from garrison._clock import Clock
from garrison._future import Future
from garrison._loop import EventLoopThread
from garrison._messages import Execute
from garrison._ref import Ref
from garrison._scheduler import Scheduler, TimerHandle
from garrison.actors._run import copy_outcome
from garrison.actors._stage import Stage
from garrison.backends._protocol import Backend, BreakerFleet, FleetProbe, FleetRecovered, FleetTrip
from garrison.errors import CircuitOpen, Rejected
from garrison.observability.events import Level, emit
from garrison.policies.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitBreakerConfig,
    Permit,
    Transition,
)

__all__ = [
    "Acquire",
    "CircuitBreakerActor",
    "Disable",
    "ForceClose",
    "ForceOpen",
    "Report",
    "Reset",
    "TakeSnapshot",
    "TransitionListener",
]

TransitionListener = Callable[[str, str, str, str], object]
"""``listener(service, from_state, to_state, reason)``, called in the breaker's thread."""

_EVENTS: Final[dict[str, tuple[str, Level]]] = {
    "open": ("garrison.breaker.opened", "warning"),
    "half_open": ("garrison.breaker.half_open", "info"),
    "closed": ("garrison.breaker.closed", "info"),
    "forced_open": ("garrison.breaker.forced_open", "warning"),
    "disabled": ("garrison.breaker.disabled", "warning"),
}
_MIN_TIMER_DELAY: Final = 1e-6
_LOCAL_TRIPS: Final = frozenset(
    {
        "failure_threshold",
        "error_rate",
        "slow_call_rate",
        "probe_failed",
        "probe_timeout",
        "probe_slow_calls",
    }
)
"""Reasons for opening that this process found by itself (and so publishes to the fleet)."""


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    """Ask for a permit to make one call: the reply is a ``Permit`` or a ``CircuitOpen`` error.

    Whoever gets a permit must send exactly one :class:`Report` for it (a probe that never
    reports is timed out after ``probe_timeout``).
    """


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of a call made with ``permit``: ``ok``, or failed (with ``error``).

    ``duration`` is the call's duration in seconds, on the breaker's clock. An ``error`` is
    classified by the policy (garrison's own rejections and cancellations are ignored;
    ``record_exceptions`` / ``ignore_exceptions`` apply); ``ok=False`` with no error is a
    plain failure (a bad result, say). The reply is the breaker's state after the report.
    """

    permit: Permit
    ok: bool
    duration: float = 0.0
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class ForceOpen:
    """Reject every call until ``ForceClose`` or ``Reset``; the reply is the new state."""


@dataclass(frozen=True, slots=True)
class ForceClose:
    """Close the breaker with fresh counters; the reply is the new state."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Return to the initial state (closed, empty window); the reply is the new state."""


@dataclass(frozen=True, slots=True)
class Disable:
    """Admit every call and count nothing until reset or forced; the reply is the new state."""


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Ask for the breaker's state as plain data (what a supervisor keeps across a restart)."""


@dataclass(frozen=True, slots=True, eq=False)
class _Tick:
    """A timer of the breaker: apply the policy's timed changes (stale tokens are ignored)."""

    token: object


# -- the actor --------------------------------------------------------------------------------


class CircuitBreakerActor(Stage):
    """One service's circuit breaker. See the module docstring.

    ``config`` is a :class:`CircuitBreakerConfig`; ``downstream`` the Ref operations are
    handed to (None: the breaker runs them itself, coroutines on ``loop``). ``service`` names
    the service in errors, events and status. ``clock`` and ``scheduler`` are injected (a
    Runtime or Supervisor supplies its own); without a scheduler the actor makes one and
    stops it when it stops. ``seed`` seeds the recovery-backoff jitter. ``listeners`` are
    called as ``listener(service, from_state, to_state, reason)`` on every state change, in
    the actor's thread; their exceptions are logged, never raised.
    """

    stage = "circuit_breaker"

    def __init__(
        self,
        config: CircuitBreakerConfig,
        downstream: Ref | None = None,
        *,
        service: str = "service",
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        loop: EventLoopThread | None = None,
        seed: int | None = None,
        listeners: Sequence[TransitionListener] = (),
        backend: Backend | None = None,
        initial_state: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(downstream, clock=clock, scheduler=scheduler, loop=loop)
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        if not isinstance(service, str) or not service:
            raise ValueError(f"service must be a non-empty string, got {service!r}")
        for listener in listeners:
            if not callable(listener):
                raise TypeError(f"listeners must be callables, got {listener!r}")
        self.config = config
        self.service = service
        self.listeners: tuple[TransitionListener, ...] = tuple(listeners)
        self._rng = random.Random(seed)
        self.policy = BreakerPolicy(config, self._rng)
        if initial_state is not None:  # taken over from another breaker (see snapshot())
            self.policy = BreakerPolicy.restore(config, self._rng, dict(initial_state))
        self._totals = dict.fromkeys(("successful", "failed", "slow", "rejected", "ignored"), 0)
        self._timer: TimerHandle | None = None
        self._timer_due: float | None = None
        self._timer_token: object | None = None
        self._fleet: BreakerFleet | None = backend.fleet if backend is not None else None
        self._fleet_token: object | None = None
        self._probe = "idle"  # the fleet probe lock: idle, asking, denied or granted
        self._probe_token: object | None = None
        self._probe_retry_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Arm what a restored state needs; join the fleet (if any)."""
        if self._fleet is not None:
            self._fleet_token = self._fleet.register(self.service, self.self_ref, self.config)
        self._sync()

    def on_stop(self) -> None:
        """Cancel the pending timer (and stop the scheduler this actor made, if any)."""
        self._release()

    def on_failure(self, *_exc: Any) -> None:
        """A crash: cancel the timer; a restarted incarnation arms its own."""
        self._release()

    def _release(self) -> None:
        self._cancel_timer()
        self.release_scheduler()
        fleet = self._fleet
        if fleet is not None and self._fleet_token is not None:
            fleet.unregister(self._fleet_token)
            self._fleet_token = None
            if self._probe == "granted":
                fleet.release_probe(self.service)

    def snapshot(self) -> dict[str, Any]:
        """The policy's state as plain data (taken by a supervisor before a restart)."""
        return self.policy.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        """Take over a predecessor's :meth:`snapshot` (called before ``on_start``)."""
        self.policy = BreakerPolicy.restore(self.config, self._rng, state)

    # -- operations -----------------------------------------------------------------------------

    def handle_execute(self, message: Execute, reply: Future[Any]) -> None:
        """Reject at once when the breaker refuses; otherwise hand on and observe."""
        policy = self.policy
        now = self.clock.monotonic()
        if policy.state != "closed" and self._fleet_holds(now):
            self._refuse_for_fleet(reply, now)
            return
        decision = policy.before_call(now)
        meta = reply.meta
        if meta is not None:
            meta["circuit_state"] = policy.state if isinstance(decision, Permit) else decision.state
        if isinstance(decision, Permit):
            self.pass_on_observed(message, reply, (decision, now))
            if decision.probe:
                self._sync()
            return
        self._totals["rejected"] += 1
        self._sync()  # before answering: the caller should not wait for us to finish
        reply.try_set_exception(
            CircuitOpen(self.service, decision.retry_after, state=decision.state)
        )

    def handle_outcome(self, context: Any, outcome: Future[Any], reply: Future[Any]) -> None:
        """Report the outcome to the policy first, then complete the caller's reply."""
        permit, started_at = context
        now = self.clock.monotonic()
        error = outcome.exception(0)
        self._record(permit, error is None, now - started_at, error, now)
        if reply.meta is not None:
            reply.meta["circuit_state"] = self.policy.state
        copy_outcome(outcome, reply)

    def handle_other(self, message: Any) -> Any:
        """Permits, reports, manual control and timers; anything else is refused."""
        if isinstance(message, Acquire):
            return self._acquire()
        if isinstance(message, Report):
            now = self.clock.monotonic()
            self._record(message.permit, message.ok, message.duration, message.error, now)
            return self.policy.state
        if isinstance(message, _Tick):
            if message.token is self._timer_token:
                self._timer = self._timer_due = self._timer_token = None
                self._sync()
            return None
        if isinstance(message, FleetTrip | FleetRecovered | FleetProbe):
            self._from_fleet(message)
            return None
        if isinstance(message, ForceOpen | ForceClose | Reset | Disable):
            return self._manual(message)
        if isinstance(message, TakeSnapshot):
            return self.snapshot()
        return super().handle_other(message)

    def _acquire(self) -> Permit | None:
        now = self.clock.monotonic()
        if self.policy.state != "closed" and self._fleet_holds(now):
            self._refuse_for_fleet(self.defer(), now)
            return None
        decision = self.policy.before_call(now)
        if isinstance(decision, Permit):
            if decision.probe:
                self._sync()
            return decision
        self._totals["rejected"] += 1
        self.reject(CircuitOpen(self.service, decision.retry_after, state=decision.state))
        self._sync()
        return None

    def _record(
        self, permit: Permit, ok: bool, duration: float, error: BaseException | None, now: float
    ) -> None:
        policy = self.policy
        totals = self._totals
        if ok:
            policy.on_success(permit, duration, now)
            totals["successful"] += 1
        elif isinstance(error, Rejected):
            policy.on_ignored(permit)  # garrison's own rejection says nothing of the service
            totals["ignored"] += 1
        else:
            policy.on_failure(permit, duration, now, error)
            kind = policy.classify(error) if error is not None else "failure"
            totals[
                "failed" if kind == "failure" else "successful" if kind == "success" else "ignored"
            ] += 1
        slow = self.config.slow_call_duration
        if slow is not None and duration >= slow and not isinstance(error, Rejected):
            totals["slow"] += 1
        self._sync()

    def _manual(self, message: ForceOpen | ForceClose | Reset | Disable) -> BreakerState:
        policy = self.policy
        now = self.clock.monotonic()
        if isinstance(message, ForceOpen):
            policy.force_open(now)
        elif isinstance(message, ForceClose):
            policy.force_close(now)
        elif isinstance(message, Reset):
            policy.reset(now)
        else:
            policy.disable(now)
        self._sync()
        return policy.state

    # -- status ---------------------------------------------------------------------------------

    def runs_inline(self) -> bool:
        """True when it has a downstream (it never runs operations itself then) and shares
        no trips through a backend (see :meth:`Stage.runs_inline`)."""
        return self.downstream is not None and self._fleet is None

    def status(self) -> dict[str, Any]:
        """The policy's status (see ``BreakerPolicy.status``) plus ``stage``, ``service`` and
        ``totals``: calls since this incarnation started, by kind (successful, failed,
        slow, rejected, ignored)."""
        status = {
            "stage": self.stage,
            "service": self.service,
            **self.policy.status(self.clock.monotonic()),
            "totals": dict(self._totals),
        }
        if self._fleet is not None:
            status["fleet_probe"] = self._probe  # the fleet's probe lock: idle/asking/...
        return status

    # -- timers and transitions -----------------------------------------------------------------

    def _sync(self) -> None:
        """Apply overdue timed changes, announce transitions, (re)arm the timer."""
        policy = self.policy
        now = self.clock.monotonic()
        due = policy.next_transition_at
        if due is not None and due <= now:
            if self._fleet_holds(now):  # half-open waits for the fleet's probe lock
                due = self._probe_retry_at if self._probe == "denied" else None
            else:
                policy.on_timer(now)
                due = policy.next_transition_at
        transitions = policy.drain_transitions()
        if transitions:
            self._announce(transitions)
        if due != self._timer_due:
            self._cancel_timer()
            if due is not None:
                self._arm(due, now)

    def _arm(self, due: float, now: float) -> None:
        token = object()
        try:
            handle = self.schedule(max(due - now, _MIN_TIMER_DELAY), _Tick(token))
        except RuntimeError:  # the scheduler has stopped: the runtime is shutting down
            return
        self._timer, self._timer_due, self._timer_token = handle, due, token

    def _cancel_timer(self) -> None:
        timer = self._timer
        self._timer = self._timer_due = self._timer_token = None
        if timer is not None:
            timer.cancel()

    # -- the fleet (a shared backend) -------------------------------------------------------

    def _fleet_holds(self, now: float) -> bool:
        """True while the breaker must stay open because another process may be probing:
        its wait is over but this process does not hold the fleet's probe lock (asked for
        here, once; the answer comes as a FleetProbe)."""
        policy = self.policy
        if self._fleet is None or self._probe == "granted" or policy.state != "open":
            return False
        if policy.retry_after(now) > 0.0:
            return False
        if self._probe == "idle" or (self._probe == "denied" and now >= self._probe_retry_at):
            self._probe = "asking"
            self._probe_token = token = object()
            ttl = self.config.effective_probe_timeout
            self._fleet.request_probe(self.service, self.self_ref, token, ttl)
        return True

    def _refuse_for_fleet(self, reply: Future[Any], now: float) -> None:
        self._totals["rejected"] += 1
        wait = max(self._probe_retry_at - now, 0.0) if self._probe == "denied" else 0.0
        reply.try_set_exception(CircuitOpen(self.service, wait, state="open"))

    def _from_fleet(self, message: FleetTrip | FleetRecovered | FleetProbe) -> None:
        now = self.clock.monotonic()
        if isinstance(message, FleetTrip):
            self.policy.trip(now, now - message.age)
        elif isinstance(message, FleetRecovered):
            self.policy.recover(now)
        else:
            if message.token is not self._probe_token or self._probe != "asking":
                return
            if message.granted:
                self._probe = "granted"
            else:
                self._probe = "denied"
                self._probe_retry_at = now + max(message.wait, self.config.recovery_timeout / 10)
        self._sync()

    def _share(self, record: Transition) -> None:
        """Tell the fleet what this process found; forget the probe lock on a state change."""
        fleet = self._fleet
        if fleet is None or record.to_state == "half_open":  # probing: keep the lock
            return
        held = self._probe == "granted"
        self._probe = "idle"
        self._probe_token = None
        if record.to_state == "open" and record.reason in _LOCAL_TRIPS:
            fleet.tripped(self.service, self.config)
        if held:
            if record.to_state == "closed" and record.reason == "probes_succeeded":
                fleet.recovered(self.service)
            else:
                fleet.release_probe(self.service)

    def _announce(self, transitions: Sequence[Transition]) -> None:
        service = self.service
        for record in transitions:
            self._share(record)
            event, level = _EVENTS[record.to_state]
            fields: dict[str, Any] = {
                "service": service,
                "from_state": record.from_state,
                "to_state": record.to_state,
                "reason": record.reason,
            }
            if record.to_state == "open":
                fields["alert"] = True
                fields["text"] = f"ALERT: Circuit breaker open for {service}"
                fields["recovery_timeout"] = self.policy.recovery_wait
            emit(event, level=level, **fields)
            for listener in self.listeners:
                try:
                    listener(service, record.from_state, record.to_state, record.reason)
                except Exception as error:
                    emit(
                        "garrison.breaker.listener_failed",
                        level="error",
                        service=service,
                        listener=repr(listener),
                        error=error,
                    )
