"""garrison's actor base: pykka's ThreadingActor with deferred replies and safe failure.

What it changes in pykka's receive loop:

- **Deferred replies.** pykka answers an ask with ``on_receive``'s return value. A garrison
  actor may instead call :meth:`Actor.defer` to take the reply future and complete it
  later, from any thread: a stage forwards an operation together with its reply future and
  the worker at the end of the chain answers the caller directly.
- **A crash is a crash.** An exception escaping ``on_receive`` crashes the actor, for an
  ask as for a tell (pykka keeps an actor running when an ask fails): the asker gets the
  error, the actor stops, and whatever it had queued is answered
  (:class:`~garrison.errors.ActorUnavailable` for asks, dead letters for tells) unless a
  supervisor takes the mailbox over to restart the actor. A ``BaseException`` crashes this
  actor alone; pykka would stop every actor in the process.
- **Nothing unanswered.** The inbox is a :class:`~garrison._mailbox.Mailbox`, so no message
  sent around a stop is ever left without an outcome.
- Actor threads are daemon threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pykka
from pykka import messages
from pykka._envelope import Envelope

from garrison._future import Future
from garrison._mailbox import Mailbox
from garrison.observability.events import emit

__all__ = ["Actor", "ExitListener", "Ping", "SafeLoop", "hosted_inbox"]

ExitListener = Callable[["SafeLoop", BaseException | None], object]
"""Called in an actor's own thread when it ends: with the error for a crash, None for a stop.

A supervisor's listener suspends the mailbox (``actor.mailbox.suspend``) when it means to
restart the actor; otherwise the mailbox is closed and everything queued is answered.
"""


class Ping:
    """A message every garrison actor answers with ``None`` once it has handled all before it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"


PING = Ping()

_PYKKA_MESSAGES = frozenset(
    {
        messages._ActorStop,
        messages.ProxyCall,
        messages.ProxyGetAttr,
        messages.ProxySetAttr,
    }
)


_HOSTING = threading.local()


@contextmanager
def hosted_inbox(inbox: Mailbox) -> Iterator[None]:
    """Give the next garrison actor constructed in this thread ``inbox`` as its inbox.

    A :class:`~garrison.actors._host.StageHost` builds its stages this way: objects of the
    usual stage classes whose inbox hands messages to the host instead of a thread of their own.
    """
    _HOSTING.inbox = inbox
    try:
        yield
    finally:
        _HOSTING.inbox = None


class SafeLoop(pykka.Actor):
    """garrison's receive loop, as a mixin over any pykka actor class.

    :class:`Actor` is this loop over ``pykka.ThreadingActor``. Supervisors put it in front
    of users' own ``pykka.ThreadingActor`` classes so that their crashes are detected and
    their mailboxes survive restarts, without changing their ``on_receive``.
    """

    use_daemon_thread: ClassVar[bool] = True

    _current: Envelope[Any] | None
    _deferred: bool
    _thread: threading.Thread | None
    _exit_listener: ExitListener | None
    _pending_restore: tuple[Any] | None
    _crashed: bool

    @staticmethod
    def _create_actor_inbox() -> Mailbox:
        inbox: Mailbox | None = getattr(_HOSTING, "inbox", None)
        if inbox is not None:
            _HOSTING.inbox = None
            return inbox
        return Mailbox()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current = None
        self._deferred = False
        self._thread = None
        self._exit_listener = None
        self._pending_restore = None
        self._crashed = False
        self.mailbox.adopt(self)

    @property
    def mailbox(self) -> Mailbox:
        """This actor's mailbox."""
        return self.actor_inbox  # type: ignore[return-value]  # a Mailbox: _create_actor_inbox

    def handling_here(self) -> bool:
        """True when the calling thread is the one handling this actor's messages now."""
        return self._thread is threading.current_thread()

    # -- replies ----------------------------------------------------------------------------

    def defer(self) -> Future[Any]:
        """Take the reply of the message being handled, to complete it later.

        For an ask this is the asker's future. For a tell it is a new future whose error
        outcome, if any, goes to dead letters. Call it only while handling a message.
        """
        envelope = self._current
        if envelope is None:
            raise RuntimeError("defer() called outside of message handling")
        self._deferred = True
        reply = envelope.reply_to
        if isinstance(reply, Future):
            return reply
        future: Future[Any] = Future()
        if reply is not None:  # a plain pykka future: relay the outcome to it
            future.add_done_callback(_relay_to(reply))
        else:
            future.add_done_callback(self._dead_letter_on_failure(envelope.message))
        return future

    def reject(self, error: BaseException) -> None:
        """Answer the message being handled with ``error`` without crashing the actor."""
        self.defer().try_set_exception(error)

    def _dead_letter_on_failure(self, message: Any) -> Callable[[Future[Any]], None]:
        mailbox = self.mailbox

        def record(future: Future[Any]) -> None:
            error = future.exception(0)
            if error is not None:
                mailbox.dead_letters.record(mailbox.name, message, "its handling failed", error)

        return record

    # -- the receive loop (replaces pykka's) ------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        # pykka's own messages (stop, proxy calls) go to pykka; the rest straight to
        # on_receive, without pykka's four isinstance checks per message.
        if type(message) in _PYKKA_MESSAGES:
            return super()._handle_receive(message)
        return self.on_receive(message)

    def _actor_loop_setup(self) -> None:
        self._thread = threading.current_thread()
        try:
            if self._pending_restore is not None:
                (state,) = self._pending_restore
                self._pending_restore = None
                getattr(self, "restore")(state)  # noqa: B009 (an optional hook)
            self.on_start()
        except BaseException as exc:
            self._crash(None, exc)

    def _actor_loop_running(self) -> None:
        mailbox = self.mailbox
        stopped = self.actor_stopped
        receive = self._receive
        while not stopped.is_set():
            envelope = mailbox.take(self)
            if envelope is None:  # retired: a successor owns the mailbox now
                # pykka unregisters an actor only when it stops by message; this one ends
                # without one, so leave the registry (and say so) here.
                pykka.ActorRegistry.unregister(self.actor_ref)
                stopped.set()
                return
            receive(envelope)

    def _receive(self, envelope: Envelope[Any]) -> None:
        """Handle one envelope taken from the mailbox: answer it, or crash."""
        message = envelope.message
        if message is PING:
            if envelope.reply_to is not None:
                envelope.reply_to.set(None)
            return
        self._current = envelope
        self._deferred = False
        try:
            response = self._handle_receive(message)
        except BaseException as exc:
            self._current = None
            self._crash(envelope, exc)
            return
        self._current = None
        if not self._deferred and envelope.reply_to is not None:
            envelope.reply_to.set(response)

    def _actor_loop_teardown(self) -> None:
        if not self._crashed:
            self._notify_exit(None)
        self.mailbox.release(self, "the actor has stopped")

    def _notify_exit(self, error: BaseException | None) -> None:
        listener = self._exit_listener
        if listener is None:
            return
        try:
            listener(self, error)
        except Exception as listener_error:
            emit(
                "garrison.actor.exit_listener_failed",
                level="error",
                actor=self.mailbox.name,
                error=listener_error,
            )

    def _crash(self, envelope: Envelope[Any] | None, error: BaseException) -> None:
        """Handle an exception that escaped this actor's own code.

        The actor is stopped, a crashing tell recorded (dead letters or a failure route),
        and its exit listener (a supervisor) told before the asker gets the error, so
        whoever sees the error can rely on the restart being under way.
        """
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._crashed = True
        emit(
            "garrison.actor.crashed",
            level="error",
            actor=self.mailbox.name,
            actor_class=type(self).__name__,
            error=error,
            exc_info=(type(error), error, error.__traceback__),
        )
        try:
            self.on_failure(type(error), error, error.__traceback__)
        except Exception as hook_error:
            emit(
                "garrison.actor.on_failure_failed",
                level="error",
                actor=self.mailbox.name,
                error=hook_error,
            )
        told = envelope is not None and envelope.reply_to is None
        if told and envelope is not None and not isinstance(envelope.message, messages._ActorStop):
            refused = getattr(envelope.message, "refused", None)
            if callable(refused):  # the message can give its outcome elsewhere (first wins)
                refused("its handler crashed")
            else:
                self.mailbox.dead_letters.record(
                    self.mailbox.name, envelope.message, "its handler crashed", error
                )
        self._notify_exit(error)
        if envelope is not None and envelope.reply_to is not None:
            reply = envelope.reply_to
            if isinstance(reply, Future):
                reply.try_set_exception(error)
            else:
                _relay_error(reply, error)


class Actor(SafeLoop, pykka.ThreadingActor):
    """Base class of garrison's actors (and of users' actors that want deferred replies).

    Subclasses implement ``on_receive(message)`` as with pykka. To answer later, call
    ``reply = self.defer()`` while handling the message and complete ``reply`` (a
    :class:`garrison.Future`) whenever and wherever the answer is known. To refuse a message
    without crashing (a message of the wrong type, say) call ``self.reject(error)``.
    """

    def on_receive(self, message: Any) -> Any:
        """Refuse a message this actor does not handle with a ``TypeError`` reply."""
        self.reject(
            TypeError(f"{type(self).__name__} does not handle {type(message).__name__} messages")
        )


def _relay_to(reply: Any) -> Callable[[Future[Any]], None]:
    def relay(future: Future[Any]) -> None:
        error = future.exception(0)
        if error is None:
            reply.set(future.get(0))
        else:
            _relay_error(reply, error)

    return relay


def _relay_error(reply: Any, error: BaseException) -> None:
    reply.set_exception((type(error), error, error.__traceback__))
