"""Type-checked by mypy from ``test_typing.py``; never collected or run by pytest.

``@api.protect`` must keep the decorated function's signature (ParamSpec) and return type, for
sync and async functions alike. Every ``# type: ignore[...]`` below marks a deliberate misuse:
``mypy --warn-unused-ignores`` fails if mypy stops seeing it as an error, which is what would
happen if the wrapper degraded to ``Callable[..., Any]``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from garrison import Future, Pipeline, PipelineView, Runtime


def add(a: int, b: int = 0) -> int:
    return a + b


async def fetch(user_id: int, *, verbose: bool = False) -> str:
    return f"user-{user_id}" if verbose else str(user_id)


def protected_functions(api: Pipeline) -> None:
    @api.protect
    def protected_add(a: int, b: int = 0) -> int:
        return a + b

    @api.protect
    async def protected_fetch(user_id: int, *, verbose: bool = False) -> str:
        return str(user_id)

    total: int = protected_add(1, 2)
    keyword: int = protected_add(1, b=2)
    pending: Coroutine[Any, Any, str] = protected_fetch(1, verbose=True)
    pending.close()
    del total, keyword

    protected_add("1", 2)  # type: ignore[arg-type]
    protected_add(1, c=3)  # type: ignore[call-arg]
    wrong: str = protected_add(1)  # type: ignore[assignment]
    missing = protected_fetch()  # type: ignore[call-arg]
    positional = protected_fetch(1, True)  # type: ignore[call-arg]
    del wrong, missing, positional

    async def awaiting() -> str:
        name: str = await protected_fetch(2)
        not_an_int: int = await protected_fetch(3)  # type: ignore[assignment]
        return name + str(not_an_int)

    del awaiting

    view_protected = api.options(key="client-7", priority="high").protect(add)
    also: int = view_protected(1, b=1)
    view_protected(b="x", a=1)  # type: ignore[arg-type]
    del also


def calls(api: Pipeline) -> None:
    result: int = api.call(add, 1, b=2)
    from_coroutine: str = api.call(fetch, 1, verbose=True)
    future: Future[int] = api.submit(add, 1)
    api.call(add, "1")  # type: ignore[call-overload]
    api.submit(add, 1, c=2)  # type: ignore[call-arg]
    bad: str = api.call(add, 1)  # type: ignore[assignment]
    vip: PipelineView = api.options(key="client-7", priority="high", timeout=2.0)
    through_view: int = vip.call(add, 1)
    del result, from_coroutine, future, bad, through_view

    async def asynchronous() -> int:
        value: int = await api.acall(add, 1, b=2)
        name: str = await api.acall(fetch, 1)
        await api.acall(fetch, "1")  # type: ignore[call-overload]
        return value + len(name)

    del asynchronous


def main() -> None:
    with Runtime() as rt:
        api = rt.pipeline("typed")
        protected_functions(api)
        calls(api)
