"""``garrison.Ref``: the handle through which every garrison actor is reached.

A Ref sends messages straight into the actor's mailbox with a garrison
:class:`~garrison.Future` as the reply, so an actor may answer later (deferred replies) and
an ``await`` never blocks the event loop. A Ref can be re-pointed to a new incarnation of its
actor (supervisors do this on restart), so code holding it never notices the restart.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka
from pykka._envelope import Envelope

from garrison._actor import PING, Actor
from garrison._future import Future
from garrison._mailbox import Mailbox
from garrison.errors import ActorUnavailable, AskTimeout

__all__ = ["Ref"]


class Ref:
    """A stable handle to an actor: ``ask``, ``ask_future``, ``tell``, ``forward``.

    Works with garrison actors and with plain ``pykka.ThreadingActor`` actors alike; only
    garrison actors can answer later than ``on_receive`` returns.
    """

    __slots__ = ("__weakref__", "_actor_ref", "_inbox", "_name")

    def __init__(self, actor_ref: pykka.ActorRef[Any], name: str | None = None) -> None:
        self._actor_ref = actor_ref
        self._inbox: Any = actor_ref.actor_inbox
        self._name = name if name is not None else _name_of(actor_ref)

    @property
    def name(self) -> str:
        """The name this Ref was given (the child name under a supervisor)."""
        return self._name

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The pykka ActorRef of the current incarnation."""
        return self._actor_ref

    @property
    def actor_class(self) -> type[pykka.Actor]:
        """The class of the actor behind this Ref."""
        return self._actor_ref.actor_class

    def is_alive(self) -> bool:
        """True while the current incarnation runs (False while it restarts or after stop)."""
        return self._actor_ref.is_alive()

    def tell(self, message: Any) -> None:
        """Send ``message`` without waiting; if it cannot be delivered it goes to dead letters."""
        self._send(Envelope(message))

    def ask_future(self, message: Any) -> Future[Any]:
        """Send ``message`` and return the future of its reply."""
        future: Future[Any] = Future()
        self._send(Envelope(message, reply_to=future))
        return future

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        """Send ``message``, wait for the reply and return it (or raise the error it holds).

        Raises :class:`~garrison.errors.AskTimeout` if no reply came within ``timeout``.
        """
        return self.ask_future(message).get(timeout)

    def forward(self, message: Any, reply: Future[Any]) -> None:
        """Send ``message`` with an existing reply future: the receiver answers ``reply``.

        A stage forwards an operation with its caller's future this way, so it never
        waits for the next stage (DESIGN.md rule 1).
        """
        inbox = self._inbox
        if type(self) is Ref and isinstance(inbox, Mailbox):
            inbox.post(message, reply)
            return
        self._send(Envelope(message, reply_to=reply))

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the actor after the messages queued before this; True if it stopped in time."""
        future: Future[Any] = Future()
        self._send(Envelope(pykka.messages._ActorStop(), reply_to=future))
        try:
            future.get(timeout)
        except AskTimeout:
            return False
        except ActorUnavailable:
            return True
        return True

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the actor has handled every message queued before this call.

        Returns False if it did not within ``timeout`` (a busy or stopped actor). Calling
        it from the actor's own thread returns False at once instead of deadlocking.
        """
        actor = actor_of(self._actor_ref)
        if actor is None or not isinstance(actor, Actor):
            return False
        if actor._thread is threading.current_thread() or actor.handling_here():
            return False
        try:
            self.ask(PING, timeout)
        except (AskTimeout, ActorUnavailable):
            return False
        return True

    def repoint(self, actor_ref: pykka.ActorRef[Any]) -> None:
        """Direct this Ref to a new incarnation (used by supervisors on restart)."""
        self._inbox = actor_ref.actor_inbox
        self._actor_ref = actor_ref

    def _send(self, envelope: Envelope[Any]) -> None:
        inbox = self._inbox
        if isinstance(inbox, Mailbox):
            inbox.offer(envelope)
            return
        # A plain pykka actor: pykka drops what lands after its final drain, so check after
        # putting and answer it ourselves (the first outcome wins on a garrison future).
        inbox.put(envelope)
        if self._actor_ref.actor_stopped.is_set():
            _refuse_plain(self._name, envelope)

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "not running"
        return f"<garrison.Ref {self._name!r} ({self.actor_class.__name__}, {state})>"

    # Equal Refs reach the same inbox. A supervised actor keeps its mailbox across restarts
    # (the Ref is re-pointed to each incarnation), so a Ref's hash never changes.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ref):
            return self._inbox is other._inbox
        return NotImplemented

    def __hash__(self) -> int:
        return id(self._inbox)


def _name_of(actor_ref: pykka.ActorRef[Any]) -> str:
    inbox = actor_ref.actor_inbox
    if isinstance(inbox, Mailbox):
        return inbox.name
    return actor_ref.actor_class.__name__


def actor_of(actor_ref: pykka.ActorRef[Any]) -> pykka.Actor | None:
    """The actor object behind ``actor_ref``, or None once it is gone."""
    # pykka keeps a weak reference to the actor in a private slot; no public accessor exists.
    weak = getattr(actor_ref, "_actor_weakref", None)
    if weak is None:
        return None
    actor: pykka.Actor | None = weak()
    return actor


def _refuse_plain(name: str, envelope: Envelope[Any]) -> None:
    reply = envelope.reply_to
    if isinstance(reply, Future):
        reply.try_set_exception(ActorUnavailable(name, "the actor has stopped"))
    elif reply is None and not isinstance(envelope.message, pykka.messages._ActorStop):
        from garrison._dead_letters import default_dead_letters  # noqa: PLC0415

        default_dead_letters.record(name, envelope.message, "the actor has stopped")
