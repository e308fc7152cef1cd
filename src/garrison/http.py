"""The HTTP client: the seed's RateLimitedAPINode, on one ``httpx.Client`` and a pipeline.

Every request is an operation sent through the pipeline ``http:<name>`` (retry, circuit
breaker, rate limiter, timeout, bulkhead: whichever are configured); the synchronous httpx call
runs on the pipeline's bulkhead workers and shares one connection pool (HTTP/1.1 keep-alive).

```python
api = build_http_client(rt, "api", "https://api.example.com",
                        rate_limit=RateLimitConfig(per_second=10, throttle_strategy="adaptive"),
                        retry=RetryConfig(max_attempts=3), circuit_breaker=CircuitBreakerConfig())
api.get("/data/1")                                  # an httpx.Response (2xx/3xx)
api.request_many([{"endpoint": "/data/1", "priority": "high"},
                  {"endpoint": "/data/2", "method": "POST", "json": {"x": 1}}])
api.close()                                         # closes the connection pool
```

What an answer becomes (on the worker, before the pipeline sees the outcome):

- 1xx/2xx/3xx: the :class:`httpx.Response` itself;
- 429: :class:`TooManyRequests`; 503: :class:`ServiceUnavailable` (both
  :class:`RateLimitResponse`, with ``retry_after`` parsed from ``Retry-After``, seconds or an
  HTTP date, a date in the past meaning 0). Before raising, the pipeline's rate limiter is
  told ``RateLimitFeedback(retry_after=...)``: admissions pause for that long and the
  adaptive throttle slows down. With ``retry_on_rate_limit`` (default) a configured retry
  stage retries them, no earlier than ``retry_after`` (its policy reads the error's
  ``retry_after``);
- a 429/503 whose ``Retry-After`` exceeds ``max_retry_after`` (default: the rate limit's
  ``max_wait_time``, else 60 s): :class:`RetryAfterTooLong`, carrying the server's value; the
  limiter pauses for ``max_retry_after`` only, and the request is not retried;
- other 5xx: :class:`HttpServerError`; other 4xx: :class:`HttpClientError`.

When the connection fails (refused, reset, closed mid-headers or mid-body, timed out), the
``httpx.TransportError`` is the outcome, and a retry stage retries it (its default
``retry_exceptions`` include ``httpx.TransportError``) for idempotent methods (GET, HEAD,
OPTIONS, PUT, DELETE). A POST or PATCH is resent only if it never left (``ConnectError``,
``ConnectTimeout``, ``PoolTimeout``): once it may have reached the server, it fails with
:class:`RequestInDoubt` (the httpx error is its ``__cause__``), which is not retried, and a
retry of it after a garrison timeout (or after an answer the retry config retries) is refused
with :class:`NotResent` before anything is sent. ``retry_non_idempotent=True`` lifts this
(for APIs that deduplicate, e.g. with an ``Idempotency-Key`` header).

The circuit breaker counts :class:`HttpServerError` (503 included, unless
``count_503_as_failures=False``), ``httpx.TransportError`` and :class:`RequestInDoubt`
(refused or broken connections, httpx timeouts) and garrison timeouts as failures; it ignores
429, :class:`RetryAfterTooLong` and :class:`NotResent` always, and other 4xx unless
``count_4xx_as_failures=True`` (the service answered; the request was wrong).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from typing import TYPE_CHECKING, Any, Final, cast

import httpx

from garrison._future import Future
from garrison._messages import Priority
from garrison.actors.bulkhead import BulkheadConfig
from garrison.actors.limiter import RateLimitFeedback
from garrison.errors import ConfigError, GarrisonError
from garrison.pipeline import Pipeline, PipelineView
from garrison.policies.backoff import (
    ExceptionSpec,
    RetryConfig,
    exception_matches,
    parse_retry_after,
)
from garrison.policies.breaker import CircuitBreakerConfig
from garrison.policies.rate import RateLimitConfig
from garrison.policies.timeouts import TimeoutConfig

if TYPE_CHECKING:
    from garrison._runtime import Runtime

__all__ = [
    "HTTP_METHODS",
    "REQUEST_KEYS",
    "SEED_OPTIONS",
    "HttpClient",
    "HttpClientConfig",
    "HttpClientError",
    "HttpServerError",
    "HttpStatusError",
    "NotResent",
    "RateLimitResponse",
    "RequestInDoubt",
    "RetryAfterTooLong",
    "ServiceUnavailable",
    "TooManyRequests",
    "build_http_client",
]

HTTP_METHODS: Final = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"))
"""The methods :meth:`HttpClient.request` accepts (any case)."""

REQUEST_KEYS: Final = frozenset(
    ("endpoint", "method", "priority", "key", "json", "params", "headers", "timeout")
)
"""The keys of one request dict of :meth:`HttpClient.request_many` (only ``endpoint`` needed)."""

SEED_OPTIONS: Final = (
    "rate_limit_per_second",
    "rate_limit_per_minute",
    "rate_limit_per_hour",
    "throttle_strategy",
    "backoff_multiplier",
    "max_wait_time",
    "queue_size",
    "queue_timeout",
    "priority_queue",
    "retry_on_rate_limit",
    "max_retries",
    "retry_delay",
)
"""The options of the seed's RateLimitedAPINode, each mapped to a config field."""

_RATE_OPTIONS: Final = {
    "rate_limit_per_second": "per_second",
    "rate_limit_per_minute": "per_minute",
    "rate_limit_per_hour": "per_hour",
    "throttle_strategy": "throttle_strategy",
    "backoff_multiplier": "backoff_multiplier",
    "max_wait_time": "max_wait_time",
    "queue_size": "queue_size",
    "queue_timeout": "queue_timeout",
    "priority_queue": "priority_queue",
    # garrison's own names, for a config file section
    "algorithm": "algorithm",
    "on_limit": "on_limit",
}
_QUEUE_OPTIONS: Final = ("queue_size", "queue_timeout", "priority_queue")
_SEED_MAX_RETRIES: Final = 3
_DEFAULT_RETRY_DELAY: Final = 1.0
_DEFAULT_HTTP_TIMEOUT: Final = 30.0
_DEFAULT_MAX_DELAY: Final = 60.0  # RetryConfig's
_DEFAULT_MAX_RETRY_AFTER: Final = 60.0
_RATE_LIMIT_STATUSES: Final = (429, 503)
_CACHE_SIZE: Final = 4096  # endpoint URLs and pipeline views kept, each
_UNSAFE_METHODS: Final = frozenset(("POST", "PATCH"))
# Transport errors raised before the request left: safe to resend whatever the method.
_NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class HttpStatusError(GarrisonError):
    """The server answered with an error status (4xx or 5xx).

    ``response`` is the :class:`httpx.Response` (body read), ``status_code`` its status,
    ``retry_after`` the server's ``Retry-After`` in seconds (None when absent or unusable).
    """

    def __init__(self, response: httpx.Response, *, retry_after: float | None = None) -> None:
        self.response = response
        self.status_code = response.status_code
        self.retry_after = retry_after
        request = response.request
        hint = f"; retry after {retry_after:.3f}s" if retry_after is not None else ""
        super().__init__(
            f"{request.method} {request.url} answered {response.status_code} "
            f"{response.reason_phrase}{hint}"
        )

    @property
    def status(self) -> int:
        """The HTTP status code (``status_code``)."""
        return self.status_code

    def __reduce__(self) -> tuple[object, ...]:
        # The response is rebuilt from its status, headers, body and request line, so the
        # error can cross a process boundary (a multiprocessing pool, a pickled log record).
        return (_rebuild_http_error, (type(self), _response_state(self.response), self.retry_after))


_ResponseState = tuple[int, list[tuple[bytes, bytes]], bytes, str, str]


def _response_state(response: httpx.Response) -> _ResponseState:
    request = response.request
    return (
        response.status_code,
        list(response.headers.raw),
        response.content,
        request.method,
        str(request.url),
    )


def _response_from(state: _ResponseState) -> httpx.Response:
    status_code, headers, content, method, url = state
    return httpx.Response(
        status_code, headers=headers, content=content, request=httpx.Request(method, url)
    )


def _rebuild_http_error(
    cls: type[HttpStatusError], state: _ResponseState, retry_after: float | None
) -> HttpStatusError:
    return cls(_response_from(state), retry_after=retry_after)


class HttpClientError(HttpStatusError):
    """A 4xx answer other than 429: the request was refused. Not a breaker failure by default."""


class HttpServerError(HttpStatusError):
    """A 5xx answer: the service failed. A breaker failure."""


class RateLimitResponse(HttpStatusError):
    """A 429 or 503 answer: the service asks to slow down, for ``retry_after`` s if given.

    Retried (no earlier than ``retry_after``) when the client's ``retry_on_rate_limit`` is on.
    """


class TooManyRequests(RateLimitResponse):
    """A 429 answer. Never a breaker failure: the limiter, not the breaker, answers it."""


class ServiceUnavailable(RateLimitResponse, HttpServerError):
    """A 503 answer. A breaker failure unless ``count_503_as_failures=False``."""


class RetryAfterTooLong(RateLimitResponse):
    """A 429 or 503 whose ``Retry-After`` exceeds the client's ``max_retry_after``.

    ``retry_after`` is the server's value, ``max_retry_after`` the cap: the limiter pauses
    admissions for the cap only, and the request fails with this error instead of waiting.
    Not retried by the client's own retry policy (which retries :class:`TooManyRequests` and
    :class:`ServiceUnavailable`) and never a breaker failure: the paused limiter already stops
    the traffic.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        retry_after: float | None = None,
        max_retry_after: float,
    ) -> None:
        self.max_retry_after = max_retry_after
        super().__init__(response, retry_after=retry_after)
        self.args = (
            f"{self.args[0]}, longer than max_retry_after ({max_retry_after:g}s): not waited "
            f"for, admissions paused for {max_retry_after:g}s",
        )

    def __reduce__(self) -> tuple[object, ...]:
        state = _response_state(self.response)
        return (_rebuild_too_long, (state, self.retry_after, self.max_retry_after))


def _rebuild_too_long(
    state: _ResponseState, retry_after: float | None, max_retry_after: float
) -> RetryAfterTooLong:
    return RetryAfterTooLong(
        _response_from(state), retry_after=retry_after, max_retry_after=max_retry_after
    )


class RequestInDoubt(GarrisonError):
    """A non-idempotent request (POST, PATCH) may have reached the server; it is not resent.

    Raised instead of the transport error (``error``, also ``__cause__``: a read error, a
    reset, a disconnect mid-response, a read or write timeout) when the connection failed
    after the request may have been sent, unless ``retry_non_idempotent=True``. The server
    may or may not have acted on it. A breaker failure; not retried by default (it is not an
    ``httpx.TransportError``).
    """

    def __init__(self, method: str, url: str, error: BaseException | None, why: str) -> None:
        self.method = method
        self.url = url
        self.error = error
        self.why = why
        super().__init__(
            f"{method} {url}: {why}; not sent again ({method} is not idempotent, "
            "retry_non_idempotent=False)"
        )
        self.__cause__ = error

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.method, self.url, self.error, self.why))


class NotResent(RequestInDoubt):
    """A retry stage asked to resend a non-idempotent request that may have reached the server.

    Its earlier attempt timed out (garrison's timeout stage) or was answered with an error
    that the retry config retries; the request is refused here, before anything is sent.
    Never a breaker failure (nothing was sent).
    """


def _error_for(response: httpx.Response, max_retry_after: float) -> HttpStatusError:
    status = response.status_code
    if status in _RATE_LIMIT_STATUSES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), wall_now=time.time())
        if retry_after is not None and retry_after > max_retry_after:
            return RetryAfterTooLong(
                response, retry_after=retry_after, max_retry_after=max_retry_after
            )
        kind: type[RateLimitResponse] = TooManyRequests if status == 429 else ServiceUnavailable
        return kind(response, retry_after=retry_after)
    if status >= 500:
        return HttpServerError(response)
    return HttpClientError(response)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _check_base_url(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError("base_url", f"must be an absolute http(s) URL, got {value!r}")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ConfigError("base_url", f"{value!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            "base_url",
            f"must be an absolute http(s) URL like 'https://api.example.com', got {value!r}",
        )
    return value


@dataclass(frozen=True, slots=True)
class HttpClientConfig:
    """Settings of one :class:`HttpClient`; validated at construction (ConfigError names the key).

    ``rate_limit``, ``retry``, ``circuit_breaker``, ``timeout``, ``bulkhead`` are the pipeline
    stages (None: left out; see :meth:`stages` for how the retry and breaker configs are
    completed). ``headers`` are sent with every request. ``http_timeout`` is httpx's own
    timeout per request (connect, read, write, pool), so that a worker is never stuck for
    longer; by default the timeout stage's longest timeout, else 30 s.

    ``max_retry_after`` caps how long a 429/503 ``Retry-After`` may pause the limiter (by
    default the rate limit's ``max_wait_time``, else 60 s): a longer one pauses it for the cap
    and fails the request with :class:`RetryAfterTooLong`. ``retry_non_idempotent`` lets
    POST and PATCH be retried after the connection failed once they may have reached the
    server (default: :class:`RequestInDoubt`, not resent).
    """

    base_url: str
    rate_limit: RateLimitConfig | None = None
    retry: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    timeout: TimeoutConfig | None = None
    bulkhead: BulkheadConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    retry_on_rate_limit: bool = True
    count_4xx_as_failures: bool = False
    count_503_as_failures: bool = True
    http_timeout: float | None = None
    max_retry_after: float | None = None
    retry_non_idempotent: bool = False

    def __post_init__(self) -> None:
        put = object.__setattr__
        _check_base_url(self.base_url)
        for key, kind in (
            ("rate_limit", RateLimitConfig),
            ("retry", RetryConfig),
            ("circuit_breaker", CircuitBreakerConfig),
            ("timeout", TimeoutConfig),
            ("bulkhead", BulkheadConfig),
        ):
            value = getattr(self, key)
            if isinstance(value, Mapping):
                try:
                    value = kind.from_dict(value)
                except ConfigError as error:
                    raise error.under(key) from None
                put(self, key, value)
            elif value is not None and not isinstance(value, kind):
                raise ConfigError(key, f"must be a {kind.__name__} or a mapping, got {value!r}")
        headers = self.headers
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("headers", f"must map header names to strings, got {headers!r}")
        put(self, "headers", dict(headers))
        for key in (
            "retry_on_rate_limit",
            "count_4xx_as_failures",
            "count_503_as_failures",
            "retry_non_idempotent",
        ):
            _check_bool(key, getattr(self, key))
        for key, minimum in (("http_timeout", "> 0"), ("max_retry_after", ">= 0")):
            value = getattr(self, key)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not (value > 0 or (value == 0 and minimum == ">= 0"))
            ):
                raise ConfigError(key, f"must be a finite number {minimum}, got {value!r}")
            put(self, key, float(value))

    @classmethod
    def from_seed(cls, options: Mapping[str, Any], **configs: Any) -> HttpClientConfig:
        """Build from the seed's RateLimitedAPINode options (a dict, or a config file section).

        Mapping: ``rate_limit_per_second/_minute/_hour`` -> ``RateLimitConfig.per_*``;
        ``throttle_strategy``, ``backoff_multiplier``, ``max_wait_time``, ``queue_size``,
        ``queue_timeout``, ``priority_queue`` -> the RateLimitConfig fields of those names, with
        ``on_limit="wait"`` when a queue is configured (any queue option, and ``queue_size``
        not 0), else ``"reject"``; ``max_retries`` -> ``RetryConfig.max_attempts =
        max_retries + 1``, ``retry_delay`` -> ``RetryConfig.base_delay``;
        ``retry_on_rate_limit`` as is. The fields of this class are accepted too (stage configs
        as objects or mappings); ``configs`` are more fields (keyword form). Unknown keys, and a
        stage given both as a config and as seed options, raise ConfigError.
        """
        if not isinstance(options, Mapping):
            raise ConfigError("http", f"must be a mapping of options, got {options!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {}
        rate: dict[str, Any] = {}
        retry: dict[str, Any] = {}
        for key, value in {**options, **configs}.items():
            if key in _RATE_OPTIONS:
                rate[key] = value
            elif key in ("max_retries", "retry_delay"):
                retry[key] = value
            elif key in fields:
                data[key] = value
            else:
                known = sorted({*fields, *_RATE_OPTIONS, "max_retries", "retry_delay"})
                raise ConfigError(str(key), f"unknown option (known: {', '.join(known)})")
        if rate:
            if data.get("rate_limit") is not None:
                raise ConfigError(
                    next(iter(rate)), "give rate_limit or the seed's rate options, not both"
                )
            data["rate_limit"] = _seed_rate_limit(rate)
        if retry:
            if data.get("retry") is not None:
                raise ConfigError(
                    next(iter(retry)), "give retry or max_retries/retry_delay, not both"
                )
            data["retry"] = _seed_retry(retry)
        if "base_url" not in data:
            raise ConfigError("base_url", "is required")
        return cls(**data)

    @property
    def effective_http_timeout(self) -> float:
        """httpx's timeout per request: ``http_timeout``, else the timeout stage's longest."""
        if self.http_timeout is not None:
            return self.http_timeout
        if self.timeout is not None:
            return self.timeout.effective_max_timeout
        return _DEFAULT_HTTP_TIMEOUT

    @property
    def effective_max_retry_after(self) -> float:
        """The cap on a server's Retry-After: ``max_retry_after``, else the rate limit's
        ``max_wait_time``, else 60 s."""
        if self.max_retry_after is not None:
            return self.max_retry_after
        if self.rate_limit is not None and self.rate_limit.max_wait_time is not None:
            return self.rate_limit.max_wait_time
        return _DEFAULT_MAX_RETRY_AFTER

    def stages(self) -> dict[str, Any]:
        """The pipeline stage configs (keyword arguments of ``runtime.pipeline``).

        - retry: with ``retry_on_rate_limit``, ``retry_exceptions`` gains
          :class:`TooManyRequests` and :class:`ServiceUnavailable` (not
          :class:`RetryAfterTooLong`). Without a ``retry`` config (or the seed's
          ``max_retries``/``retry_delay``) there is no retry stage and nothing is retried: an
          implicit one would also retry ``CircuitOpen`` after the breaker's recovery timeout
          (every retry stage does), blocking callers who never asked for retries;
        - circuit breaker: ``ignore_exceptions`` gains :class:`TooManyRequests`,
          :class:`RetryAfterTooLong` and :class:`NotResent`, and
          :class:`HttpClientError` unless ``count_4xx_as_failures``, and
          :class:`ServiceUnavailable` unless ``count_503_as_failures``.
        """
        stages: dict[str, Any] = {
            "rate_limit": self.rate_limit,
            "timeout": self.timeout,
            "bulkhead": self.bulkhead,
        }
        retry = self.retry
        if self.retry_on_rate_limit and retry is not None:
            missing = [
                kind
                for kind in (TooManyRequests, ServiceUnavailable)
                if not exception_matches(kind, retry.retry_exceptions)
            ]
            if missing:
                retry = dataclasses.replace(
                    retry, retry_exceptions=(*retry.retry_exceptions, *missing)
                )
        stages["retry"] = retry
        breaker = self.circuit_breaker
        if breaker is not None:
            ignored: list[ExceptionSpec] = [TooManyRequests, RetryAfterTooLong, NotResent]
            if not self.count_4xx_as_failures:
                ignored.append(HttpClientError)
            if not self.count_503_as_failures:
                ignored.append(ServiceUnavailable)
            extra = [kind for kind in ignored if kind not in breaker.ignore_exceptions]
            if extra:
                breaker = dataclasses.replace(
                    breaker, ignore_exceptions=(*breaker.ignore_exceptions, *extra)
                )
        stages["circuit_breaker"] = breaker
        return {key: value for key, value in stages.items() if value is not None}


def _seed_rate_limit(options: Mapping[str, Any]) -> RateLimitConfig:
    kwargs = {_RATE_OPTIONS[key]: value for key, value in options.items()}
    if "on_limit" not in kwargs:
        queued = any(key in options for key in _QUEUE_OPTIONS)
        kwargs["on_limit"] = "wait" if queued and options.get("queue_size") != 0 else "reject"
    try:
        return RateLimitConfig(**kwargs)
    except ConfigError as error:
        seed_names = {v: k for k, v in _RATE_OPTIONS.items()}
        raise ConfigError(seed_names.get(error.key, error.key), error.problem) from None


def _seed_retry(options: Mapping[str, Any]) -> RetryConfig:
    max_retries = options.get("max_retries", _SEED_MAX_RETRIES)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
    delay = options.get("retry_delay", _DEFAULT_RETRY_DELAY)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise ConfigError("retry_delay", f"must be a number >= 0, got {delay!r}")
    delay = float(delay)
    return RetryConfig(
        max_attempts=max_retries + 1,
        base_delay=delay,
        max_delay=max(_DEFAULT_MAX_DELAY, delay),
    )


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class _Request:
    """One validated request, the argument of every attempt's :meth:`HttpClient._send`.

    ``url`` is the absolute URL (base URL and endpoint merged once, cached per endpoint).
    ``guarded``: a non-idempotent method that must not be resent once it may have reached the
    server; ``in_doubt``: an attempt of it may have (set while one runs, cleared when one ends
    before sending or with a 429/503 answer).
    """

    __slots__ = (
        "endpoint",
        "guarded",
        "headers",
        "in_doubt",
        "json",
        "key",
        "method",
        "params",
        "priority",
        "timeout",
        "url",
    )

    def __init__(
        self,
        method: str,
        endpoint: str,
        url: httpx.URL,
        *,
        priority: Priority,
        key: Hashable | None,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        guarded: bool,
    ) -> None:
        self.method = method
        self.endpoint = endpoint
        self.url = url
        self.priority = priority
        self.key = key
        self.json = json
        self.params = params
        self.headers = headers
        self.timeout = timeout
        self.guarded = guarded
        self.in_doubt = False


def _check_options(
    priority: object, key: object, params: object, headers: object, timeout: object
) -> Priority:
    """Validate a request's options (ValueError / TypeError); return its priority."""
    if priority is None:
        parsed = Priority.NORMAL
    elif isinstance(priority, Priority | str | int):
        parsed = Priority.parse(priority)
    else:
        raise ValueError(f"priority must be one of 'high', 'normal', 'low', got {priority!r}")
    if key is not None and not isinstance(key, Hashable):
        raise TypeError(f"key must be hashable, got {key!r}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, got {params!r}")
    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise TypeError(f"headers must map header names to strings, got {headers!r}")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (timeout > 0 and math.isfinite(timeout))
    ):
        raise ValueError(f"timeout must be a number > 0, got {timeout!r}")
    return parsed


def _relative_url(endpoint: object) -> httpx.URL:
    """The endpoint as a URL relative to the base URL (ValueError / TypeError otherwise)."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a string path, got {endpoint!r}")
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, ValueError) as error:
        raise ValueError(f"endpoint {endpoint!r} is not a valid path: {error}") from None
    if url.is_absolute_url or endpoint.startswith("//"):
        raise ValueError(f"endpoint must be a path relative to base_url, got {endpoint!r}")
    return url


class HttpClient:
    """An HTTP client whose requests are operations of the pipeline ``http:<name>``.

    Build it with :func:`build_http_client` (or ``rt.http_client(...)``). Each bulkhead
    worker thread sends with its own ``httpx.Client`` (its own keep-alive connection pool:
    no pool lock shared by the workers), all sharing one cookie jar and one SSL context; with
    a ``transport`` given, one client is shared instead. :meth:`close` (or the end of a
    ``with`` block) closes them all. ``pipeline`` is the :class:`~garrison.Pipeline`
    (``stages``, ``status()``), ``config`` the :class:`HttpClientConfig`.
    """

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        config: HttpClientConfig,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.pipeline = pipeline
        self.config = config
        self._limiter = pipeline.stages.get("rate_limiter")
        self._cookies = CookieJar()  # thread-safe; shared by every client below
        self._ssl_context = httpx.create_ssl_context() if transport is None else None
        # The shared client: merges URLs, and sends when a transport is given.
        self._client = self._new_client(transport)
        self._per_thread = transport is None
        self._local = threading.local()
        self._pools: list[tuple[threading.Thread, httpx.Client]] = []
        self._urls: dict[str, httpx.URL] = {}
        self._views: dict[tuple[Hashable, ...], PipelineView] = {}

        def operation(request: _Request) -> httpx.Response:
            return self._send(request)

        # A plain function, not the bound method: the bulkhead tells a plain function from a
        # coroutine function by a flag; a method would cost it an inspect.* walk per request.
        self._operation = operation
        self._max_retry_after = config.effective_max_retry_after
        self._guard_methods = frozenset() if config.retry_non_idempotent else _UNSAFE_METHODS
        self._lock = threading.Lock()
        self._closed = False
        self._statuses: Counter[int] = Counter()
        self._transport_errors = 0
        self._feedbacks = 0

    # -- requests -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        endpoint: str,
        *,
        priority: Priority | str | None = None,
        key: Hashable | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request through the pipeline; return its response (1xx-3xx) or raise.

        Raises :class:`HttpStatusError` subclasses for 4xx/5xx, ``httpx.TransportError`` for
        connection trouble, and garrison's errors (``CircuitOpen``, ``RateLimited``,
        ``RetriesExhausted``, ``OperationTimeout``...). ``priority`` orders waiting requests in
        the limiter's queue, ``key`` selects its bucket, ``timeout`` bounds this request (the
        timeout stage and httpx's own timeout).
        """
        return self.submit(
            method,
            endpoint,
            priority=priority,
            key=key,
            json=json,
            params=params,
            headers=headers,
            timeout=timeout,
        ).get()

    def submit(
        self,
        method: str,
        endpoint: str,
        *,
        priority: Priority | str | None = None,
        key: Hashable | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Future[httpx.Response]:
        """:meth:`request` without waiting: the future of its outcome (awaitable in asyncio)."""
        prepared = self._prepare(
            method,
            endpoint,
            priority=priority,
            key=key,
            json=json,
            params=params,
            headers=headers,
            timeout=timeout,
        )
        return self._submit(prepared)

    async def arequest(
        self,
        method: str,
        endpoint: str,
        *,
        priority: Priority | str | None = None,
        key: Hashable | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """:meth:`request` for asyncio: awaits the outcome without blocking the event loop."""
        return await self.submit(
            method,
            endpoint,
            priority=priority,
            key=key,
            json=json,
            params=params,
            headers=headers,
            timeout=timeout,
        )

    def get(self, endpoint: str, **options: Any) -> httpx.Response:
        """``request("GET", endpoint, **options)``."""
        return self.request("GET", endpoint, **options)

    def post(self, endpoint: str, **options: Any) -> httpx.Response:
        """``request("POST", endpoint, **options)``."""
        return self.request("POST", endpoint, **options)

    def put(self, endpoint: str, **options: Any) -> httpx.Response:
        """``request("PUT", endpoint, **options)``."""
        return self.request("PUT", endpoint, **options)

    def patch(self, endpoint: str, **options: Any) -> httpx.Response:
        """``request("PATCH", endpoint, **options)``."""
        return self.request("PATCH", endpoint, **options)

    def delete(self, endpoint: str, **options: Any) -> httpx.Response:
        """``request("DELETE", endpoint, **options)``."""
        return self.request("DELETE", endpoint, **options)

    def request_many(
        self, requests: Sequence[Mapping[str, Any]]
    ) -> list[httpx.Response | BaseException]:
        """Send every request (the seed's dicts), return one outcome each, in input order.

        Each dict has ``endpoint`` and optionally ``method`` (GET), ``priority`` ("normal"),
        ``key``, ``json``, ``params``, ``headers``, ``timeout``. All are validated before any is
        sent (TypeError/ValueError naming the index); then all are submitted at once, so a
        rate limiter in wait mode admits the queued ones by priority. An outcome is the
        response or the exception object.
        """
        if isinstance(requests, str | bytes | Mapping) or not isinstance(requests, Sequence):
            raise TypeError(f"requests must be a list of request dicts, got {requests!r}")
        prepared: list[_Request] = []
        for index, item in enumerate(requests):
            if not isinstance(item, Mapping):
                raise TypeError(f"requests[{index}] must be a dict, got {item!r}")
            unknown = sorted(str(k) for k in item if k not in REQUEST_KEYS)
            if unknown:
                raise ValueError(
                    f"requests[{index}]: unknown keys {unknown} (known: {sorted(REQUEST_KEYS)})"
                )
            if "endpoint" not in item:
                raise ValueError(f"requests[{index}] has no 'endpoint'")
            try:
                prepared.append(
                    self._prepare(
                        item.get("method", "GET"),
                        item["endpoint"],
                        priority=item.get("priority"),
                        key=item.get("key"),
                        json=item.get("json"),
                        params=item.get("params"),
                        headers=item.get("headers"),
                        timeout=item.get("timeout"),
                    )
                )
            except (TypeError, ValueError) as error:
                raise type(error)(f"requests[{index}]: {error}") from None
        futures = [self._submit(request) for request in prepared]
        outcomes: list[httpx.Response | BaseException] = []
        for future in futures:
            try:
                outcomes.append(future.get())
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def _prepare(
        self,
        method: object,
        endpoint: object,
        *,
        priority: object = None,
        key: object = None,
        json: Any = None,
        params: object = None,
        headers: object = None,
        timeout: object = None,
    ) -> _Request:
        """Validate one request (ValueError / TypeError) before anything is sent."""
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise ValueError(f"unknown HTTP method {method!r}; use one of {sorted(HTTP_METHODS)}")
        method = method.upper()
        url = self._urls.get(endpoint) if type(endpoint) is str else None
        if url is None:
            url = self._absolute_url(endpoint)
        return _Request(
            method,
            cast(str, endpoint),
            url,
            priority=_check_options(priority, key, params, headers, timeout),
            key=key,
            json=json,
            params=cast(Mapping[str, Any] | None, params),
            headers=cast(Mapping[str, str] | None, headers),
            timeout=float(cast(float, timeout)) if timeout is not None else None,
            guarded=method in self._guard_methods,
        )

    def _absolute_url(self, endpoint: object) -> httpx.URL:
        """Merge ``endpoint`` with the base URL as httpx does, once per endpoint (cached)."""
        url = self._client.build_request("GET", _relative_url(endpoint)).url
        urls = self._urls
        if len(urls) >= _CACHE_SIZE:
            urls.clear()  # endpoints with ids in their path: start over rather than grow
        urls[cast(str, endpoint)] = url
        return url

    def _submit(self, request: _Request) -> Future[httpx.Response]:
        if self._closed:
            raise RuntimeError(f"HTTP client {self.name!r} is closed")
        options = (request.method, request.endpoint, request.priority, request.key, request.timeout)
        views = self._views
        view = views.get(options)
        if view is None:
            view = self.pipeline.options(
                key=request.key,
                priority=request.priority,
                timeout=request.timeout,
                name=f"{request.method} {request.endpoint}",
            )
            if len(views) >= _CACHE_SIZE:
                views.clear()
            views[options] = view
        return view.submit(self._operation, request)

    def _new_client(self, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        config = self.config
        return httpx.Client(
            base_url=config.base_url,
            headers=dict(config.headers),
            timeout=config.effective_http_timeout,
            cookies=self._cookies,
            verify=self._ssl_context if self._ssl_context is not None else True,
            transport=transport,
        )

    def _thread_client(self) -> httpx.Client:
        """This worker thread's client, made on its first request."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        thread = threading.current_thread()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"HTTP client {self.name!r} is closed")
            ended = [old for owner, old in self._pools if not owner.is_alive()]
            self._pools = [(owner, old) for owner, old in self._pools if owner.is_alive()]
            client = self._new_client()
            self._pools.append((thread, client))
        for old in ended:  # the pools of workers that ended (retired, replaced)
            old.close()
        self._local.client = client
        return client

    def _send(self, request: _Request) -> httpx.Response:
        """The operation (one attempt): runs on a bulkhead worker."""
        if self._closed:
            raise RuntimeError(f"HTTP client {self.name!r} is closed")
        if request.guarded:
            if request.in_doubt:
                raise NotResent(
                    request.method,
                    str(request.url),
                    None,
                    "an earlier attempt may have reached the server (it timed out, or its "
                    "answer was an error the retry config retries)",
                )
            request.in_doubt = True
        try:
            client = self._thread_client() if self._per_thread else self._client
            response = client.request(
                request.method,
                request.url,
                json=request.json,
                params=request.params,
                headers=request.headers,
                timeout=(
                    request.timeout if request.timeout is not None else httpx.USE_CLIENT_DEFAULT
                ),
            )
        except httpx.TransportError as error:
            with self._lock:
                self._transport_errors += 1
            if request.guarded:
                if not isinstance(error, _NOT_SENT):
                    raise RequestInDoubt(
                        request.method,
                        str(request.url),
                        error,
                        f"the connection failed after the request may have reached the server "
                        f"({type(error).__name__}: {error})",
                    ) from error
                request.in_doubt = False
            raise
        status = response.status_code
        with self._lock:
            self._statuses[status] += 1
        if status < 400:
            return response
        refused = _error_for(response, self._max_retry_after)
        if isinstance(refused, RateLimitResponse):
            request.in_doubt = False  # the server asked to come back later: safe to resend
            self._feedback(refused)
        raise refused

    def _feedback(self, error: RateLimitResponse) -> None:
        """Tell the limiter the service asked to slow down (non-blocking); a pause is capped."""
        limiter = self._limiter
        if limiter is None:
            return
        with self._lock:
            self._feedbacks += 1
        pause = error.max_retry_after if isinstance(error, RetryAfterTooLong) else error.retry_after
        limiter.tell(RateLimitFeedback(retry_after=pause, reason=f"http {error.status_code}"))

    # -- status and lifecycle -------------------------------------------------------------------

    def status(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """The pipeline's status, plus ``http``: base URL, answers by status, transport errors,
        limiter feedbacks sent, connection pools (one per worker thread that sent)."""
        with self._lock:
            http = {
                "name": self.name,
                "base_url": self.config.base_url,
                "closed": self._closed,
                "responses": dict(self._statuses),
                "transport_errors": self._transport_errors,
                "feedbacks_sent": self._feedbacks,
                "connection_pools": len(self._pools) if self._per_thread else 1,
            }
        return {**self.pipeline.status(timeout), "http": http}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the connection pools (idempotent); later requests raise RuntimeError.

        The pipeline's actors belong to the runtime and stop with it.
        """
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, []
        for _, client in pools:
            client.close()
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<garrison.HttpClient {self.name!r} {self.config.base_url} {state}>"


def build_http_client(
    runtime: Runtime,
    name: str,
    base_url: str,
    *,
    rate_limit: RateLimitConfig | None = None,
    retry: RetryConfig | None = None,
    circuit_breaker: CircuitBreakerConfig | None = None,
    timeout: TimeoutConfig | None = None,
    bulkhead: BulkheadConfig | None = None,
    headers: Mapping[str, str] | None = None,
    retry_on_rate_limit: bool = True,
    count_4xx_as_failures: bool = False,
    count_503_as_failures: bool = True,
    http_timeout: float | None = None,
    max_retry_after: float | None = None,
    retry_non_idempotent: bool = False,
    monitor: bool = False,
    transport: httpx.BaseTransport | None = None,
    **seed_options: Any,
) -> HttpClient:
    """Build the pipeline ``http:<name>`` on ``runtime`` and an :class:`HttpClient` on it.

    ``seed_options`` are the seed's RateLimitedAPINode options (see
    :meth:`HttpClientConfig.from_seed`); giving a stage both as a config and as seed options
    is a ConfigError. Everything is validated before the pipeline is built.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"HTTP client name must be a non-empty string without '/', got {name!r}")
    config = HttpClientConfig.from_seed(
        seed_options,
        base_url=base_url,
        rate_limit=rate_limit,
        retry=retry,
        circuit_breaker=circuit_breaker,
        timeout=timeout,
        bulkhead=bulkhead,
        headers=dict(headers) if headers is not None else {},
        retry_on_rate_limit=retry_on_rate_limit,
        count_4xx_as_failures=count_4xx_as_failures,
        count_503_as_failures=count_503_as_failures,
        http_timeout=http_timeout,
        max_retry_after=max_retry_after,
        retry_non_idempotent=retry_non_idempotent,
    )
    pipeline_name = f"http:{name}"
    if pipeline_name in runtime.pipelines():
        raise ValueError(f"HTTP client {name!r} already exists (pipeline {pipeline_name!r})")
    pipeline = runtime.pipeline(pipeline_name, monitor=monitor, **config.stages())
    return HttpClient(name, pipeline, config, transport=transport)
