"""Operations travel to actors as messages: :class:`Execute` and :class:`Priority`."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Execute", "GetStatus", "OperationFailed", "Priority"]


class Priority(enum.IntEnum):
    """How a waiting operation is ordered: ``HIGH`` before ``NORMAL`` before ``LOW``.

    The strings ``"high"``, ``"normal"`` and ``"low"`` (any case) are accepted wherever a
    Priority is: ``Priority("high") is Priority.HIGH``.
    """

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def _missing_(cls, value: object) -> Priority | None:
        if isinstance(value, str):
            text = value.strip()
            if text.isascii():
                member = cls.__members__.get(text.upper())
                if member is not None:
                    return member
        return None

    @classmethod
    def parse(cls, value: Priority | str | int) -> Priority:
        """Return the Priority ``value`` names; ``ValueError`` listing the choices if none."""
        if isinstance(value, bool):
            raise ValueError(f"priority must be one of 'high', 'normal', 'low', got {value!r}")
        try:
            return cls(value)  # type: ignore[arg-type]  # strings are handled by _missing_
        except ValueError:
            raise ValueError(
                f"priority must be one of 'high', 'normal', 'low', got {value!r}"
            ) from None


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Execute:
    """Run ``fn(*args, **kwargs)`` through whatever stages receive this message.

    ``key`` selects the rate-limit bucket (per client), ``priority`` orders waiting
    operations, ``timeout`` (seconds) overrides the timeout stage for this operation,
    ``name`` names the operation in events, metrics and the fallback cache (defaults to the
    function's qualified name), ``cost`` is its weight against rate limits.

    Everything is validated here, at construction: a non-callable ``fn`` is a
    ``TypeError``, a bad priority, timeout or cost a ``ValueError``.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    key: Hashable | None = None
    priority: Priority = Priority.NORMAL
    timeout: float | None = None
    name: str = ""
    cost: int = 1

    def __post_init__(self) -> None:
        # Exact-type checks first: the common case costs a few comparisons, not ABC lookups.
        if not callable(self.fn):
            raise TypeError(f"Execute.fn must be callable, got {type(self.fn).__name__}")
        args: object = self.args
        if type(args) is not tuple:
            if isinstance(args, list):
                object.__setattr__(self, "args", tuple(args))
            elif not isinstance(args, tuple):
                raise TypeError(f"Execute.args must be a tuple, got {type(args).__name__}")
        kwargs: object = self.kwargs
        if kwargs is not _EMPTY:
            if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
                raise TypeError(f"Execute.kwargs must be a mapping, got {type(kwargs).__name__}")
            for kwarg in kwargs:
                if type(kwarg) is not str:
                    raise TypeError(f"Execute.kwargs keys must be strings, got {kwarg!r}")
            object.__setattr__(self, "kwargs", MappingProxyType(dict(kwargs)))
        if self.key is not None:
            try:
                hash(self.key)
            except TypeError:
                raise TypeError(
                    f"Execute.key must be hashable, got {type(self.key).__name__}"
                ) from None
        priority: object = self.priority
        if type(priority) is not Priority:
            if not isinstance(priority, str | int):
                raise ValueError(
                    f"priority must be one of 'high', 'normal', 'low', got {priority!r}"
                )
            object.__setattr__(self, "priority", Priority.parse(priority))
        if self.timeout is not None:
            timeout = self.timeout
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"Execute.timeout must be a number, got {timeout!r}")
            if not (timeout > 0 and math.isfinite(timeout)):
                raise ValueError(f"Execute.timeout must be > 0 and finite, got {timeout!r}")
            object.__setattr__(self, "timeout", float(timeout))
        cost: object = self.cost
        if type(cost) is not int and (isinstance(cost, bool) or not isinstance(cost, int)):
            raise TypeError(f"Execute.cost must be an int, got {cost!r}")
        if self.cost < 1:
            raise ValueError(f"Execute.cost must be >= 1, got {self.cost}")
        name: object = self.name
        if type(name) is not str and not isinstance(name, str):
            raise TypeError(f"Execute.name must be a string, got {type(name).__name__}")
        if not self.name:
            object.__setattr__(self, "name", _name_of(self.fn))

    @classmethod
    def _of_call(  # noqa: PLR0917 (one per field of the message, on the hot path)
        cls,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: Hashable | None,
        priority: Priority,
        timeout: float | None,
        name: str,
        cost: int,
    ) -> Execute:
        """An Execute from options validated before (by a pipeline view): only ``fn`` is
        checked. ``args`` and ``kwargs`` must be a call's own ``*args, **kwargs`` (a tuple,
        and a fresh dict of string keys, kept as they are).
        """
        if not callable(fn):
            raise TypeError(f"Execute.fn must be callable, got {type(fn).__name__}")
        message = object.__new__(cls)
        set_field = object.__setattr__
        set_field(message, "fn", fn)
        set_field(message, "args", args)
        set_field(message, "kwargs", MappingProxyType(kwargs) if kwargs else _EMPTY)
        set_field(message, "key", key)
        set_field(message, "priority", priority)
        set_field(message, "timeout", timeout)
        if not name:
            name = getattr(fn, "__qualname__", "")
            if type(name) is not str or not name:
                name = _name_of(fn)
        set_field(message, "name", name)
        set_field(message, "cost", cost)
        return message

    def run(self) -> Any:
        """Call the function with the message's arguments (in the calling thread)."""
        kwargs = self.kwargs
        if kwargs is _EMPTY:  # the common case: no ** unpacking of a mapping proxy
            return self.fn(*self.args)
        return self.fn(*self.args, **kwargs)

    def __repr__(self) -> str:
        key = f", key={self.key!r}" if self.key is not None else ""
        timeout = f", timeout={self.timeout}" if self.timeout is not None else ""
        return f"Execute({self.name}, priority={self.priority.name}{key}{timeout})"


def _name_of(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


@dataclass(frozen=True, slots=True)
class OperationFailed:
    """An operation that failed with nobody waiting for it, routed to a fallback actor.

    A supervisor whose ``route_failures_to`` names a child sends it one of these for every
    told :class:`Execute` that a crash or a give-up left without an outcome.
    """

    operation: Execute
    error: BaseException | None
    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask a resilience actor for its status: it answers with a plain dict."""
