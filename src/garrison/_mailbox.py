"""The mailbox of a garrison actor: pykka's inbox, with no message ever left unanswered.

pykka drains an actor's inbox when it stops, failing queued asks and dropping queued tells,
and a message put after that drain is never looked at again. A :class:`Mailbox` closes that
gap: putting and closing take one lock, so a message is either queued before the close (and
answered by the drain) or refused at the door, and either way its asker gets
:class:`~garrison.errors.ActorUnavailable` and a tell goes to dead letters.

A mailbox can also be *suspended* while its actor restarts: it keeps its queue, and accepts
at most ``limit`` further messages until a new incarnation resumes it (supervision keeps the
mailbox across restarts, as Akka does).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from pykka import messages
from pykka._envelope import Envelope

from garrison._dead_letters import DeadLetters, default_dead_letters
from garrison.errors import ActorUnavailable

__all__ = ["Mailbox"]

_OPEN = 0
_SUSPENDED = 1
_CLOSED = 2


class Mailbox:
    """A FIFO inbox implementing pykka's inbox protocol (``put``, ``get``, ``empty``)."""

    __slots__ = (
        "_buffered",
        "_limit",
        "_lock",
        "_queue",
        "_reason",
        "_state",
        "dead_letters",
        "name",
    )

    def __init__(self, name: str = "actor", dead_letters: DeadLetters | None = None) -> None:
        self.name = name
        self.dead_letters = dead_letters if dead_letters is not None else default_dead_letters
        self._queue: queue.SimpleQueue[Envelope[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._state = _OPEN
        self._reason = ""
        self._buffered = 0
        self._limit = 0

    @property
    def closed(self) -> bool:
        """True once the mailbox refuses every message."""
        return self._state == _CLOSED

    @property
    def suspended(self) -> bool:
        """True while the mailbox waits for a new incarnation of its actor."""
        return self._state == _SUSPENDED

    def put(self, envelope: Envelope[Any], /) -> None:
        """Queue ``envelope``, or refuse it (failing its asker) if the mailbox is closed."""
        self.offer(envelope)

    def offer(self, envelope: Envelope[Any]) -> bool:
        """Queue ``envelope`` and return True, or refuse it with an outcome and return False."""
        with self._lock:
            state = self._state
            if state == _OPEN or (state == _SUSPENDED and self._buffered < self._limit):
                if state == _SUSPENDED:
                    self._buffered += 1
                self._queue.put(envelope)
                return True
            reason = self._reason if state == _CLOSED else "its restart buffer is full"
        self.refuse(envelope, reason)
        return False

    def get(self) -> Envelope[Any]:
        """Take the next envelope, waiting for one."""
        return self._queue.get()

    def empty(self) -> bool:
        """True when nothing is queued."""
        return self._queue.empty()

    def qsize(self) -> int:
        """How many envelopes are queued (approximate while others put)."""
        return self._queue.qsize()

    def suspend(self, limit: int) -> None:
        """Keep the queue for a coming incarnation; accept at most ``limit`` more messages."""
        with self._lock:
            if self._state == _OPEN:
                self._state = _SUSPENDED
                self._buffered = 0
                self._limit = limit

    def resume(self) -> None:
        """Accept messages again without bound (a new incarnation reads the queue)."""
        with self._lock:
            if self._state == _SUSPENDED:
                self._state = _OPEN

    def close(self, reason: str) -> int:
        """Refuse every further message and answer every queued one; return how many.

        Queued asks fail with :class:`ActorUnavailable`; queued tells go to dead letters.
        """
        with self._lock:
            if self._state != _CLOSED:
                self._state = _CLOSED
                self._reason = reason
            reason = self._reason
            leftovers: list[Envelope[Any]] = []
            while True:
                try:
                    leftovers.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for envelope in leftovers:
            self.refuse(envelope, reason)
        return len(leftovers)

    def refuse(self, envelope: Envelope[Any], reason: str) -> None:
        """Give ``envelope`` its outcome without handling it."""
        message = envelope.message
        reply = envelope.reply_to
        if isinstance(message, messages._ActorStop):
            if reply is not None:
                _settle(reply, None)
            return
        if reply is not None:
            _settle(reply, ActorUnavailable(self.name, reason))
        else:
            self.dead_letters.record(self.name, message, reason)


def _settle(reply: Any, error: BaseException | None) -> None:
    """Complete a garrison or pykka future, tolerating one that is already complete."""
    try:
        if error is None:
            reply.set(None)
        else:
            reply.set_exception((type(error), error, None))
    except queue.Full:  # a pykka future answered already: the first outcome stands
        pass
