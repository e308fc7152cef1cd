"""Rate-limit windows in Redis: one Lua script per decision, Redis TIME as the clock.

Each algorithm is one script that reads a key's state, decides for every window at once and
writes the new state only when every window admits (all or none), so no two processes can
both take the last slot. Times are integer microseconds of ``redis.call('TIME')``: every
process uses the server's clock, so clock skew between hosts cannot over-admit. A request
of ``cost`` is checked with exactly the rules of :mod:`garrison.policies.rate`:

- ``sliding_log``: a list of admission times, newest first, capped at the largest limit
  (``LTRIM``); a window ``(T, N)`` refuses while the ``(N - cost)``-th newest entry is later
  than ``now - T``, and that entry plus ``T`` is when it admits again (exact).
- ``gcra``: one theoretical arrival time per window; it admits while
  ``max(TAT, now) + cost * T / N <= now + max(T, cost * T / N)``.
- ``sliding_window``: per window the index of the fixed window and two counters;
  ``prev * (1 - f) + cur + cost <= N``.

A script answers an admission with the server time alone (an integer: the cheapest reply
to parse) and a rejection with ``{0, wait, window, now}``, ``wait`` being the microseconds
until the least time at which the same request would be admitted if nothing else is
(checked against the decision itself, so it never "retries" into another rejection).
Every write sets a ``PX`` expiry (``key_ttl``, as in memory), and every key
of a client shares one ``{...}`` hash tag: ``garrison:<namespace>:<service>:{<key>}:<alg>``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Final

from garrison.backends._connection import BackendDown, RedisLink, Script
from garrison.errors import BackendUnavailable
from garrison.policies.rate import Decision, RateLimitConfig, RateLimitPolicy

__all__ = ["RedisRateLimit", "SharedRatePolicy", "encode_key"]

_PREAMBLE: Final = """
local key = KEYS[1]
local write = ARGV[1] == '1'
local cost = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
"""

_SLIDING_LOG: Final = (
    _PREAMBLE
    + """
local ttl = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local head = redis.call('LINDEX', key, 0)
local at, bind, w = now, 0, 0
if head then
  head = tonumber(head)
  if head > now then now = head; at = now end
  for i = 6, #ARGV, 2 do
    w = w + 1
    local k = tonumber(ARGV[i + 1]) - cost
    if k < 0 then k = 0 end
    local entry = redis.call('LINDEX', key, k)
    if entry then
      local free = tonumber(entry) + tonumber(ARGV[i])
      if free > now and free > at then at, bind = free, w end
    end
  end
end
if bind > 0 then return {0, at - now, bind, now} end
if write then
  local stamp = string.format('%.0f', now)
  local left = cost
  while left > 0 do
    local items = {}
    for j = 1, math.min(left, 1000) do items[j] = stamp end
    redis.call('LPUSH', key, unpack(items))
    left = left - #items
  end
  redis.call('LTRIM', key, 0, cap - 1)
  redis.call('PEXPIRE', key, ttl)
end
return now
"""
)

_GCRA: Final = (
    _PREAMBLE
    + """
local rel = 1 + 2 ^ -50
local extra = tonumber(ARGV[4])
local raw = redis.call('GET', key)
local tats = {}
if raw then for v in string.gmatch(raw, '[^ ]+') do tats[#tats + 1] = tonumber(v) end end
local function refuses(t, tat, inv, step, tol)
  local tu = t * inv
  if tat > tu then return tat + step > tu * rel + tol end
  return tu + step > tu * rel + tol
end
local at, bind, w, horizon = now, 0, 0, now
local out = {}
for i = 5, #ARGV, 4 do
  w = w + 1
  local inv, e0 = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local step, tol = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local tat = tats[w] or -1
  if refuses(now, tat, inv, step, tol) then
    local t = math.ceil((tat + step - tol) / rel * e0)
    if t <= now then t = now + 1 end
    local n = 0
    while refuses(t, tat, inv, step, tol) do
      n = n + 1
      if n > 64 then t = math.ceil((tat + step) * e0) + 1 break end
      t = t + 1
    end
    if t > at then at, bind = t, w end
  else
    local nu = now * inv
    local new = (tat > nu and tat or nu) + step
    out[w] = string.format('%.17g', new)
    if new * e0 > horizon then horizon = new * e0 end
  end
end
if bind > 0 then return {0, at - now, bind, now} end
if write then
  local px = math.max(1, math.ceil((horizon - now) / 1000) + extra)
  redis.call('SET', key, table.concat(out, ' '), 'PX', px)
end
return now
"""
)

_SLIDING_WINDOW: Final = (
    _PREAMBLE
    + """
local extra = tonumber(ARGV[4])
local raw = redis.call('GET', key)
local st = {}
if raw then for v in string.gmatch(raw, '[^ ]+') do st[#st + 1] = tonumber(v) end end
local function refuses(t, span, limit, idx, prev, cur)
  local q = t / span
  local it = math.floor(q)
  local p, c = 0, 0
  if it == idx then p, c = prev, cur elseif it == idx + 1 then p = cur else return false end
  return p * (1 - (q - it)) + c + cost > limit
end
local at, bind, w, horizon = now, 0, 0, now
local out = {}
for i = 5, #ARGV, 2 do
  w = w + 1
  local span = tonumber(ARGV[i])
  local limit = tonumber(ARGV[i + 1])
  if limit < cost then limit = cost end
  local idx = math.floor(now / span)
  local stored, prev, cur = st[3 * w - 2], 0, 0
  if stored == idx then prev, cur = st[3 * w - 1], st[3 * w]
  elseif stored == idx - 1 then prev = st[3 * w] end
  if raw and refuses(now, span, limit, idx, prev, cur) then
    local room = limit - cost
    local t
    if cur > room then t = math.ceil((idx + 2 - room / cur) * span)
    else t = math.ceil((idx + 1 - (room - cur) / prev) * span) end
    if t <= now then t = now + 1 end
    local n = 0
    while refuses(t, span, limit, idx, prev, cur) do
      n = n + 1
      if n > 64 then t = (idx + 2) * span break end
      t = t + 1
    end
    if t > at then at, bind = t, w end
  else
    out[w] = string.format('%.0f %.0f %.0f', idx, prev, cur + cost)
    local ends = (idx + 2) * span
    if ends > horizon then horizon = ends end
  end
end
if bind > 0 then return {0, at - now, bind, now} end
if write then
  local px = math.max(1, math.ceil((horizon - now) / 1000) + extra)
  redis.call('SET', key, table.concat(out, ' '), 'PX', px)
end
return now
"""
)

_SCRIPTS: Final = {
    "sliding_log": Script("sliding_log", _SLIDING_LOG),
    "gcra": Script("gcra", _GCRA),
    "sliding_window": Script("sliding_window", _SLIDING_WINDOW),
}
_SUFFIX: Final = {"sliding_log": "log", "gcra": "gcra", "sliding_window": "sw"}
_US: Final = 1_000_000
_REL: Final = 1.0 + 2.0**-50
_ALLOWED: Final = Decision(True, 0.0, "")


def encode_key(key: Hashable) -> str:
    """The client key as text for a Redis key name: distinct keys stay distinct, and the
    text has no braces (so the ``{...}`` hash tag around it is always the whole of it)."""
    if isinstance(key, str):  # "~" only ever starts the text of another type's key
        text = key.replace("%", "%25").replace("~", "%7E")
    elif key is None:
        return "~"
    else:
        text = f"~{type(key).__name__}:{key!r}".replace("%", "%25")
    return text.replace("{", "%7B").replace("}", "%7D") or "%"


def _us(seconds: float) -> int:
    return round(seconds * _US)


class RedisRateLimit:
    """The windows of one :class:`RateLimitConfig` kept in Redis under ``prefix``.

    ``acquire``/``peek`` decide one request with one EVALSHA; ``acquire_many`` decides
    several in one round trip. ``at`` (seconds) replaces Redis TIME: for tests only.
    Raises :class:`BackendDown` when Redis does not answer.
    """

    def __init__(self, link: RedisLink, config: RateLimitConfig, prefix: str) -> None:
        self._link = link
        self.config = config
        self._prefix = prefix
        self._script = _SCRIPTS[config.algorithm]
        self._suffix = _SUFFIX[config.algorithm]
        self._labels = tuple(w.label for w in config.windows)
        self._spans = tuple(_us(w.seconds) for w in config.windows)
        self._capacity = max(w.limit for w in config.windows)
        self._extra_ms = math.ceil((config.effective_key_ttl - config.windows[-1].seconds) * 1000)
        self._ttl_ms = math.ceil(config.effective_key_ttl * 1000)
        self._configured = tuple(w.limit for w in config.windows)
        self._limits: tuple[int, ...] = self._configured
        self._cached: dict[int, list[str]] = {}
        self._encoded: dict[tuple[bool, int], tuple[bytes, ...]] = {}
        self._checker = RateLimitPolicy(config)

    def set_limits(self, limits: Sequence[int]) -> None:
        """The effective limit of each window (after adaptive throttling)."""
        self._limits = tuple(limits)
        self._cached.clear()
        self._encoded.clear()

    def redis_key(self, key: Hashable) -> str:
        """The Redis key that holds ``key``'s windows."""
        return f"{self._prefix}:{{{encode_key(key)}}}:{self._suffix}"

    def _window_args(self, cost: int) -> list[str]:
        cached = self._cached.get(cost)
        if cached is not None:
            return cached
        args: list[str] = []
        algorithm = self.config.algorithm
        if algorithm == "sliding_log":
            args += [str(self._ttl_ms), str(self._capacity)]
            for span, limit in zip(self._spans, self._limits, strict=True):
                args += [str(span), str(limit)]
        elif algorithm == "gcra":  # in emission intervals, as garrison.policies.rate does
            args.append(str(self._extra_ms))
            for span, n, limit in zip(self._spans, self._configured, self._limits, strict=True):
                slack = 0.0 if limit == n else n * (_REL - 1.0)
                step = n / limit * cost
                args += [
                    repr(n / span),
                    repr(span / n),
                    repr(step),
                    repr(max(n + slack, step + slack)),
                ]
        else:
            args.append(str(self._extra_ms))
            for span, limit in zip(self._spans, self._limits, strict=True):
                args += [str(span), str(limit)]
        if len(self._cached) < 64:
            self._cached[cost] = args
        return args

    def check_cost(self, cost: int) -> None:
        """Raise as the in-memory policy does for a cost that no window can ever admit."""
        if cost != 1:
            self._checker._check_cost(cost)

    def _args(self, write: bool, cost: int, at: float | None) -> Sequence[str | bytes]:
        if at is not None:
            return ["1" if write else "0", str(cost), str(_us(at)), *self._window_args(cost)]
        encoded = self._encoded.get((write, cost))
        if encoded is None:  # the arguments as redis-py would encode them, once
            args = ["1" if write else "0", str(cost), "", *self._window_args(cost)]
            encoded = tuple(arg.encode() for arg in args)
            if len(self._encoded) < 128:
                self._encoded[(write, cost)] = encoded
        return encoded

    def _decision(self, reply: Any) -> Decision:
        if type(reply) is int:
            return _ALLOWED
        return Decision(False, int(reply[1]) / _US, self._labels[int(reply[2]) - 1])

    def decide(
        self, key: Hashable, cost: int = 1, *, write: bool = True, at: float | None = None
    ) -> tuple[Decision, float]:
        """The decision and the server time (seconds) it was taken at."""
        self.check_cost(cost)
        reply = self._link.evalsha(self._script, [self.redis_key(key)], self._args(write, cost, at))
        return self._decision(reply), (reply if type(reply) is int else int(reply[3])) / _US

    def acquire(self, key: Hashable, cost: int = 1, *, at: float | None = None) -> Decision:
        """Admit and count ``cost`` units for ``key``, or reject (counting nothing)."""
        return self.decide(key, cost, at=at)[0]

    def peek(self, key: Hashable, cost: int = 1, *, at: float | None = None) -> Decision:
        """What :meth:`acquire` would answer, counting nothing."""
        return self.decide(key, cost, write=False, at=at)[0]

    def acquire_many(self, requests: Sequence[tuple[Hashable, int]]) -> list[Decision]:
        """:meth:`acquire` for each ``(key, cost)``, in order, in one round trip."""
        for _, cost in requests:
            self.check_cost(cost)
        calls = [([self.redis_key(key)], self._args(True, cost, None)) for key, cost in requests]
        return [self._decision(reply) for reply in self._link.evalsha_many(self._script, calls)]

    def reset(self, key: Hashable) -> None:
        """Forget ``key``'s windows."""
        self._link.call(lambda client: client.delete(self.redis_key(key)))


class SharedRatePolicy:
    """What a :class:`~garrison.actors.limiter.RateLimiterActor` decides with when its windows
    live in Redis: the interface of :class:`RateLimitPolicy`, Redis behind it.

    While the Redis link is down, ``on_backend_error`` decides: ``"local"`` keeps an
    in-memory policy with ``1/N`` of each limit (``N``: the configured or last seen number
    of processes, at least 1; a request that cannot fit in the share is rejected until
    Redis is back), ``"open"`` admits, ``"closed"`` raises :class:`BackendUnavailable`.
    Decisions go back to Redis as soon as its link is up again.
    """

    def __init__(
        self, link: RedisLink, config: RateLimitConfig, prefix: str, *, processes: Any
    ) -> None:
        self.config = config
        self._link = link
        self._processes = processes  # a callable: the N of the local share
        self._shape = RateLimitPolicy(config)  # the rate factor and effective limits only
        self.redis = RedisRateLimit(link, config, prefix)
        self._local: RateLimitPolicy | None = None
        self._local_n = 0
        self.shared_decisions = 0
        self.local_decisions = 0

    # -- decisions ------------------------------------------------------------------------------

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        """Admit and count a request in Redis (or, while it is down, per ``on_backend_error``)."""
        self.redis.check_cost(cost)
        if self._link.health.up:
            try:
                decision = self.redis.acquire(key, cost)
            except BackendDown:
                pass
            else:
                self.shared_decisions += 1
                return decision
        return self._degraded(key, now, cost, write=True)

    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        """What :meth:`acquire` would answer, without counting anything."""
        self.redis.check_cost(cost)
        if self._link.health.up:
            try:
                return self.redis.peek(key, cost)
            except BackendDown:
                pass
        return self._degraded(key, now, cost, write=False)

    def acquire_many(
        self, requests: Sequence[tuple[Hashable, int]], now: float
    ) -> list[Decision | BaseException]:
        """:meth:`acquire` for each ``(key, cost)`` in order, in one Redis round trip; an
        invalid cost, or a rejection by ``on_backend_error="closed"``, is its error."""
        results: list[Decision | BaseException] = [_ALLOWED] * len(requests)
        valid: list[int] = []
        for i, (_, cost) in enumerate(requests):
            try:
                self.redis.check_cost(cost)
            except (TypeError, ValueError) as error:
                results[i] = error
            else:
                valid.append(i)
        if valid and self._link.health.up:
            try:
                decisions = self.redis.acquire_many([requests[i] for i in valid])
            except BackendDown:
                pass
            else:
                for i, decision in zip(valid, decisions, strict=True):
                    results[i] = decision
                self.shared_decisions += len(valid)
                return results
        for i in valid:
            key, cost = requests[i]
            try:
                results[i] = self._degraded(key, now, cost, write=True)
            except BackendUnavailable as error:
                results[i] = error
        return results

    def _degraded(self, key: Hashable, now: float, cost: int, *, write: bool) -> Decision:
        mode = self._link.config.on_backend_error
        if write:
            self.local_decisions += 1
        if mode == "open":
            return _ALLOWED
        wait = self._link.config.retry_interval
        if mode == "closed":
            if write:
                raise BackendUnavailable(self._link.config.display_url, retry_after=wait)
            return Decision(False, wait, "backend")
        local = self._local_policy()
        try:
            return local.acquire(key, now, cost) if write else local.peek(key, now, cost)
        except ValueError:  # more than the local share can ever hold: wait for Redis
            return Decision(False, wait, "local_share")

    def _local_policy(self) -> RateLimitPolicy:
        n = max(1, int(self._processes()))
        local = self._local
        if local is None or n != self._local_n:
            config = self.config
            local = RateLimitPolicy(
                RateLimitConfig(
                    limits={w.label: max(1, w.limit // n) for w in config.windows},
                    algorithm=config.algorithm,
                    key_ttl=config.key_ttl,
                    min_rate_fraction=config.min_rate_fraction,
                )
            )
            if self._shape.rate_factor < 1.0:
                local.set_rate_factor(self._shape.rate_factor)
            self._local, self._local_n = local, n
        return local

    # -- the rest of RateLimitPolicy's interface ------------------------------------------------

    @property
    def rate_factor(self) -> float:
        """The adaptive-throttling factor (1.0: the configured limits)."""
        return self._shape.rate_factor

    def set_rate_factor(self, factor: float) -> float:
        """Scale every window's limit (in Redis and in the local share); return the factor."""
        used = self._shape.set_rate_factor(factor)
        self.redis.set_limits(self._shape.effective_limits())
        if self._local is not None:
            self._local.set_rate_factor(max(used, self._local.config.min_rate_fraction))
        return used

    def effective_limits(self) -> tuple[int, ...]:
        """The limit of each window after the rate factor."""
        return self._shape.effective_limits()

    def key_count(self) -> int:
        """Keys held in memory (by the local share); Redis expires its own."""
        return self._local.key_count() if self._local is not None else 0

    def expire(self, now: float, max_keys: int | None = None) -> int:
        """Drop idle keys of the local share."""
        return self._local.expire(now, max_keys) if self._local is not None else 0

    def backend_status(self) -> dict[str, Any]:
        """Where decisions are taken now, and how many were taken where."""
        return {
            "backend": self._link.config.display_url,
            "deciding": "redis" if self._link.health.up else self._link.config.on_backend_error,
            "shared_decisions": self.shared_decisions,
            "local_decisions": self.local_decisions,
            "local_share_of": self._local_n or None,
        }

    def snapshot(self) -> dict[str, Any]:
        """The rate factor (the windows themselves live in Redis)."""
        return {"shared": True, "rate_factor": self._shape.rate_factor}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Take over a predecessor's rate factor."""
        factor = float(snapshot.get("rate_factor", 1.0))
        if factor < 1.0:
            self.set_rate_factor(factor)
