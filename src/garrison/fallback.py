"""The seed document's ``with_fallback`` helper, and an asyncio twin.

``with_fallback(primary, fallback, *args, **kwargs)`` calls ``primary(*args, **kwargs)`` and
returns its result when it succeeded; otherwise it calls ``fallback(*args, **kwargs)`` and
returns that, marked ``used_fallback: True``. It keeps the seed's dictionary conventions:

- **Primary succeeded** when it returned normally and its result is not a mapping whose
  ``"status"`` is something other than ``"success"``. So ``{"status": "success", ...}`` and
  any non-mapping value (a number, a model object, ``None``) count as success, and so does a
  mapping without a ``"status"`` key (the seed would have treated that as a failure, which
  turns every plain ``{"id": 1}`` into a fallback); ``{"status": "error", ...}`` is a
  failure. An exception (any ``Exception``; ``KeyboardInterrupt`` and cancellation
  propagate) is a failure and is logged as ``garrison.fallback.primary_failed`` (the seed
  printed it), as is a non-success status.
- **The fallback's result** is returned with ``used_fallback: True``: a mapping is copied
  into a new dict with that key set (the fallback's own dict is never mutated, the seed
  mutated it); any other value ``v`` becomes ``{"result": v, "used_fallback": True}``.
- **Both failed**: ``{"status": "error", "error": "Both primary and fallback failed:
  <fallback's error>", "used_fallback": True, "primary_error": "<primary's error or
  status>"}``, as in the seed plus the ``primary_error`` key; logged as
  ``garrison.fallback.both_failed``.

:func:`awith_fallback` does the same inside asyncio: either function may be a coroutine
function (or return any awaitable); plain functions are called directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from garrison.observability.events import emit

__all__ = ["awith_fallback", "with_fallback"]

P = ParamSpec("P")
R = TypeVar("R")

_SUCCESS = "success"


def _failed_status(result: object) -> object | None:
    """The non-success ``status`` of a mapping result, or None when it counts as success."""
    if isinstance(result, Mapping):
        status = result.get("status", _SUCCESS)
        if status != _SUCCESS:
            return status if status is not None else "None"
    return None


def _mark(result: object) -> dict[str, Any]:
    if isinstance(result, Mapping):
        marked = dict(result)
        marked["used_fallback"] = True
        return marked
    return {"result": result, "used_fallback": True}


def _name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _primary_failed(primary: Callable[..., Any], problem: str) -> None:
    emit("garrison.fallback.primary_failed", level="warning", primary=_name(primary), error=problem)


def _both_failed(
    primary: Callable[..., Any], fallback: Callable[..., Any], error: Exception, primary_error: str
) -> dict[str, Any]:
    emit(
        "garrison.fallback.both_failed",
        level="error",
        primary=_name(primary),
        fallback=_name(fallback),
        error=error,
        primary_error=primary_error,
    )
    return {
        "status": "error",
        "error": f"Both primary and fallback failed: {error}",
        "used_fallback": True,
        "primary_error": primary_error,
    }


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def with_fallback(
    primary_func: Callable[P, R],
    fallback_func: Callable[P, Any],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R | dict[str, Any]:
    """Run ``primary_func``; on an exception or a non-success status run ``fallback_func``.

    Both get the same ``*args`` and ``**kwargs``. See the module docstring for what counts as
    success and the shape of the fallback's result.
    """
    try:
        result = primary_func(*args, **kwargs)
    except Exception as error:
        problem = _describe(error)
    else:
        status = _failed_status(result)
        if status is None:
            return result
        problem = f"status {status!r}"
    _primary_failed(primary_func, problem)
    try:
        fallback_result = fallback_func(*args, **kwargs)
    except Exception as error:
        return _both_failed(primary_func, fallback_func, error, problem)
    return _mark(fallback_result)


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def awith_fallback(
    primary_func: Callable[P, Any],
    fallback_func: Callable[P, Any],
    *args: P.args,
    **kwargs: P.kwargs,
) -> Any:
    """:func:`with_fallback` for asyncio: awaits whichever function returns an awaitable.

    Cancellation of the awaiting task propagates; it never triggers the fallback.
    """
    try:
        result = await _call(primary_func, *args, **kwargs)
    except Exception as error:
        problem = _describe(error)
    else:
        status = _failed_status(result)
        if status is None:
            return result
        problem = f"status {status!r}"
    _primary_failed(primary_func, problem)
    try:
        fallback_result = await _call(fallback_func, *args, **kwargs)
    except Exception as error:
        return _both_failed(primary_func, fallback_func, error, problem)
    return _mark(fallback_result)
