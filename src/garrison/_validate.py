"""Small validators for config objects: typed values or a ConfigError naming the key."""

from __future__ import annotations

import math

from garrison.errors import ConfigError

__all__ = ["require_int", "require_number"]


def require_int(key: str, value: object, *, minimum: int) -> int:
    """``value`` as an int of at least ``minimum`` (a bool is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value!r}")
    return value


def require_number(key: str, value: object, *, above: float | None = None) -> float:
    """``value`` as a finite float, greater than ``above`` if given (a bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if above is not None and value <= above:
        raise ConfigError(key, f"must be > {above:g}, got {value!r}")
    return float(value)
