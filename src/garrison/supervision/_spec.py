"""Child specifications, restart strategies and restart types."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pykka

__all__ = ["ChildSpec", "Restart", "Strategy"]


class Strategy(enum.Enum):
    """What a supervisor restarts when one child fails (Erlang/OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"
    """Restart only the child that failed."""
    ONE_FOR_ALL = "one_for_all"
    """Stop every other child too, then restart them all in start order."""
    REST_FOR_ONE = "rest_for_one"
    """Stop the children started after the failed one, then restart it and them in order."""


class Restart(enum.Enum):
    """When a child that ended is restarted."""

    PERMANENT = "permanent"
    """Always, whether it crashed or stopped normally."""
    TRANSIENT = "transient"
    """Only when it crashed."""
    TEMPORARY = "temporary"
    """Never: once it ends it is removed from the tree."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor starts and treats one child.

    ``actor_class`` is any ``pykka.ThreadingActor`` subclass (garrison's own, the user's, or a
    nested :class:`~garrison.supervision.Supervisor`), started as ``actor_class(*args,
    **kwargs)``; keyword arguments ``clock``, ``scheduler`` and ``loop`` are supplied by the
    supervisor when the constructor takes them and they are not given. ``shutdown_timeout``
    bounds how long stopping the child may take before it is abandoned and reported.
    ``restart_buffer`` bounds the messages accepted for it while it restarts; past that
    bound senders get :class:`~garrison.errors.ActorUnavailable`.
    """

    name: str
    actor_class: type[pykka.Actor]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    restart_buffer: int = 1000

    def __post_init__(self) -> None:
        name: object = self.name
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"ChildSpec.name must be a non-empty string without '/', got {name!r}")
        cls: object = self.actor_class
        if not (isinstance(cls, type) and issubclass(cls, pykka.ThreadingActor)):
            raise TypeError(
                f"ChildSpec({name!r}).actor_class must be a pykka.ThreadingActor subclass, "
                f"got {cls!r}"
            )
        args: object = self.args
        if isinstance(args, list):
            object.__setattr__(self, "args", tuple(args))
        elif not isinstance(args, tuple):
            raise TypeError(f"ChildSpec({name!r}).args must be a tuple, got {args!r}")
        kwargs: object = self.kwargs
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"ChildSpec({name!r}).kwargs must be a mapping, got {kwargs!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(kwargs)))
        restart: object = self.restart
        if isinstance(restart, str):
            try:
                object.__setattr__(self, "restart", Restart(restart.lower()))
            except ValueError:
                raise ValueError(
                    f"ChildSpec({name!r}).restart must be permanent, transient or temporary, "
                    f"got {restart!r}"
                ) from None
        elif not isinstance(restart, Restart):
            raise TypeError(f"ChildSpec({name!r}).restart must be a Restart, got {restart!r}")
        timeout: object = self.shutdown_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise ValueError(
                f"ChildSpec({name!r}).shutdown_timeout must be > 0 and finite, got {timeout!r}"
            )
        buffer: object = self.restart_buffer
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 0:
            raise ValueError(
                f"ChildSpec({name!r}).restart_buffer must be an int >= 0, got {buffer!r}"
            )
