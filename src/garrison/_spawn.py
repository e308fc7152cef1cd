"""Starting and stopping actors the garrison way (shared by Runtime and Supervisor)."""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import pykka

from garrison._actor import SafeLoop
from garrison._dead_letters import DeadLetters
from garrison._mailbox import Mailbox
from garrison._ref import Ref, actor_of

__all__ = ["inject_services", "safe_class", "start_actor", "stop_and_join"]

_SAFE_CLASSES: weakref.WeakKeyDictionary[type[pykka.Actor], type[SafeLoop]] = (
    weakref.WeakKeyDictionary()
)
_SAFE_LOCK = threading.Lock()


def safe_class(actor_class: type[pykka.Actor]) -> type[pykka.Actor]:
    """``actor_class`` with garrison's receive loop in front of it (itself if it has it).

    A user's ``pykka.ThreadingActor`` subclass keeps its ``on_receive`` and hooks; it gains
    crash detection for asks, a mailbox that survives restarts, and deferred replies.
    """
    if issubclass(actor_class, SafeLoop):
        return actor_class
    with _SAFE_LOCK:
        safe = _SAFE_CLASSES.get(actor_class)
        if safe is None:
            safe = type(
                actor_class.__name__,
                (SafeLoop, actor_class),
                {"__module__": actor_class.__module__, "__qualname__": actor_class.__qualname__},
            )
            _SAFE_CLASSES[actor_class] = safe
        return safe


def inject_services(
    actor_class: type[pykka.Actor], kwargs: Mapping[str, Any], services: Mapping[str, Any]
) -> dict[str, Any]:
    """``kwargs`` plus each of ``services`` that ``actor_class.__init__`` names and lacks."""
    merged = dict(kwargs)
    try:
        parameters = inspect.signature(actor_class.__init__).parameters
    except (TypeError, ValueError):
        return merged
    for key, service in services.items():
        if key in parameters and key not in merged:
            merged[key] = service
    return merged


def start_actor(
    actor_class: type[pykka.Actor],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    name: str,
    dead_letters: DeadLetters | Any,
) -> pykka.ActorRef[Any]:
    """Construct and start an actor, naming its mailbox and wiring its dead letters."""
    actor = actor_class(*args, **kwargs)
    inbox = actor.actor_inbox
    if isinstance(inbox, Mailbox):
        inbox.name = name
        inbox.dead_letters = dead_letters
    pykka.ActorRegistry.register(actor.actor_ref)
    actor._start_actor_loop()
    return actor.actor_ref


def stop_and_join(ref: Ref, timeout: float) -> bool:
    """Stop the actor behind ``ref`` and wait for its thread to end; True if it did in time."""
    actor = actor_of(ref.actor_ref)
    stopped = ref.stop(timeout)
    thread = actor._thread if isinstance(actor, SafeLoop) else None
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        return stopped and not thread.is_alive()
    return stopped
