"""What the breaker and limiter actors know of a backend: messages and interfaces.

Nothing here imports redis: the actors depend on these types only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from garrison._ref import Ref
    from garrison.policies.breaker import CircuitBreakerConfig
    from garrison.policies.rate import Decision, RateLimitConfig

__all__ = [
    "Backend",
    "BreakerFleet",
    "FleetProbe",
    "FleetRecovered",
    "FleetTrip",
    "SharedLimits",
]


@dataclass(frozen=True, slots=True)
class FleetTrip:
    """Other processes tripped ``service``'s breaker (``processes`` of them, the latest
    ``age`` seconds ago): open it."""

    service: str
    age: float = 0.0
    processes: int = 1


@dataclass(frozen=True, slots=True)
class FleetRecovered:
    """Another process probed ``service`` successfully and closed its breaker: close too."""

    service: str


@dataclass(frozen=True, slots=True, eq=False)
class FleetProbe:
    """The answer to a request for the fleet-wide probe lock: ``granted``, or held by
    another process for ``wait`` more seconds."""

    token: object
    granted: bool
    wait: float = 0.0


class BreakerFleet(Protocol):
    """The breaker side of a backend: trips and probes shared with other processes."""

    def register(self, service: str, ref: Ref, config: CircuitBreakerConfig) -> object:
        """Tell ``ref`` about trips of ``service``; returns a token for :meth:`unregister`."""
        ...

    def unregister(self, token: object) -> None:
        """Stop telling the breaker registered with ``token``."""
        ...

    def tripped(self, service: str, config: CircuitBreakerConfig) -> None:
        """This process's breaker of ``service`` opened: record and publish it."""
        ...

    def recovered(self, service: str) -> None:
        """This process's probes of ``service`` succeeded: release the probe, publish."""
        ...

    def request_probe(self, service: str, ref: Ref, token: object, ttl: float) -> None:
        """Try to take ``service``'s probe lock for ``ttl`` s; answer ``ref`` a FleetProbe."""
        ...

    def release_probe(self, service: str) -> None:
        """Give ``service``'s probe lock back (if this process holds it)."""
        ...


class SharedLimits(Protocol):
    """The interface of :class:`~garrison.policies.rate.RateLimitPolicy` that the limiter
    actor uses, plus batching, for windows kept outside the process."""

    config: RateLimitConfig

    def acquire(self, key: Hashable, now: float, cost: int = 1) -> Decision: ...

    def peek(self, key: Hashable, now: float, cost: int = 1) -> Decision: ...

    def acquire_many(
        self, requests: Sequence[tuple[Hashable, int]], now: float
    ) -> list[Decision | BaseException]: ...

    @property
    def rate_factor(self) -> float: ...

    def set_rate_factor(self, factor: float) -> float: ...

    def effective_limits(self) -> tuple[int, ...]: ...

    def key_count(self) -> int: ...

    def backend_status(self) -> dict[str, Any]: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, snapshot: dict[str, Any]) -> None: ...


class Backend(Protocol):
    """A shared backend as the actors see it."""

    @property
    def fleet(self) -> BreakerFleet:
        """The breaker side."""
        ...

    def rate_policy(self, config: RateLimitConfig, service: str) -> SharedLimits:
        """The limiter side: a policy for ``service``'s windows."""
        ...
