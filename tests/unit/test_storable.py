"""middleware.storable: any value, keys included and at any depth, becomes JSON PostgreSQL takes.

The jsonb half of the property (PostgreSQL accepts every output) runs on a real database in
tests/integration/test_storable_jsonb.py, on the same strategy.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.storable import (
    MAX_DEPTH,
    MAX_TIME,
    MIN_TIME,
    sanitize,
    storable_json,
    storable_text,
    storable_time,
)

LIMIT = 64 * 1024


class Odd:
    """An object JSON cannot carry, whose str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no")


# every text Python can hold: NUL, lone surrogates, anything
any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
any_key = any_text | st.integers() | st.floats() | st.booleans() | st.none() | st.tuples(st.integers())
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**4400, max_value=10**4400 + 5)
    | st.floats()
    | any_text
    | st.builds(Odd)
    | st.builds(object)
)
hostile_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers() | any_text, max_size=4)
        | st.dictionaries(any_key, inner, max_size=5)
    ),
    max_leaves=30,
)


def strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


@settings(max_examples=500, deadline=None)
@given(hostile_values)
def test_any_value_becomes_strict_storable_json_and_sanitizing_twice_changes_nothing(value: Any) -> None:
    text = storable_json(value, LIMIT)

    text.encode("utf-8")  # no lone surrogates, keys included
    assert "\\u0000" not in text
    decoded = strict(text)
    assert depth(decoded) <= MAX_DEPTH
    for s in strings(decoded):
        assert "\x00" not in s
    assert len(text.encode("utf-8")) <= LIMIT
    assert sanitize(decoded, LIMIT) == decoded


def test_plain_json_passes_unchanged() -> None:
    value = {"title": "Bees", "modules": [{"lessons": 3, "score": 0.5}], "ok": True, "none": None}
    assert storable_json(value, LIMIT) == json.dumps(value, separators=(",", ":"))


def test_depth_is_cut_at_the_bound_exactly() -> None:
    at_bound: Any = 1
    for _ in range(MAX_DEPTH):
        at_bound = [at_bound]
    assert sanitize(at_bound) == at_bound
    assert sanitize([at_bound]) != [at_bound]


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    value = ["[" * 1000, {"k": "{" * 1000}] * 50
    assert sanitize(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\ufffdb"),
        ("\ud800x", "\ufffdx"),
        (42, "42"),
        (Odd(), "<unprintable Odd>"),
        ("é" * 10, "é" * 10),
    ],
)
def test_storable_text(value: Any, expected: str) -> None:
    assert storable_text(value) == expected


def test_storable_text_cuts_after_cleaning() -> None:
    assert storable_text("\x00" * 10, 4) == "\ufffd" * 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_800_000_000.5, 1_800_000_000.5),
        (1_800_000_000, 1_800_000_000.0),
        (MIN_TIME, MIN_TIME),
        (MAX_TIME, MAX_TIME),
        (MIN_TIME - 1, None),
        (MAX_TIME + 1, None),
        (math.nan, None),
        (-math.inf, None),
        (10**400, None),
        (True, None),
        ("1800000000", None),
        (None, None),
    ],
)
def test_storable_time(value: Any, expected: float | None) -> None:
    assert storable_time(value) == expected


class ItemsExit(dict):  # type: ignore[type-arg]
    """A dict whose own code raises a BaseException, not an Exception."""

    def items(self) -> Any:
        raise SystemExit("items() refuses")

    def __iter__(self) -> Any:
        raise SystemExit("__iter__ refuses")


class _NoName(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("no name")


class Nameless(metaclass=_NoName):
    """An object whose class will not say its name and whose str() raises KeyboardInterrupt."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


def test_a_value_whose_own_code_raises_a_base_exception_is_summarized_not_raised() -> None:
    assert sanitize(ItemsExit(a=1)) == {"_unstorable": True, "reason": "SystemExit"}
    assert sanitize({"inner": [ItemsExit(a=1)]}) == {"_unstorable": True, "reason": "SystemExit"}
    assert sanitize({"x": Nameless()}) == {"x": "<unstorable Nameless>"}
    assert sanitize({Nameless(): 1}) == {"<unstorable Nameless>": 1}
    assert storable_text(Nameless()) == "<unprintable Nameless>"
