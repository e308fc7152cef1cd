"""The mailbox of a garrison actor: pykka's inbox, with no message ever left unanswered.

pykka drains an actor's inbox when it stops, failing queued asks and dropping queued tells,
and a message put after that drain is never looked at again. A :class:`Mailbox` closes that
gap: putting and closing take one lock, so a message is either queued before the close (and
answered by the drain) or refused at the door, and either way its asker gets
:class:`~garrison.errors.ActorUnavailable` and a tell goes to dead letters.

A mailbox outlives the actor incarnation reading it, as in Akka: a supervisor *suspends* it
while the actor restarts (it keeps its queue and accepts at most ``limit`` more messages)
and hands it to the new incarnation with :meth:`Mailbox.adopt`. Only the current *owner* may
take messages; an incarnation that was retired (say, abandoned while stuck in a long call)
gets ``None`` from :meth:`Mailbox.take` when it comes back and ends without touching the
queue. Urgent messages (a supervisor's stop) jump the queue.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any

from pykka import messages
from pykka._envelope import Envelope

from garrison._dead_letters import DeadLetters, default_dead_letters
from garrison.errors import ActorUnavailable

__all__ = ["Mailbox"]

_OPEN = 0
_SUSPENDED = 1
_CLOSED = 2


class _Wake:
    """A sentinel that wakes a taker blocked on the queue; never handed to an actor."""

    __slots__ = ()


_WAKE: Any = _Wake()


class Mailbox:
    """A FIFO inbox implementing pykka's inbox protocol (``put``, ``get``, ``empty``).

    Messages travel through a C-level :class:`queue.SimpleQueue` (the fast path); a small
    deque in front of it holds urgent messages and messages a retired reader took back. One
    lock guards the state (open, suspended, closed) and the owner, never the wait.
    """

    __slots__ = (
        "_buffered",
        "_front",
        "_handled",
        "_limit",
        "_lock",
        "_owner",
        "_queue",
        "_reason",
        "_sent",
        "_state",
        "dead_letters",
        "name",
    )

    def __init__(self, name: str = "actor", dead_letters: DeadLetters | None = None) -> None:
        self.name = name
        self.dead_letters: Any = dead_letters if dead_letters is not None else default_dead_letters
        self._queue: queue.SimpleQueue[Envelope[Any]] = queue.SimpleQueue()
        self._front: deque[Envelope[Any]] = deque()
        self._lock = threading.Lock()
        self._state = _OPEN
        self._reason = ""
        self._buffered = 0
        self._limit = 0
        self._owner: object | None = None
        # Envelopes queued, and envelopes a reader reported handled (mark_handled): a reader
        # that reports can tell whether anything sent to it is still unhandled (all_handled).
        self._sent = 0
        self._handled = 0

    @property
    def closed(self) -> bool:
        """True once the mailbox refuses every message."""
        return self._state == _CLOSED

    @property
    def suspended(self) -> bool:
        """True while the mailbox waits for a new incarnation of its actor."""
        return self._state == _SUSPENDED

    @property
    def owner(self) -> object | None:
        """The actor incarnation that reads this mailbox, if any."""
        return self._owner

    # -- sending ----------------------------------------------------------------------------

    def put(self, envelope: Envelope[Any], /) -> None:
        """Queue ``envelope``, or refuse it (failing its asker) if the mailbox is closed."""
        self.offer(envelope)

    def offer(self, envelope: Envelope[Any], *, urgent: bool = False) -> bool:
        """Queue ``envelope`` and return True, or refuse it with an outcome and return False.

        An ``urgent`` envelope goes ahead of everything queued.
        """
        with self._lock:
            state = self._state
            if urgent and state == _SUSPENDED and _is_stop(envelope):
                # Nobody reads a suspended mailbox: its actor has already stopped.
                settled = True
            elif state == _OPEN or (state == _SUSPENDED and self._buffered < self._limit):
                if state == _SUSPENDED:
                    self._buffered += 1
                self._sent += 1
                if urgent:
                    self._front.append(envelope)
                    self._queue.put(_WAKE)
                else:
                    self._queue.put(envelope)
                return True
            else:
                settled = False
                reason = self._reason if state == _CLOSED else "its restart buffer is full"
        if settled:
            if envelope.reply_to is not None:
                _settle(envelope.reply_to, None)
            return True
        self.refuse(envelope, reason)
        return False

    def post(self, message: Any, reply: Any) -> bool:
        """:meth:`offer` ``Envelope(message, reply)`` (an inbox may take it without one)."""
        return self.offer(Envelope(message, reply))

    def offer_behind(self, envelope: Envelope[Any]) -> bool:
        """:meth:`offer`, stated for a message an actor sends itself to be handled after
        everything already queued (a fused stage's port routes it behind its host's backlog).
        """
        return self.offer(envelope)

    def try_put(self, envelope: Envelope[Any]) -> bool:
        """Queue ``envelope`` if the mailbox takes it; otherwise return False and do nothing."""
        with self._lock:
            state = self._state
            if state == _OPEN or (state == _SUSPENDED and self._buffered < self._limit):
                if state == _SUSPENDED:
                    self._buffered += 1
                self._sent += 1
                self._queue.put(envelope)
                return True
            return False

    # -- receiving --------------------------------------------------------------------------

    def take(self, owner: object, *, block: bool = True) -> Envelope[Any] | None:
        """The next envelope for ``owner``, waiting for one; None once ``owner`` is retired.

        With ``block=False`` it never waits: None also when nothing is queued.
        """
        while True:
            if self._owner is not owner:
                return None
            if self._front:
                with self._lock:
                    if self._front and self._owner is owner:
                        return self._front.popleft()
                continue
            if block:
                envelope = self._queue.get()
            else:
                try:
                    envelope = self._queue.get_nowait()
                except queue.Empty:
                    return None
            if envelope is _WAKE:
                continue
            if self._owner is not owner:
                # Retired while waiting: the message belongs to the next reader, first.
                with self._lock:
                    self._front.appendleft(envelope)
                    self._queue.put(_WAKE)
                return None
            return envelope

    def wait(self, owner: object) -> None:
        """Wait until something is queued for ``owner`` (or it is retired); take nothing."""
        if self._owner is not owner or self._front:
            return
        envelope = self._queue.get()
        if envelope is _WAKE:
            return
        with self._lock:  # kept at the head, as the next message to take
            self._front.appendleft(envelope)

    def get(self) -> Envelope[Any]:
        """Take the next envelope, waiting for one (pykka's protocol; ignores ownership)."""
        while True:
            if self._front:
                with self._lock:
                    if self._front:
                        return self._front.popleft()
                continue
            envelope = self._queue.get()
            if envelope is not _WAKE:
                return envelope

    def mark_handled(self) -> None:
        """A reader that counts says it is done with one envelope it took (see all_handled)."""
        with self._lock:
            self._handled += 1

    def all_handled(self) -> bool:
        """True when every envelope queued so far was reported handled by its reader.

        Meaningful only for a reader that calls :meth:`mark_handled` for every envelope it
        takes (a :class:`~garrison.actors._host.StageHost` does): then True means nothing sent
        before this call is still queued or being handled.
        """
        return self._sent == self._handled

    def empty(self) -> bool:
        """True when nothing is queued."""
        return not self._front and self._queue.empty()

    def qsize(self) -> int:
        """How many envelopes are queued (wake-up sentinels may be counted)."""
        return len(self._front) + self._queue.qsize()

    # -- ownership and lifecycle ------------------------------------------------------------

    def withdraw(self, envelope: Envelope[Any]) -> bool:
        """Take back a queued urgent ``envelope`` nobody read yet; True if it was still there."""
        with self._lock:
            try:
                self._front.remove(envelope)
            except ValueError:
                return False
            self._handled += 1  # never to be handled: as good as handled, for all_handled
            return True

    def adopt(self, owner: object) -> None:
        """Make ``owner`` the incarnation that reads this mailbox, and accept messages again.

        A previous owner still waiting in :meth:`take` wakes up and gets None.
        """
        with self._lock:
            previous = self._owner
            self._owner = owner
            if self._state == _SUSPENDED:
                self._state = _OPEN
            if previous is not None and previous is not owner:
                self._queue.put(_WAKE)

    def retire(self, owner: object) -> None:
        """Take the mailbox away from ``owner`` (if it has it); its :meth:`take` returns None."""
        with self._lock:
            if self._owner is owner:
                self._owner = None
                self._queue.put(_WAKE)

    def suspend(self, limit: int) -> None:
        """Keep the queue for a coming incarnation; accept at most ``limit`` more messages."""
        with self._lock:
            if self._state == _OPEN:
                self._state = _SUSPENDED
                self._buffered = 0
                self._limit = limit

    def release(self, owner: object, reason: str) -> None:
        """``owner`` has ended: close the mailbox unless it is kept for a successor.

        Does nothing if ``owner`` no longer owns the mailbox (it was retired and someone
        else handles the queue) or if the mailbox is suspended for a restart.
        """
        with self._lock:
            if self._owner is not owner:
                return
            self._owner = None
            if self._state == _SUSPENDED:
                # Stop requests that arrived after the owner's last read are answered now:
                # the owner has stopped, and they must not stop the next incarnation.
                stops = [e for e in self._front if _is_stop(e)]
                for envelope in stops:
                    self._front.remove(envelope)
                self._handled += len(stops)  # answered here: as good as handled
            else:
                stops = None
        if stops is None:
            self.close(reason)
            return
        for envelope in stops:
            if envelope.reply_to is not None:
                _settle(envelope.reply_to, None)

    def close(self, reason: str) -> int:
        """Refuse every further message and answer every queued one; return how many.

        Queued asks fail with :class:`ActorUnavailable`; queued tells go to dead letters.
        """
        with self._lock:
            if self._state != _CLOSED:
                self._state = _CLOSED
                self._reason = reason
            reason = self._reason
            leftovers = list(self._front)
            self._front.clear()
            while True:
                try:
                    envelope = self._queue.get_nowait()
                except queue.Empty:
                    break
                if envelope is not _WAKE:
                    leftovers.append(envelope)
            self._queue.put(_WAKE)  # a reader blocked on the queue, if any, looks again
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
        refused = getattr(message, "refused", None)
        if reply is None and callable(refused):
            refused(reason)  # the message knows how to give its outcome elsewhere
            return
        if reply is not None:
            _settle(reply, ActorUnavailable(self.name, reason))
        else:
            self.dead_letters.record(self.name, message, reason)


def _is_stop(envelope: Envelope[Any]) -> bool:
    return isinstance(envelope.message, messages._ActorStop)


def _settle(reply: Any, error: BaseException | None) -> None:
    """Complete a garrison or pykka future, tolerating one that is already complete."""
    try:
        if error is None:
            reply.set(None)
        else:
            reply.set_exception((type(error), error, None))
    except queue.Full:  # a pykka future answered already: the first outcome stands
        pass
