"""A supervision tree that survives crashing actors.

Run with ``.venv/bin/python examples/supervision_tree.py``. It builds::

    root (one_for_one)
    ├── sessions       a plain pykka actor of "the user's own", keeping state across restarts
    ├── workers        a nested supervisor (one_for_all)
    │   ├── parser
    │   └── writer
    └── fallback       receives operations that crashed with nobody waiting for them

then crashes actors in every way and shows what the tree did about it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pykka
import structlog

from garrison import Actor, ActorUnavailable, Execute, OperationFailed
from garrison.supervision import ChildSpec, Restart, Strategy, Supervisor


class Sessions(pykka.ThreadingActor):
    """A user's own pykka actor: counts logins; `snapshot`/`restore` keep them over a crash."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: dict[str, int] = {}

    def on_receive(self, message: Any) -> Any:
        if message == "corrupt":
            raise RuntimeError("session table corrupted")
        self.logins[message] = self.logins.get(message, 0) + 1
        return self.logins[message]

    def snapshot(self) -> dict[str, int]:
        return dict(self.logins)

    def restore(self, state: dict[str, int]) -> None:
        self.logins = state


class Worker(Actor):
    """Runs Execute operations; an operation that raises SystemError crashes the worker."""

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Execute):
            return super().on_receive(message)
        try:
            return message.run()
        except SystemError:
            raise  # a bug in the worker itself: let it crash
        except Exception as error:
            self.reject(error)  # an operation's own error is its outcome
            return None


class Fallback(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.failed: list[str] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, OperationFailed):
            self.failed.append(f"{message.operation.name} ({message.reason})")
            return None
        if message == "failed":
            return list(self.failed)
        return super().on_receive(message)


def corrupt() -> None:
    raise SystemError("worker state corrupted")


def main() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(
                colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(50),  # critical only
    )
    workers = ChildSpec(
        "workers",
        Supervisor,
        kwargs={
            "strategy": Strategy.ONE_FOR_ALL,
            "max_restarts": 5,
            "within_seconds": 10,
            "children": [ChildSpec("parser", Worker), ChildSpec("writer", Worker)],
        },
    )
    root = Supervisor.start(
        "root",
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=10,
        within_seconds=10,
        children=[
            ChildSpec("sessions", Sessions),
            workers,
            ChildSpec("fallback", Fallback, restart=Restart.PERMANENT),
        ],
        route_failures_to="fallback",
    )
    try:
        sessions = root.child("sessions")
        parser = root.child("workers/parser")
        print("alice logs in:", sessions.ask("alice", timeout=5), "time(s)")
        print("alice logs in:", sessions.ask("alice", timeout=5), "time(s)")
        try:
            sessions.ask("corrupt", timeout=5)
        except RuntimeError as error:
            print(f"sessions crashed: {error}")
        print(
            "after the restart, alice logs in:",
            sessions.ask("alice", timeout=5),
            "time(s)",
            "(state kept by snapshot/restore, same Ref)",
        )

        print("parser parses:", parser.ask(Execute(str.upper, args=("hello",)), timeout=5))
        try:
            parser.ask(Execute(int, args=("not a number",)), timeout=5)
        except ValueError as error:
            print(f"an operation's own error is an outcome, not a crash: {error}")
        parser.tell(Execute(corrupt, name="corrupt"))  # crashes the parser, nobody waits
        root.child("workers").settle(5)
        print(
            "parser after a one_for_all restart:",
            parser.ask(Execute(str.title, args=("back again",)), timeout=5),
        )
        print("fallback received:", root.child("fallback").ask("failed", timeout=5))

        tree = root.tree()
        print(json.dumps(tree, indent=2))
    finally:
        root.stop()
    try:
        parser.ask(Execute(str.upper, args=("x",)), timeout=5)
    except ActorUnavailable as error:
        print(f"after stop: {error}")


if __name__ == "__main__":
    main()
