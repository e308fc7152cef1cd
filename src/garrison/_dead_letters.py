"""Dead letters: messages that could not be delivered or handled, kept visible.

A tell sent to an actor that has stopped, a tell queued behind a crash with nobody to
restart the actor, or a tell whose handling failed ends here: as a log event
(``garrison.dead_letter``), a counter and a bounded list of the most recent ones. Nothing is
dropped silently.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from garrison.observability.events import emit

__all__ = ["DeadLetter", "DeadLetters", "default_dead_letters"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One undelivered message: whom it was for, why it ended here, and the error if any."""

    recipient: str
    message: Any
    reason: str
    error: BaseException | None = None


class DeadLetters:
    """A thread-safe sink for dead letters keeping the ``keep`` most recent ones."""

    def __init__(self, keep: int = 100) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self._recent: deque[DeadLetter] = deque(maxlen=keep)
        self._counter = itertools.count(1)
        self._count = 0
        self._lock = threading.Lock()

    def record(
        self, recipient: str, message: Any, reason: str, error: BaseException | None = None
    ) -> None:
        """Record an undelivered ``message`` for ``recipient`` and log it."""
        letter = DeadLetter(recipient, message, reason, error)
        with self._lock:
            self._recent.append(letter)
            self._count = next(self._counter)
        fields: dict[str, Any] = {
            "recipient": recipient,
            "message": repr(message),
            "reason": reason,
        }
        if error is not None:
            fields["error"] = error
        emit("garrison.dead_letter", level="warning", **fields)

    @property
    def count(self) -> int:
        """How many dead letters were recorded since this sink was made."""
        return self._count

    def recent(self) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        with self._lock:
            return list(self._recent)


default_dead_letters = DeadLetters()
"""The sink for actors that no Runtime owns."""
