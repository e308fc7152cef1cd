"""structlog event conventions.

Every event garrison logs has a stable, namespaced name (``garrison.<component>.<what>``,
e.g. ``garrison.breaker.opened``, ``garrison.supervisor.restarted``) and flat key-value
fields. garrison never configures structlog globally: applications (and the ``garrison``
command) choose renderers and levels; an unconfigured structlog prints to stdout.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Literal

import structlog

__all__ = ["Level", "emit", "logger"]

Level = Literal["debug", "info", "warning", "error", "critical"]

logger: Any = structlog.get_logger("garrison")


def emit(event: str, *, level: Level = "info", **fields: Any) -> None:
    """Log the event ``event`` (a ``garrison.*`` name) at ``level`` with flat ``fields``.

    Exceptions among the fields are rendered as ``TypeName: message`` so that events stay
    one flat line in every renderer.

    A failing logging configuration (a processor that raises, a closed stream) never
    reaches the caller: garrison logs from inside its actors, and a log line must not crash
    one. The event is then written to stderr as plain text, with the logging error.
    """
    for name, value in fields.items():
        if isinstance(value, BaseException):
            fields[name] = f"{type(value).__name__}: {value}"
    try:
        getattr(logger, level)(event, **fields)
    except Exception as error:  # the application's logging is broken, not garrison
        _fallback(event, level, fields, error)


def _fallback(event: str, level: str, fields: dict[str, Any], error: Exception) -> None:
    text = " ".join(f"{key}={value!r}" for key, value in fields.items())
    with contextlib.suppress(Exception):
        sys.stderr.write(
            f"[{level}] {event} {text} (structlog failed: {type(error).__name__}: {error})\n"
        )
