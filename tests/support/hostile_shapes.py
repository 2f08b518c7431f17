"""What the hostile actors do (tests/support/hostile_actors.py): :data:`SHAPES` maps a shape's
name to a function of no arguments whose return value is the job's result, or which raises.

Everything hostile is built inside the worker, since none of it could travel in a message. This
module imports no broker, so the fuzz suite can read the shapes' names without one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from middleware import progress

#: deep enough to make json.dumps, json.loads and every recursive walk raise RecursionError
DEEP = 100_000
#: 10 MB of exception text
HUGE_TEXT = 10 * 1024 * 1024


# -- hostile objects --------------------------------------------------------------------------------


class Unprintable:
    """An object whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class UnprintableHard:
    """An object whose ``__str__`` and ``__repr__`` raise a BaseException (not an Exception)."""

    def __str__(self) -> str:
        raise KeyboardInterrupt("__str__ refuses, hard")

    def __repr__(self) -> str:
        raise KeyboardInterrupt("__repr__ refuses, hard")


class ItemsRaise(dict):  # type: ignore[type-arg]
    """A dict whose ``items()`` (and iteration) raise: json's encoder calls ``items()`` on a
    dict subclass."""

    def items(self) -> Any:
        raise RuntimeError("items() refuses")

    def __iter__(self) -> Any:
        raise RuntimeError("__iter__ refuses")


class ItemsRaiseHard(dict):  # type: ignore[type-arg]
    """A dict whose ``items()`` raise a BaseException."""

    def items(self) -> Any:
        raise SystemExit("items() refuses, hard")

    def __iter__(self) -> Any:
        raise SystemExit("__iter__ refuses, hard")


class IterRaise(list):  # type: ignore[type-arg]
    """A list whose iteration raises."""

    def __iter__(self) -> Any:
        raise RuntimeError("__iter__ refuses")


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("the exception's __str__ refuses")


class StrRaisesHard(Exception):
    def __str__(self) -> str:
        raise SystemExit("the exception's __str__ refuses, hard")


class StrNotStr(Exception):
    def __str__(self) -> Any:
        return 42


class SneakyText(str):
    """A str whose methods raise: what a hostile ``__str__`` may return."""

    def replace(self, *args: Any) -> str:
        raise RuntimeError("replace() refuses")

    def __getitem__(self, key: Any) -> str:
        raise RuntimeError("slicing refuses")

    def __len__(self) -> int:
        raise RuntimeError("len() refuses")


class StrSneaky(Exception):
    def __str__(self) -> str:
        return SneakyText("sneaky text")


class StrHuge(Exception):
    def __str__(self) -> str:
        return "e" * HUGE_TEXT


class HostileBase(BaseException):
    """A BaseException subclass: not an Exception."""


class _NamedBadly(type):
    """A metaclass whose classes report a ``__name__`` given by ``_bad_name``."""

    @property
    def __name__(cls) -> Any:  # type: ignore[override]
        name = cls.__dict__.get("_bad_name")
        if name is _RAISE:
            raise RuntimeError("__name__ refuses")
        return name


_RAISE = object()


class NulNamed(Exception, metaclass=_NamedBadly):
    """An exception class whose name holds a NUL and a lone surrogate (Python refuses such a
    name in ``class`` and ``type()``; a metaclass can still report one)."""

    _bad_name = "Bad\x00Name\ud800"


class NonStrNamed(Exception, metaclass=_NamedBadly):
    _bad_name = 12345


class RaisingNamed(Exception, metaclass=_NamedBadly):
    _bad_name = _RAISE


# -- shapes -----------------------------------------------------------------------------------------


def _deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def _deep_dict(depth: int, leaf: Any = None) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        child: dict[str, Any] = {}
        node["d"] = child
        node = child
    node["leaf"] = leaf
    return root


def _deep_keys() -> dict[str, Any]:
    """Hostile keys at depths 1, 10 and 50 (inside the depth the walk keeps)."""
    leaf: dict[Any, Any] = {"nul\x00key": 1, "\udfff": 2, "ok": [{"\x00": {"\ud800\udc00x": 3}}]}
    value: Any = leaf
    for depth in range(50):
        value = {f"level{depth}": value, f"k\x00{depth}" if depth in (9, 40) else "plain": depth}
    return {"top\x00": value}


def _cycle_narrow() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return {"loop": loop}


def _cycle_wide() -> Any:
    node: dict[str, Any] = {}
    for i in range(50):
        node[f"k{i}"] = node  # 50 edges back to itself: 50**64 paths before the depth cut
    return node


def _progress_then(percent: Any, message: Any, result: Any = "done") -> Callable[[], Any]:
    def run() -> Any:
        progress.report(percent, message)
        return result

    return run


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


def _raise(exc: BaseException) -> Callable[[], Any]:
    def run() -> Any:
        raise exc

    return run


def _raise_after_progress() -> Any:
    progress.report(30, "one third")
    time.sleep(0.3)  # past the progress throttle: the second report makes an event too
    progress.report(60, "two thirds \x00\ud800")
    raise ValueError("failed after progress")


def _raise_huge_args() -> Any:
    raise ValueError(*range(1_000_000))


def _raise_tuple_arg() -> Any:
    raise ValueError(tuple(range(1_000_000)))


def _raise_odd_args() -> Any:
    raise ValueError(Unprintable(), b"\x00\xff", {1, 2}, object())


#: shape -> what the actor does (returns the result, or raises)
SHAPES: dict[str, Callable[[], Any]] = {
    # results: hostile keys and texts
    "key_nul": lambda: {"a\x00b": 1},
    "key_surrogate": lambda: {"\ud800": 1, "ok": 2},
    "keys_hostile_at_depth": _deep_keys,
    "key_objects": lambda: {Unprintable(): 1, (1, 2): 2, 10**5000: 3, float("nan"): 4, None: 5},
    "values_nul_surrogate": lambda: {"v": "a\x00b\ud800c", "list": ["\udc80", "\x00", "fine"]},
    "text_result_nul_surrogate": lambda: "top\x00level\udfff",
    # results: numbers
    "nan_inf_nested": lambda: {"a": [float("nan"), {"b": float("inf"), "c": [float("-inf"), 1.5]}]},
    "nan_alone": lambda: float("nan"),
    "int_beyond_4300_digits": lambda: {"n": 10**5000, "list": [-(10**9000)]},
    # results: shapes and sizes
    "deep_list_1e5": lambda: _deep_list(DEEP),
    "deep_dict_1e5": lambda: _deep_dict(DEEP, "bottom"),
    "cycle_narrow": _cycle_narrow,
    "cycle_wide": _cycle_wide,
    "huge_text_result": lambda: "x" * (3 * 1024 * 1024),
    "huge_dict_result": lambda: {str(i): "y" * 100 for i in range(100_000)},
    # results: what JSON has no word for
    "set_result": lambda: {1, 2, 3},
    "frozenset_result": lambda: frozenset({"a", "b"}),
    "tuple_result": lambda: (1, "two", None, (3.0,)),
    "generator_result": lambda: (i for i in range(3)),
    "object_result": lambda: object(),
    "bytes_result": lambda: b"\x00\xff raw",
    "bytearray_result": lambda: bytearray(b"\x00\xfe"),
    "decimal_result": lambda: Decimal("1.10"),
    "datetime_result": lambda: {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2)},
    "unprintable_result": lambda: Unprintable(),
    "unprintable_hard_result": lambda: {"inner": [UnprintableHard()]},
    "items_raise_result": lambda: ItemsRaise(a=1),
    "items_raise_hard_result": lambda: {"inner": ItemsRaiseHard(a=1)},
    "iter_raise_result": lambda: {"inner": IterRaise([1, 2])},
    # exceptions
    "exc_str_raises": _raise(StrRaises("hidden")),
    "exc_str_raises_hard": _raise(StrRaisesHard("hidden")),
    "exc_str_not_str": _raise(StrNotStr("hidden")),
    "exc_str_sneaky_subclass": _raise(StrSneaky()),
    "exc_str_10mb": _raise(StrHuge()),
    "exc_nul_surrogate": _raise(ValueError("bad \x00 byte and \ud800 half")),
    "exc_args_1e6": _raise_huge_args,
    "exc_arg_tuple_1e6": _raise_tuple_arg,
    "exc_args_odd": _raise_odd_args,
    "exc_class_name_nul": _raise(NulNamed("named badly")),
    "exc_class_name_not_str": _raise(NonStrNamed("named badly")),
    "exc_class_name_raises": _raise(RaisingNamed("named badly")),
    "base_exception": _raise(HostileBase("not an Exception")),
    "system_exit": _raise(SystemExit(3)),
    "keyboard_interrupt": _raise(KeyboardInterrupt()),
    "recursion": lambda: _recurse(0),
    "raise_after_progress": _raise_after_progress,
    # progress
    "progress_nul": _progress_then(10, "a\x00b"),
    "progress_surrogate": _progress_then(20, "half \ud800 a pair"),
    "progress_1mb": _progress_then(30, "p\x00\ud800" * 350_000),
    "progress_unprintable": _progress_then(40, Unprintable()),
    "progress_nan": _progress_then(float("nan"), "not a number"),
    "progress_inf": _progress_then(float("-inf"), "minus infinity"),
    "progress_googol": _progress_then(10**100, "a googol percent"),
    "progress_text_percent": _progress_then("fifty", "a word for a percent"),
}
