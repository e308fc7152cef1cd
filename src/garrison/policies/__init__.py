"""Pure resilience policies: the decisions behind garrison's actors.

Every module here is plain logic with no threads, no clock and no randomness of its own:
each function takes the current monotonic time (``now``, seconds) explicitly and any
randomness as an injected :class:`random.Random`. Actors own one policy object each, ask it
what to do, and carry out the answer (reply, forward, arm a timer, log an event).

- :mod:`garrison.policies.breaker`: the circuit-breaker state machine
  (:class:`~garrison.policies.breaker.CircuitBreakerConfig`,
  :class:`~garrison.policies.breaker.BreakerPolicy`).
- :mod:`garrison.policies.backoff`: retry backoff schedules, retry decisions and the retry
  budget (:class:`~garrison.policies.backoff.RetryConfig`,
  :class:`~garrison.policies.backoff.RetryPolicy`,
  :class:`~garrison.policies.backoff.RetryBudget`).
- :mod:`garrison.policies.rate`: keyed rate limits over several windows with the
  ``sliding_log``, ``gcra`` and ``sliding_window`` algorithms
  (:class:`~garrison.policies.rate.RateLimitConfig`,
  :class:`~garrison.policies.rate.RateLimitPolicy`, :class:`~garrison.policies.rate.Decision`).
"""
