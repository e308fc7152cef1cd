"""structlog event conventions.

Every event garrison logs has a stable, namespaced name (``garrison.<component>.<what>``,
e.g. ``garrison.breaker.opened``, ``garrison.supervisor.restarted``) and flat key-value
fields. garrison never configures structlog globally: applications (and the ``garrison``
command) choose renderers and levels; an unconfigured structlog prints to stdout.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog

__all__ = ["Level", "emit", "logger"]

Level = Literal["debug", "info", "warning", "error", "critical"]

logger: Any = structlog.get_logger("garrison")


def emit(event: str, *, level: Level = "info", **fields: Any) -> None:
    """Log the event ``event`` (a ``garrison.*`` name) at ``level`` with flat ``fields``.

    Exceptions among the fields are rendered as ``TypeName: message`` so that events stay
    one flat line in every renderer.
    """
    for name, value in fields.items():
        if isinstance(value, BaseException):
            fields[name] = f"{type(value).__name__}: {value}"
    getattr(logger, level)(event, **fields)
