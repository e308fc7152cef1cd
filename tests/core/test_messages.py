"""Execute and Priority: validation at construction, normalisation, immutability."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison import Execute, Priority


def fetch_user(user_id: int, *, verbose: bool = False) -> dict[str, Any]:
    return {"id": user_id, "verbose": verbose}


class Service:
    def lookup(self, x: int) -> int:
        return x * 2

    def __call__(self, x: int) -> int:
        return x + 1


WORDS = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}


# -- Priority -------------------------------------------------------------------------------


def test_priority_orders_high_before_normal_before_low():
    assert Priority.HIGH < Priority.NORMAL < Priority.LOW
    assert sorted([Priority.LOW, Priority.HIGH, Priority.NORMAL]) == [
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]
    assert [int(p) for p in Priority] == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("high", Priority.HIGH),
        ("HIGH", Priority.HIGH),
        ("High", Priority.HIGH),
        ("normal", Priority.NORMAL),
        ("NoRmAl", Priority.NORMAL),
        ("low", Priority.LOW),
        (" low\t", Priority.LOW),
    ],
)
def test_priority_strings_any_case(text: str, expected: Priority):
    assert Priority(text) is expected
    assert Priority.parse(text) is expected


def test_priority_parse_accepts_members_and_their_ints():
    for member in Priority:
        assert Priority.parse(member) is member
        assert Priority.parse(int(member)) is member


@pytest.mark.parametrize("bad", ["", "urgent", "hi", "highest", "1", "0", "norm al", 3, -1, None])
def test_priority_parse_rejects_unknown_values_listing_the_choices(bad: object):
    with pytest.raises(ValueError, match=r"priority must be one of 'high', 'normal', 'low'") as e:
        Priority.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("bad", [True, False])
def test_priority_parse_rejects_bools(bad: bool):
    with pytest.raises(ValueError, match="priority must be one of"):
        Priority.parse(bad)


@given(
    word=st.sampled_from(sorted(WORDS)),
    upper=st.lists(st.booleans(), min_size=6, max_size=6),
    left=st.sampled_from(["", " ", "\t", "  "]),
    right=st.sampled_from(["", " ", "\n", " \t"]),
)
def test_priority_parse_any_case_and_padding(word: str, upper: list[bool], left: str, right: str):
    mixed = "".join(c.upper() if u else c for c, u in zip(word, upper, strict=False))
    text = left + mixed + right
    assert Priority.parse(text) is WORDS[word]
    assert Execute(fetch_user, priority=text).priority is WORDS[word]  # type: ignore[arg-type]


@given(st.text(max_size=12))
def test_priority_parse_rejects_every_other_string(text: str):
    # Only ASCII spellings count: "h\u0131gh" (a dotless i) upper-cases to "HIGH" but is
    # refused (see test_priority_rejects_unicode_look_alikes).
    if text.strip().isascii() and text.strip().upper() in Priority.__members__:
        assert Priority.parse(text) is WORDS[text.strip().upper().lower()]
        return
    with pytest.raises(ValueError, match="priority must be one of"):
        Priority.parse(text)


def test_priority_rejects_unicode_look_alikes():
    with pytest.raises(ValueError, match="priority must be one of"):
        Priority.parse("h\u0131gh")


# -- Execute: defaults and normalisation ----------------------------------------------------


def test_execute_defaults():
    msg = Execute(fetch_user)
    assert msg.fn is fetch_user
    assert msg.args == ()
    assert dict(msg.kwargs) == {}
    assert msg.key is None
    assert msg.priority is Priority.NORMAL
    assert msg.timeout is None
    assert msg.name == "fetch_user"
    assert msg.cost == 1


def test_execute_full_construction():
    msg = Execute(
        fetch_user,
        args=(42,),
        kwargs={"verbose": True},
        key="client-7",
        priority=Priority.HIGH,
        timeout=2.0,
        name="get_user",
        cost=3,
    )
    assert msg.args == (42,)
    assert dict(msg.kwargs) == {"verbose": True}
    assert msg.key == "client-7"
    assert msg.priority is Priority.HIGH
    assert msg.timeout == 2.0
    assert msg.name == "get_user"
    assert msg.cost == 3
    assert msg.run() == {"id": 42, "verbose": True}


def test_execute_run_calls_fn_in_calling_thread_each_time():
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(*args: Any, **kwargs: Any) -> int:
        calls.append((args, kwargs))
        return len(calls)

    msg = Execute(record, args=(1, 2), kwargs={"a": 3})
    assert msg.run() == 1
    assert msg.run() == 2
    assert calls == [((1, 2), {"a": 3}), ((1, 2), {"a": 3})]


def test_execute_run_propagates_the_functions_error():
    def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        Execute(boom).run()


def test_list_args_become_a_tuple():
    msg = Execute(fetch_user, args=[7])  # type: ignore[arg-type]
    assert msg.args == (7,)
    assert type(msg.args) is tuple
    assert msg.run() == {"id": 7, "verbose": False}


def test_kwargs_are_copied_and_read_only():
    source = {"verbose": True}
    msg = Execute(fetch_user, args=(1,), kwargs=source)
    source["verbose"] = False
    source["extra"] = 1
    assert dict(msg.kwargs) == {"verbose": True}
    assert isinstance(msg.kwargs, Mapping)
    with pytest.raises(TypeError):
        msg.kwargs["verbose"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        del msg.kwargs["verbose"]  # type: ignore[attr-defined]
    assert msg.run() == {"id": 1, "verbose": True}


def test_kwargs_given_as_a_mapping_proxy_are_copied_too():
    backing = {"verbose": True}
    msg = Execute(fetch_user, args=(1,), kwargs=MappingProxyType(backing))
    backing["verbose"] = False
    assert msg.kwargs["verbose"] is True


def test_default_kwargs_are_read_only():
    msg = Execute(fetch_user)
    with pytest.raises(TypeError):
        msg.kwargs["x"] = 1  # type: ignore[index]
    assert dict(Execute(fetch_user).kwargs) == {}


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (fetch_user, "fetch_user"),
        (Service.lookup, "Service.lookup"),
        (Service().lookup, "Service.lookup"),
        (lambda: None, "<lambda>"),
        (Service(), "Service"),  # a callable instance: its type's name
        (functools.partial(fetch_user, 1), "partial"),
        (len, "len"),
    ],
)
def test_default_name_is_the_qualified_name(fn: Any, expected: str):
    assert Execute(fn).name == expected


def test_default_name_of_a_nested_function_is_its_qualname():
    def inner() -> None:
        return None

    assert Execute(inner).name == (
        "test_default_name_of_a_nested_function_is_its_qualname.<locals>.inner"
    )


def test_explicit_name_wins_and_empty_name_means_default():
    assert Execute(fetch_user, name="users.get").name == "users.get"
    assert Execute(fetch_user, name="").name == "fetch_user"


@pytest.mark.parametrize(("given_", "expected"), [(2, 2.0), (0.5, 0.5), (1e-9, 1e-9)])
def test_timeout_is_stored_as_float(given_: float, expected: float):
    msg = Execute(fetch_user, timeout=given_)
    assert msg.timeout == expected
    assert type(msg.timeout) is float


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("high", Priority.HIGH),
        ("LOW", Priority.LOW),
        (" Normal ", Priority.NORMAL),
        (0, Priority.HIGH),
        (2, Priority.LOW),
        (Priority.LOW, Priority.LOW),
    ],
)
def test_priority_is_normalised(given_: Any, expected: Priority):
    assert Execute(fetch_user, priority=given_).priority is expected


@pytest.mark.parametrize("key", ["client-7", 42, ("tenant", 3), frozenset({1}), None])
def test_hashable_keys_are_accepted(key: Any):
    assert Execute(fetch_user, key=key).key == key


def test_repr_names_the_operation():
    assert repr(Execute(fetch_user)) == "Execute(fetch_user, priority=NORMAL)"
    assert (
        repr(Execute(fetch_user, key="c", priority="high", timeout=2))
        == "Execute(fetch_user, priority=HIGH, key='c', timeout=2.0)"
    )


def test_execute_is_frozen():
    msg = Execute(fetch_user, args=(1,))
    for field, value in [
        ("fn", len),
        ("args", (2,)),
        ("kwargs", {}),
        ("key", "k"),
        ("priority", Priority.HIGH),
        ("timeout", 1.0),
        ("name", "x"),
        ("cost", 2),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, field, value)
    with pytest.raises((AttributeError, TypeError)):
        msg.extra = 1  # type: ignore[attr-defined]
    assert msg.args == (1,)
    assert msg.name == "fetch_user"


def test_execute_compares_by_identity():
    a = Execute(fetch_user, args=(1,))
    b = Execute(fetch_user, args=(1,))
    assert a != b
    assert a == a
    assert len({a, b}) == 2


# -- Execute: validation --------------------------------------------------------------------


@pytest.mark.parametrize("fn", [None, 42, "fetch_user", (fetch_user,)])
def test_non_callable_fn_is_a_type_error(fn: Any):
    with pytest.raises(TypeError, match=r"Execute\.fn must be callable"):
        Execute(fn)


@pytest.mark.parametrize("args", ["abc", 5, {1, 2}, {"a": 1}, None, (x for x in [1])])
def test_bad_args_type_is_a_type_error(args: Any):
    with pytest.raises(TypeError, match=r"Execute\.args must be a tuple"):
        Execute(fetch_user, args=args)


@pytest.mark.parametrize("kwargs", [[("a", 1)], "a=1", 3, None])
def test_bad_kwargs_type_is_a_type_error(kwargs: Any):
    with pytest.raises(TypeError, match=r"Execute\.kwargs must be a mapping"):
        Execute(fetch_user, kwargs=kwargs)


@pytest.mark.parametrize("kwargs", [{1: "x"}, {("a",): 1}, {"ok": 1, None: 2}])
def test_non_string_kwargs_keys_are_a_type_error(kwargs: Any):
    with pytest.raises(TypeError, match=r"Execute\.kwargs keys must be strings"):
        Execute(fetch_user, kwargs=kwargs)


@pytest.mark.parametrize("key", [[1, 2], {"a": 1}, {1}])
def test_unhashable_key_is_a_type_error(key: Any):
    with pytest.raises(TypeError, match=r"Execute\.key must be hashable"):
        Execute(fetch_user, key=key)


def test_key_that_cannot_be_hashed_is_a_type_error_at_construction():
    with pytest.raises(TypeError, match=r"Execute\.key must be hashable"):
        Execute(fetch_user, key=("tenant", [1, 2]))


@pytest.mark.parametrize("priority", ["urgent", "", "1", 3, -1, 1.5, None, True, b"high"])
def test_bad_priority_is_a_value_error(priority: Any):
    with pytest.raises(ValueError, match="priority must be one of 'high', 'normal', 'low'"):
        Execute(fetch_user, priority=priority)


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_bad_timeout_value_is_a_value_error(timeout: float):
    with pytest.raises(ValueError, match=r"Execute\.timeout must be > 0 and finite"):
        Execute(fetch_user, timeout=timeout)


@pytest.mark.parametrize("timeout", ["2", True, [1.0], object()])
def test_bad_timeout_type_is_a_type_error(timeout: Any):
    with pytest.raises(TypeError, match=r"Execute\.timeout must be a number"):
        Execute(fetch_user, timeout=timeout)


@pytest.mark.parametrize("cost", [0, -1, -100])
def test_cost_below_one_is_a_value_error(cost: int):
    with pytest.raises(ValueError, match=rf"Execute\.cost must be >= 1, got {cost}"):
        Execute(fetch_user, cost=cost)


@pytest.mark.parametrize("cost", [1.0, 2.5, "3", True, None])
def test_bad_cost_type_is_a_type_error(cost: Any):
    with pytest.raises(TypeError, match=r"Execute\.cost must be an int"):
        Execute(fetch_user, cost=cost)


@pytest.mark.parametrize("name", [5, None, b"name", ["n"]])
def test_bad_name_type_is_a_type_error(name: Any):
    with pytest.raises(TypeError, match=r"Execute\.name must be a string"):
        Execute(fetch_user, name=name)


@given(
    timeout=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**6), max_value=10**6),
    )
)
def test_timeout_validation_matches_its_rule(timeout: float):
    if timeout > 0 and math.isfinite(timeout):
        assert Execute(fetch_user, timeout=timeout).timeout == float(timeout)
    else:
        with pytest.raises(ValueError, match=r"Execute\.timeout"):
            Execute(fetch_user, timeout=timeout)


@given(cost=st.integers(min_value=-(10**6), max_value=10**6))
def test_cost_validation_matches_its_rule(cost: int):
    if cost >= 1:
        assert Execute(fetch_user, cost=cost).cost == cost
    else:
        with pytest.raises(ValueError, match=r"Execute\.cost must be >= 1"):
            Execute(fetch_user, cost=cost)


@given(
    args=st.lists(st.integers(), max_size=3),
    kwargs=st.dictionaries(st.sampled_from(["a", "b", "key"]), st.integers(), max_size=3),
    key=st.one_of(st.none(), st.text(max_size=3), st.integers()),
    priority=st.sampled_from(["high", "normal", "low", None]),
    timeout=st.one_of(st.none(), st.floats(min_value=0.001, max_value=100.0), st.integers(1, 9)),
    name=st.one_of(st.none(), st.text(min_size=1, max_size=5)),
    cost=st.one_of(st.none(), st.integers(1, 5)),
)
def test_a_views_execute_is_the_execute_the_constructor_builds(
    args: list[int],
    kwargs: dict[str, int],
    key: Any,
    priority: Any,
    timeout: Any,
    name: Any,
    cost: Any,
) -> None:
    """Pipeline views build Executes without re-validating their (validated) options: the
    message must be field for field the one Execute(...) builds."""
    from garrison.pipeline import PipelineView, _Options  # noqa: PLC0415

    view = PipelineView(cast(Any, None), _Options()).options(
        key=key, priority=priority, timeout=timeout, name=name, cost=cost
    )
    fast = view.execute(_add_all, *args, **kwargs)
    slow = Execute(
        _add_all,
        args=tuple(args),
        kwargs=kwargs,
        key=key,
        priority=priority if priority is not None else "normal",
        timeout=timeout,
        name=name or "",
        cost=cost if cost is not None else 1,
    )
    for field in ("fn", "args", "key", "priority", "timeout", "name", "cost"):
        assert getattr(fast, field) == getattr(slow, field), field
        assert type(getattr(fast, field)) is type(getattr(slow, field)), field
    assert dict(fast.kwargs) == dict(slow.kwargs)
    assert fast.run() == slow.run()


def test_a_view_refuses_bad_options_when_it_is_made() -> None:
    from garrison.pipeline import PipelineView, _Options  # noqa: PLC0415

    view = PipelineView(cast(Any, None), _Options())
    with pytest.raises(ValueError, match="timeout"):
        view.options(timeout=-1)
    with pytest.raises(TypeError, match="key must be hashable"):
        view.options(key=[])
    with pytest.raises(ValueError, match="cost"):
        view.options(cost=0)
    with pytest.raises(TypeError, match="must be callable"):
        view.execute(cast(Any, 42))


def _add_all(*args: int, **kwargs: int) -> int:
    return sum(args) + sum(kwargs.values())
