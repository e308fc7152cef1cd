"""Prometheus metrics of a garrison :class:`~garrison.Runtime`, read when Prometheus scrapes.

The integration is **pull-based**: nothing is counted on the hot path. At scrape time a
:class:`RuntimeCollector` asks every stage of every pipeline and every standalone circuit
breaker for its status (``GetStatus``, all asked at once), reads the supervision tree and the
dead letters, and turns what they report into metric families with stable names and labels,
modelled on resilience4j's Micrometer set. A stage that does not answer within the
collector's ``timeout`` is left out of that scrape and counted in
``garrison_scrape_errors_total``: a scrape never hangs and never raises. A stage that stays
stuck gets one status request at a time, never one more per scrape. (The supervision tree is
read with ``SupervisorRef.tree``, which gives each nested supervisor the remaining time and
leaves out the children of one that does not answer.)

prometheus-client is an optional dependency (``pip install 'garrison[metrics]'``); the rest
of garrison never imports it.

```python
from garrison.observability.metrics import metrics_app, register, start_metrics_server

collector = register(rt)                     # a RuntimeCollector in a new CollectorRegistry
collector.registry                           # ... which you may also expose yourself
server, port = start_metrics_server(rt, port=9464)   # GET http://127.0.0.1:9464/metrics
server.stop()                                # no thread left behind
app = metrics_app(rt)                        # or an ASGI app (uvicorn, hypercorn, ...)
```

Metrics
-------

``name`` is the pipeline's name for the stages of a pipeline (a pipeline's breaker is also
``rt.breakers.get(name)``) and the service name for a standalone breaker of ``rt.breakers``.
Counters are the actors' own counters: they restart from 0 when a supervisor restarts the
actor (Prometheus' ``rate()`` and ``increase()`` handle such resets).

Runtime and scrape

- ``garrison_runtime_up`` (gauge): 1 while the runtime is running, else 0 (a runtime that is
  not running is not asked for anything).
- ``garrison_dead_letters_total`` (counter): messages that ended in the runtime's dead
  letters.
- ``garrison_scrape_errors_total{source, reason}`` (counter): status requests that failed,
  so that ``source`` was left out of a scrape; ``source`` is ``pipeline:<name>/<stage>``,
  ``breaker:<name>`` or ``tree``; ``reason`` is ``timeout`` (no answer within the
  collector's timeout), ``unavailable`` (the actor is not running) or ``error``.
- ``garrison_scrape_duration_seconds`` (gauge): how long the last collection took.

Circuit breakers (``rt.breakers``: pipeline breakers and standalone ones)

- ``garrison_circuitbreaker_state{name, state}`` (gauge): 1 for the current state, 0 for the
  others; ``state`` is ``closed``, ``open``, ``half_open``, ``forced_open``, ``disabled``.
- ``garrison_circuitbreaker_buffered_calls{name, kind}`` (gauge): calls in the breaker's
  sliding window (last ``window_size`` calls or seconds), ``kind`` ``successful`` or
  ``failed``.
- ``garrison_circuitbreaker_slow_calls{name}`` (gauge): slow calls in the window.
- ``garrison_circuitbreaker_failure_rate{name}`` (gauge): failed / all calls in the window,
  0 to 1.
- ``garrison_circuitbreaker_slow_call_rate{name}`` (gauge): slow / all calls in the window,
  0 to 1.
- ``garrison_circuitbreaker_consecutive_failures{name}`` (gauge): failures since the last
  success.
- ``garrison_circuitbreaker_retry_after_seconds{name}`` (gauge): how long until the breaker
  admits a call again (0 when it admits calls).
- ``garrison_circuitbreaker_recovery_timeout_seconds{name}`` (gauge): the current wait from
  open to half-open (it grows with each re-opening when recovery backoff is configured).
- ``garrison_circuitbreaker_calls_total{name, kind}`` (counter): calls since the breaker
  (this incarnation) started, ``kind`` ``successful``, ``failed``, ``slow``, ``rejected``
  (refused while open) or ``ignored`` (garrison's own rejections from further down).

Rate limiters

- ``garrison_ratelimiter_admitted_total{name}`` (counter): operations admitted.
- ``garrison_ratelimiter_rejected_total{name, reason}`` (counter): operations refused;
  ``reason`` ``rate_limited`` (``RateLimited``), ``queue_full`` (``QueueFull``) or
  ``queue_timeout`` (``QueueTimeout``: waited in the queue too long).
- ``garrison_ratelimiter_queue_depth{name, priority}`` (gauge): operations waiting, by
  priority (``high``, ``normal``, ``low``).
- ``garrison_ratelimiter_limit{name, window}`` (gauge): the configured limit of each window
  (``window`` is its label: ``1s``, ``1m``, ``1h``, ...).
- ``garrison_ratelimiter_effective_limit{name, window}`` (gauge): the limit in force now
  (lower than the configured one while adaptive throttling holds the rate down).
- ``garrison_ratelimiter_rate_factor{name}`` (gauge): effective / configured rate, 0 to 1.
- ``garrison_ratelimiter_paused_seconds{name}`` (gauge): how long admissions stay paused by
  a ``RateLimitFeedback(retry_after=...)`` (0: not paused).
- ``garrison_ratelimiter_keys{name}`` (gauge): client keys the limiter tracks.
- ``garrison_ratelimiter_feedbacks_total{name}`` (counter): ``RateLimitFeedback`` signals
  received (429/503 from the service, or sent by users).

Bulkheads (every pipeline has one: the default pool when none is configured)

- ``garrison_bulkhead_in_use{name}`` (gauge): operations running now.
- ``garrison_bulkhead_queued{name}`` (gauge): operations waiting for a slot.
- ``garrison_bulkhead_idle_workers{name}`` (gauge): workers free for a new operation.
- ``garrison_bulkhead_stuck_workers{name}`` (gauge): retired workers still stuck in a
  timed-out call.
- ``garrison_bulkhead_max_workers{name}``, ``garrison_bulkhead_max_concurrent{name}``,
  ``garrison_bulkhead_max_queue{name}`` (gauges): the configured bounds.
- ``garrison_bulkhead_completed_total{name}`` (counter): operations that finished (abandoned
  ones included, once they return).
- ``garrison_bulkhead_rejected_total{name}`` (counter): operations refused with
  ``BulkheadFull``.
- ``garrison_bulkhead_wait_timeouts_total{name}`` (counter): operations that waited longer
  than ``max_wait`` for a slot.
- ``garrison_bulkhead_abandoned_total{name}`` (counter): operations abandoned after their
  timeout (their caller was answered with ``OperationTimeout``).

Timeouts

- ``garrison_timeout_timeouts_total{name}`` (counter): operations answered with
  ``OperationTimeout``.
- ``garrison_timeout_completed_total{name}`` (counter): operations that finished in time
  (successfully or not).
- ``garrison_timeout_current_seconds{name}`` (gauge): the timeout given to the next
  operation (adaptive timeouts move it).
- ``garrison_timeout_pending{name}`` (gauge): operations running under the timeout now.

Retries

- ``garrison_retry_calls_total{name, outcome}`` (counter): operations by outcome:
  ``successful_without_retry``, ``successful_with_retry``, ``failed`` (the caller got an
  error, retried or not) and ``abandoned`` (the retry actor stopped while it waited).
- ``garrison_retry_gave_up_total{name, reason}`` (counter): failed operations by the reason
  the retry stage stopped (``not_retryable``, ``attempts_exhausted``, ``deadline``,
  ``budget_exhausted``, ``retry_after_too_long``, ...).
- ``garrison_retry_attempts_total{name}`` (counter): attempts made, first attempts included.
- ``garrison_retry_retries_total{name}`` (counter): retries scheduled.
- ``garrison_retry_waiting{name}`` (gauge): operations waiting for their next attempt.
- ``garrison_retry_in_flight{name}`` (gauge): attempts running downstream now.
- ``garrison_retry_budget_tokens{name}`` (gauge): tokens left in the retry budget (only for a
  retry stage with a budget).

Fallbacks

- ``garrison_fallback_used_total{name, source}`` (counter): failures answered with a
  substitute; ``source`` ``cache``, ``value`` or ``callable`` (routed failures included).
- ``garrison_fallback_successes_total{name}`` (counter): operations that succeeded, with no
  fallback needed.
- ``garrison_fallback_reraised_total{name}`` (counter): failures with nothing to substitute.
- ``garrison_fallback_passed_through_total{name}`` (counter): cancellations, never replaced.
- ``garrison_fallback_callable_failed_total{name}`` (counter): fallback callables that
  raised.
- ``garrison_fallback_routed_total{name, source}`` (counter): failures routed from a
  supervisor (``OperationFailed``), by the source that answered them (``none``: nothing did).
- ``garrison_fallback_cache_size{name}`` (gauge): entries in the last-success cache.

Shared backend (a runtime with ``backend=``; see :mod:`garrison.backends`)

- ``garrison_backend_up{backend}`` (gauge): 1 while Redis answers (the breaker on its
  connection is closed), 0 while limiters decide per ``on_backend_error``.
- ``garrison_backend_degraded_total{backend}`` (counter): how often the backend became
  unreachable (each also logged as ``garrison.backend.degraded``).
- ``garrison_backend_errors_total{backend}`` (counter): Redis calls that failed.
- ``garrison_backend_processes{backend}`` (gauge): the ``N`` of the local share (configured,
  or the processes last seen in the heartbeat set).

Supervision (the runtime's tree: its root supervisor and everything below it)

- ``garrison_supervisor_restarts_total{supervisor}`` (counter): restarts a supervisor carried
  out; ``supervisor`` is its path (``<runtime>``, ``<runtime>/pipeline:<name>``, ...).
- ``garrison_actor_restarts_total{path}`` (counter): how often the child at ``path`` was
  restarted.
- ``garrison_actor_up{path}`` (gauge): 1 while the child at ``path`` is running, 0 while it is
  restarting or stopped.
- ``garrison_supervisor_give_ups_total{path}`` (counter): how often the nested supervisor at
  ``path`` gave up (more restarts than its intensity allows) and was escalated to its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, ClassVar, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as missing:  # pragma: no cover - exercised with prometheus_client hidden
    raise ImportError(
        "garrison.observability.metrics needs prometheus-client, which garrison installs "
        "only with its 'metrics' extra: pip install 'garrison[metrics]'",
        name="prometheus_client",
    ) from missing

from garrison._messages import GetStatus
from garrison.errors import ActorUnavailable, AskTimeout
from garrison.observability.events import emit
from garrison.pipeline import STAGE_ORDER

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from garrison._future import Future
    from garrison._ref import Ref
    from garrison._runtime import Runtime

__all__ = [
    "METRICS",
    "MetricsApp",
    "MetricsServer",
    "RuntimeCollector",
    "metrics_app",
    "register",
    "start_metrics_server",
]

# -- the metrics ------------------------------------------------------------------------------

METRICS: Final[dict[str, tuple[str, tuple[str, ...], str]]] = {
    # name: (type, labels, help)
    "garrison_runtime_up": ("gauge", (), "1 while the runtime is running, else 0."),
    "garrison_dead_letters_total": (
        "counter",
        (),
        "Messages that ended in the runtime's dead letters.",
    ),
    "garrison_scrape_errors_total": (
        "counter",
        ("source", "reason"),
        "Status requests that failed, leaving their source out of a scrape.",
    ),
    "garrison_scrape_duration_seconds": (
        "gauge",
        (),
        "How long the last collection of garrison metrics took.",
    ),
    "garrison_circuitbreaker_state": (
        "gauge",
        ("name", "state"),
        "1 for the circuit breaker's current state, 0 for the others.",
    ),
    "garrison_circuitbreaker_buffered_calls": (
        "gauge",
        ("name", "kind"),
        "Calls in the circuit breaker's sliding window, successful or failed.",
    ),
    "garrison_circuitbreaker_slow_calls": (
        "gauge",
        ("name",),
        "Slow calls in the circuit breaker's sliding window.",
    ),
    "garrison_circuitbreaker_failure_rate": (
        "gauge",
        ("name",),
        "Failed / all calls in the circuit breaker's sliding window (0 to 1).",
    ),
    "garrison_circuitbreaker_slow_call_rate": (
        "gauge",
        ("name",),
        "Slow / all calls in the circuit breaker's sliding window (0 to 1).",
    ),
    "garrison_circuitbreaker_consecutive_failures": (
        "gauge",
        ("name",),
        "Failures since the circuit breaker's last success.",
    ),
    "garrison_circuitbreaker_retry_after_seconds": (
        "gauge",
        ("name",),
        "Seconds until the circuit breaker admits a call again (0: it admits calls).",
    ),
    "garrison_circuitbreaker_recovery_timeout_seconds": (
        "gauge",
        ("name",),
        "The circuit breaker's current wait from open to half-open.",
    ),
    "garrison_circuitbreaker_calls_total": (
        "counter",
        ("name", "kind"),
        "Calls through the circuit breaker, by kind: successful, failed, slow, rejected, ignored.",
    ),
    "garrison_ratelimiter_feedbacks_total": (
        "counter",
        ("name",),
        "RateLimitFeedback signals the rate limiter received.",
    ),
    "garrison_ratelimiter_admitted_total": (
        "counter",
        ("name",),
        "Operations the rate limiter admitted.",
    ),
    "garrison_ratelimiter_rejected_total": (
        "counter",
        ("name", "reason"),
        "Operations the rate limiter refused: rate_limited, queue_full or queue_timeout.",
    ),
    "garrison_ratelimiter_queue_depth": (
        "gauge",
        ("name", "priority"),
        "Operations waiting in the rate limiter's queue, by priority.",
    ),
    "garrison_ratelimiter_limit": (
        "gauge",
        ("name", "window"),
        "The configured limit of each rate-limit window.",
    ),
    "garrison_ratelimiter_effective_limit": (
        "gauge",
        ("name", "window"),
        "The limit of each rate-limit window in force now (adaptive throttling lowers it).",
    ),
    "garrison_ratelimiter_rate_factor": (
        "gauge",
        ("name",),
        "Effective / configured rate of the rate limiter (0 to 1).",
    ),
    "garrison_ratelimiter_paused_seconds": (
        "gauge",
        ("name",),
        "Seconds the rate limiter's admissions stay paused by a Retry-After feedback.",
    ),
    "garrison_ratelimiter_keys": ("gauge", ("name",), "Client keys the rate limiter tracks."),
    "garrison_bulkhead_in_use": ("gauge", ("name",), "Operations the bulkhead runs now."),
    "garrison_bulkhead_queued": ("gauge", ("name",), "Operations waiting for a bulkhead slot."),
    "garrison_bulkhead_idle_workers": ("gauge", ("name",), "Idle workers of the bulkhead."),
    "garrison_bulkhead_stuck_workers": (
        "gauge",
        ("name",),
        "Retired bulkhead workers still stuck in a timed-out call.",
    ),
    "garrison_bulkhead_max_workers": ("gauge", ("name",), "The bulkhead's max_workers."),
    "garrison_bulkhead_max_concurrent": ("gauge", ("name",), "The bulkhead's max_concurrent."),
    "garrison_bulkhead_max_queue": ("gauge", ("name",), "The bulkhead's max_queue."),
    "garrison_bulkhead_completed_total": (
        "counter",
        ("name",),
        "Operations the bulkhead ran to completion (abandoned ones included once they return).",
    ),
    "garrison_bulkhead_rejected_total": (
        "counter",
        ("name",),
        "Operations the bulkhead refused with BulkheadFull.",
    ),
    "garrison_bulkhead_wait_timeouts_total": (
        "counter",
        ("name",),
        "Operations that waited longer than max_wait for a bulkhead slot.",
    ),
    "garrison_bulkhead_abandoned_total": (
        "counter",
        ("name",),
        "Operations the bulkhead abandoned after their timeout.",
    ),
    "garrison_timeout_timeouts_total": (
        "counter",
        ("name",),
        "Operations answered with OperationTimeout.",
    ),
    "garrison_timeout_completed_total": (
        "counter",
        ("name",),
        "Operations that finished within their timeout.",
    ),
    "garrison_timeout_current_seconds": (
        "gauge",
        ("name",),
        "The timeout given to the next operation.",
    ),
    "garrison_timeout_pending": (
        "gauge",
        ("name",),
        "Operations running under the timeout stage now.",
    ),
    "garrison_retry_calls_total": (
        "counter",
        ("name", "outcome"),
        "Operations of the retry stage by outcome.",
    ),
    "garrison_retry_gave_up_total": (
        "counter",
        ("name", "reason"),
        "Failed operations by the reason the retry stage stopped retrying.",
    ),
    "garrison_retry_attempts_total": (
        "counter",
        ("name",),
        "Attempts made by the retry stage, first attempts included.",
    ),
    "garrison_retry_retries_total": (
        "counter",
        ("name",),
        "Retries the retry stage scheduled.",
    ),
    "garrison_retry_waiting": (
        "gauge",
        ("name",),
        "Operations waiting for their next attempt.",
    ),
    "garrison_retry_in_flight": ("gauge", ("name",), "Attempts running downstream now."),
    "garrison_retry_budget_tokens": (
        "gauge",
        ("name",),
        "Tokens left in the retry budget.",
    ),
    "garrison_fallback_used_total": (
        "counter",
        ("name", "source"),
        "Failures answered with a substitute, by source: cache, value or callable.",
    ),
    "garrison_fallback_successes_total": (
        "counter",
        ("name",),
        "Operations that succeeded with no fallback needed.",
    ),
    "garrison_fallback_reraised_total": (
        "counter",
        ("name",),
        "Failures the fallback stage had nothing to substitute for.",
    ),
    "garrison_fallback_passed_through_total": (
        "counter",
        ("name",),
        "Cancellations the fallback stage passed on unchanged.",
    ),
    "garrison_fallback_callable_failed_total": (
        "counter",
        ("name",),
        "Fallback callables that raised.",
    ),
    "garrison_fallback_routed_total": (
        "counter",
        ("name", "source"),
        "Failures routed from a supervisor, by the source that answered them.",
    ),
    "garrison_fallback_cache_size": (
        "gauge",
        ("name",),
        "Entries in the fallback's last-success cache.",
    ),
    "garrison_backend_up": (
        "gauge",
        ("backend",),
        "1 while the shared backend (Redis) answers, else 0.",
    ),
    "garrison_backend_degraded_total": (
        "counter",
        ("backend",),
        "How often the shared backend became unreachable.",
    ),
    "garrison_backend_errors_total": (
        "counter",
        ("backend",),
        "Calls to the shared backend that failed.",
    ),
    "garrison_backend_processes": (
        "gauge",
        ("backend",),
        "The number of processes a local share of each limit is computed for.",
    ),
    "garrison_supervisor_restarts_total": (
        "counter",
        ("supervisor",),
        "Restarts a supervisor carried out.",
    ),
    "garrison_actor_restarts_total": (
        "counter",
        ("path",),
        "How often a supervised actor was restarted.",
    ),
    "garrison_actor_up": (
        "gauge",
        ("path",),
        "1 while a supervised actor is running, else 0.",
    ),
    "garrison_supervisor_give_ups_total": (
        "counter",
        ("path",),
        "How often a nested supervisor gave up and escalated to its parent.",
    ),
}
"""Every metric: name -> (type, label names, help). The module docstring explains each."""

BREAKER_STATES: Final = ("closed", "open", "half_open", "forced_open", "disabled")

_STATUS: Final = GetStatus()


def _families() -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for name, (kind, labels, documentation) in METRICS.items():
        if kind == "counter":
            families[name] = CounterMetricFamily(name, documentation, labels=labels)
        else:
            families[name] = GaugeMetricFamily(name, documentation, labels=labels)
    return families


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _Sink:
    """The metric families of one collection; :meth:`add` skips values that are not numbers."""

    def __init__(self) -> None:
        self.families = _families()

    def add(self, metric: str, labels: tuple[str, ...], value: object) -> None:
        number = _number(value)
        if number is None:
            return
        family = self.families[metric]
        if isinstance(family, CounterMetricFamily) and not (number >= 0 and math.isfinite(number)):
            return  # a counter is never negative (nor NaN)
        family.add_metric(labels, number)

    def add_each(self, metric: str, name: str, values: object) -> None:
        """One sample per item of the mapping ``values``, labelled ``(name, key)``."""
        if isinstance(values, Mapping):
            for key, value in values.items():
                self.add(metric, (name, str(key)), value)


# -- status -> metrics ------------------------------------------------------------------------


def _breaker(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    state = status.get("state")
    if isinstance(state, str):
        for candidate in BREAKER_STATES:
            out.add("garrison_circuitbreaker_state", (name, candidate), int(candidate == state))
        if state not in BREAKER_STATES:
            out.add("garrison_circuitbreaker_state", (name, state), 1)
    calls, failures = _number(status.get("calls")), _number(status.get("failures"))
    if calls is not None and failures is not None:
        out.add("garrison_circuitbreaker_buffered_calls", (name, "successful"), calls - failures)
        out.add("garrison_circuitbreaker_buffered_calls", (name, "failed"), failures)
    for metric, key in (
        ("garrison_circuitbreaker_slow_calls", "slow_calls"),
        ("garrison_circuitbreaker_failure_rate", "error_rate"),
        ("garrison_circuitbreaker_slow_call_rate", "slow_call_rate"),
        ("garrison_circuitbreaker_consecutive_failures", "consecutive_failures"),
        ("garrison_circuitbreaker_retry_after_seconds", "retry_after"),
        ("garrison_circuitbreaker_recovery_timeout_seconds", "recovery_timeout"),
    ):
        out.add(metric, (name,), status.get(key))
    totals = status.get("totals")
    if isinstance(totals, Mapping):
        for kind, count in totals.items():
            out.add("garrison_circuitbreaker_calls_total", (name, str(kind)), count)


def _limiter(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    out.add("garrison_ratelimiter_admitted_total", (name,), status.get("admitted"))
    out.add("garrison_ratelimiter_feedbacks_total", (name,), status.get("feedbacks"))
    for reason, key in (
        ("rate_limited", "rejected"),
        ("queue_full", "queue_full"),
        ("queue_timeout", "queue_timeouts"),
    ):
        out.add("garrison_ratelimiter_rejected_total", (name, reason), status.get(key))
    out.add_each("garrison_ratelimiter_queue_depth", name, status.get("queue_depth"))
    out.add_each("garrison_ratelimiter_limit", name, status.get("limits"))
    out.add_each("garrison_ratelimiter_effective_limit", name, status.get("effective_limits"))
    out.add("garrison_ratelimiter_rate_factor", (name,), status.get("rate_factor"))
    out.add("garrison_ratelimiter_paused_seconds", (name,), status.get("paused_for"))
    out.add("garrison_ratelimiter_keys", (name,), status.get("keys"))


def _bulkhead(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    for key in (
        "in_use",
        "queued",
        "idle_workers",
        "stuck_workers",
        "max_workers",
        "max_concurrent",
        "max_queue",
    ):
        out.add(f"garrison_bulkhead_{key}", (name,), status.get(key))
    for key in ("completed", "rejected", "wait_timeouts", "abandoned"):
        out.add(f"garrison_bulkhead_{key}_total", (name,), status.get(key))


def _timeout(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    out.add("garrison_timeout_timeouts_total", (name,), status.get("timeouts"))
    out.add("garrison_timeout_completed_total", (name,), status.get("completed"))
    out.add("garrison_timeout_current_seconds", (name,), status.get("timeout"))
    out.add("garrison_timeout_pending", (name,), status.get("pending"))


def _retry(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    succeeded = _number(status.get("succeeded"))
    after_retry = _number(status.get("succeeded_after_retry"))
    calls = "garrison_retry_calls_total"
    if succeeded is not None and after_retry is not None:
        out.add(calls, (name, "successful_without_retry"), succeeded - after_retry)
        out.add(calls, (name, "successful_with_retry"), after_retry)
    out.add(calls, (name, "failed"), status.get("failed"))
    out.add(calls, (name, "abandoned"), status.get("abandoned"))
    out.add_each("garrison_retry_gave_up_total", name, status.get("gave_up"))
    out.add("garrison_retry_attempts_total", (name,), status.get("attempts"))
    out.add("garrison_retry_retries_total", (name,), status.get("retries_scheduled"))
    out.add("garrison_retry_waiting", (name,), status.get("waiting"))
    out.add("garrison_retry_in_flight", (name,), status.get("in_flight"))
    budget = status.get("budget")
    if isinstance(budget, Mapping):
        out.add("garrison_retry_budget_tokens", (name,), budget.get("tokens"))


def _fallback(out: _Sink, name: str, status: Mapping[str, Any]) -> None:
    out.add_each("garrison_fallback_used_total", name, status.get("used"))
    for key in ("successes", "reraised", "passed_through", "callable_failed"):
        out.add(f"garrison_fallback_{key}_total", (name,), status.get(key))
    out.add_each("garrison_fallback_routed_total", name, status.get("routed_by_source"))
    out.add("garrison_fallback_cache_size", (name,), status.get("cache_size"))


_CONVERTERS: Final[dict[str, Callable[[_Sink, str, Mapping[str, Any]], None]]] = {
    "fallback": _fallback,
    "retry": _retry,
    "circuit_breaker": _breaker,
    "rate_limiter": _limiter,
    "timeout": _timeout,
    "bulkhead": _bulkhead,
}


def _backend(out: _Sink, status: Mapping[str, Any]) -> None:
    label = (str(status.get("backend")),)
    out.add("garrison_backend_up", label, int(bool(status.get("up"))))
    out.add("garrison_backend_degraded_total", label, status.get("degraded_total"))
    out.add("garrison_backend_errors_total", label, status.get("errors_total"))
    out.add("garrison_backend_processes", label, status.get("local_share_of"))


_SUPERVISOR_CLASSES = frozenset({"Supervisor", "PipelineSupervisor"})


def _tree(out: _Sink, tree: Mapping[str, Any]) -> None:
    root = str(tree.get("path") or tree.get("name"))
    out.add("garrison_supervisor_restarts_total", (root,), tree.get("restarts"))
    _children(out, root, tree.get("children"))


def _children(out: _Sink, parent: str, children: object) -> None:
    if not isinstance(children, list):
        return
    for child in children:
        if not isinstance(child, Mapping):
            continue
        path = f"{parent}/{child.get('name')}"
        if child.get("restart") == "fused":  # a fused pipeline's stage keeps its own path
            path = f"{parent.rpartition('/')[0]}/{child.get('name')}"
        out.add("garrison_actor_restarts_total", (path,), child.get("restarts"))
        out.add("garrison_actor_up", (path,), int(child.get("state") == "running"))
        # supervisors (by class, or any child that ever gave up: a user's subclass)
        if child.get("actor_class") in _SUPERVISOR_CLASSES or child.get("give_ups"):
            out.add("garrison_supervisor_give_ups_total", (path,), child.get("give_ups"))
        if "restarts_of_children" in child:  # a running supervisor
            out.add("garrison_supervisor_restarts_total", (path,), child["restarts_of_children"])
        _children(out, path, child.get("children"))


# -- the collector ----------------------------------------------------------------------------


class RuntimeCollector:
    """A prometheus-client collector of ``runtime``'s metrics (see the module docstring).

    Each :meth:`collect` asks every stage of every pipeline and every standalone breaker for
    its status, all at once, and waits at most ``timeout`` seconds (real time) in all for
    the answers; the supervision tree is read within the same budget. Whatever does not
    answer in time is left out of that scrape and counted in
    ``garrison_scrape_errors_total``. Safe to call from several threads at once.

    Register it in a :class:`prometheus_client.CollectorRegistry` (:func:`register` does);
    one RuntimeCollector per registry, since two would report the same metric names.
    """

    def __init__(self, runtime: Runtime, *, timeout: float = 1.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.runtime = runtime
        self.timeout = float(timeout)
        self.registry: CollectorRegistry | None = None
        """The registry :func:`register` put this collector in (None until registered)."""
        self._lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._pending: dict[str, Future[Any]] = {}

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (so a registry can detect name clashes)."""
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        """The metric families with this moment's samples. Never raises, never hangs."""
        started = time.monotonic()
        out = _Sink()
        try:
            self._collect(out, started)
        except Exception as error:  # a bug here must not break the scrape of other metrics
            self._failed("collector", "error", error)
        with self._lock:
            errors = sorted(self._errors.items())
        for (source, reason), count in errors:
            out.add("garrison_scrape_errors_total", (source, reason), count)
        out.add("garrison_scrape_duration_seconds", (), time.monotonic() - started)
        yield from out.families.values()

    def _collect(self, out: _Sink, started: float) -> None:
        runtime = self.runtime
        out.add("garrison_dead_letters_total", (), runtime.dead_letters.count)
        running = runtime.state == "running"
        out.add("garrison_runtime_up", (), int(running))
        if not running:
            return
        for backend in runtime.backends():
            _backend(out, backend.status())
        asks: list[tuple[str, str, str, Future[Any]]] = []
        for stage, name, source, ref in self._sources():
            try:
                asks.append((stage, name, source, self._ask(source, ref)))
            except Exception as error:
                self._failed(source, _reason(error), error)
        deadline = started + self.timeout
        try:
            _tree(out, runtime.supervisor.tree(max(deadline - time.monotonic(), 0.0)))
        except Exception as error:
            self._failed("tree", _reason(error), error)
        for stage, name, source, future in asks:
            try:
                status = future.get(max(deadline - time.monotonic(), 0.0))
                if not isinstance(status, Mapping):
                    raise TypeError(f"the status of {source} is not a mapping: {status!r}")
                _CONVERTERS[stage](out, name, status)
            except Exception as error:
                self._failed(source, _reason(error), error)
            finally:
                self._settled(source, future)

    def _sources(self) -> Iterator[tuple[str, str, str, Ref]]:
        """(stage, name, source, ref) of every status to ask for."""
        runtime = self.runtime
        pipeline_breakers: set[int] = set()
        for name, pipeline in sorted(runtime.pipelines().items()):
            for stage in STAGE_ORDER:
                ref = pipeline.stages.get(stage)
                if ref is not None:
                    if stage == "circuit_breaker":
                        pipeline_breakers.add(id(ref))
                    yield stage, name, f"pipeline:{name}/{stage}", ref
        manager = runtime.breakers
        for name in manager.names():
            handle = manager.get(name)
            if handle is not None and id(handle.ref) not in pipeline_breakers:
                yield "circuit_breaker", name, f"breaker:{name}", handle.ref

    def _ask(self, source: str, ref: Ref) -> Future[Any]:
        """The status request of ``source``: the one still unanswered, or a new one.

        A stuck actor is never sent a second request while the first is unanswered, so
        scrapes do not pile status requests up in its mailbox.
        """
        with self._lock:
            future = self._pending.get(source)
            if future is None or future.done():
                future = ref.ask_future(_STATUS)
                self._pending[source] = future
            return future

    def _settled(self, source: str, future: Future[Any]) -> None:
        if future.done():
            with self._lock:
                if self._pending.get(source) is future:
                    del self._pending[source]

    def _failed(self, source: str, reason: str, error: BaseException) -> None:
        with self._lock:
            self._errors[source, reason] += 1
        emit(
            "garrison.metrics.scrape_skipped",
            level="warning",
            runtime=self.runtime.name,
            source=source,
            reason=reason,
            error=error,
        )

    def __repr__(self) -> str:
        return f"<RuntimeCollector {self.runtime.name!r} timeout={self.timeout:g}>"


def _reason(error: BaseException) -> str:
    if isinstance(error, AskTimeout):
        return "timeout"
    if isinstance(error, ActorUnavailable):
        return "unavailable"
    return "error"


def register(
    runtime: Runtime, registry: CollectorRegistry | None = None, *, timeout: float = 1.0
) -> RuntimeCollector:
    """A :class:`RuntimeCollector` of ``runtime``, registered in ``registry``.

    ``registry`` defaults to a new :class:`~prometheus_client.CollectorRegistry`, never the
    global default one, so that tests and several runtimes in one process do not collide;
    the collector's ``registry`` attribute is the registry it was put in. Registering a
    second RuntimeCollector in the same registry raises ``ValueError`` (duplicate names).
    """
    if registry is None:
        registry = CollectorRegistry()
    collector = RuntimeCollector(runtime, timeout=timeout)
    registry.register(collector)
    collector.registry = registry
    return collector


# -- serving /metrics over HTTP ---------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    """Quiet, and bounded: a client that sends nothing is dropped after ``timeout`` seconds."""

    timeout: ClassVar[float | None] = 10.0

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (scrapes every few seconds would flood stderr)."""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request; :meth:`server_close` joins them (nothing left behind)."""

    daemon_threads = False
    block_on_close = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _routes(registry: CollectorRegistry) -> WSGIApplication:
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in ("/metrics", "/metrics/"):
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are served at /metrics\n"]

    return app


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (see :func:`start_metrics_server`).

    ``host``, ``port`` and ``url`` say where it listens; :meth:`stop` (or leaving a ``with``
    block) shuts it down and joins its threads.
    """

    def __init__(
        self,
        server: _Server,
        thread: threading.Thread,
        collector: RuntimeCollector,
        registry: CollectorRegistry,
    ) -> None:
        self._server = server
        self._thread = thread
        self.collector = collector
        self.registry = registry
        address = server.server_address
        self.host = str(address[0])
        self.port = int(address[1])
        self._stop_lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        """The URL of the metrics, ``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, wait for requests in progress, join the server thread. Idempotent.

        The collector is taken out of the registry again.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()  # joins the request threads
        self._thread.join(timeout)
        with contextlib.suppress(KeyError):  # someone unregistered it already
            self.registry.unregister(self.collector)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<MetricsServer {self.url} {state}>"


def start_metrics_server(
    runtime: Runtime,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    registry: CollectorRegistry | None = None,
    timeout: float = 1.0,
) -> tuple[MetricsServer, int]:
    """Serve ``runtime``'s metrics at ``http://host:port/metrics``; return (server, port).

    ``port=0`` picks a free port (the one returned). A :class:`RuntimeCollector` (with
    ``timeout``) is registered in ``registry`` (default: a new one; pass your own to serve
    your metrics beside garrison's) and unregistered by ``server.stop()``. Requests are
    handled by the stdlib's WSGI server, one thread per request, with gzip and OpenMetrics
    negotiated as prometheus-client does; other paths get 404. ``stop()`` leaves no thread
    behind.
    """
    collector = register(runtime, registry, timeout=timeout)
    assert collector.registry is not None
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(
            host, port, _routes(collector.registry), server_class, handler_class=_Handler
        )
    except BaseException:
        collector.registry.unregister(collector)
        raise
    assert isinstance(server, _Server)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"garrison-metrics-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    metrics = MetricsServer(server, thread, collector, collector.registry)
    return metrics, metrics.port


# -- an ASGI app ------------------------------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class MetricsApp:
    """An ASGI app serving a registry at ``/metrics`` (see :func:`metrics_app`).

    The metrics are collected in a worker thread (``asyncio.to_thread``), so a scrape never
    blocks the event loop, even while it waits for a slow stage. Lifespan events are
    accepted; other paths get 404, methods other than GET and HEAD 405.
    """

    def __init__(self, collector: RuntimeCollector, registry: CollectorRegistry) -> None:
        self.collector = collector
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if scope.get("path") not in ("/metrics", "/metrics/"):
            await _respond(send, 404, b"not found: metrics are served at /metrics\n")
        elif method not in ("GET", "HEAD"):
            await _respond(send, 405, b"use GET\n", [(b"allow", b"GET, HEAD")])
        else:
            accept = ",".join(
                value.decode("latin-1")
                for key, value in scope.get("headers", ())
                if key.lower() == b"accept"
            )
            encoder, content_type = choose_encoder(accept)
            body = await asyncio.to_thread(encoder, self.registry)
            await _respond(
                send,
                200,
                b"" if method == "HEAD" else body,
                [(b"content-type", content_type.encode("latin-1"))],
            )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if headers is None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_app(
    runtime: Runtime, *, registry: CollectorRegistry | None = None, timeout: float = 1.0
) -> MetricsApp:
    """An ASGI app serving ``runtime``'s metrics at ``/metrics``.

    A :class:`RuntimeCollector` (with ``timeout``) is registered in ``registry`` (default: a
    new one); the app's ``collector`` and ``registry`` attributes are those. Mount it in
    any ASGI server or framework.
    """
    collector = register(runtime, registry, timeout=timeout)
    assert collector.registry is not None
    return MetricsApp(collector, collector.registry)
