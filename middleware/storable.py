"""What a status event may carry: texts, JSON and times that PostgreSQL and the outbox take.

Every value an event holds passes through here when the event is built, so that whatever enters
the writer's buffer can always be encoded, written and spilled:

* a text is valid UTF-8 without NUL (PostgreSQL's ``text`` and ``jsonb`` refuse both): a NUL
  or a lone surrogate becomes U+FFFD;
* a result becomes JSON text whose every string, keys included and at any depth, is such a
  text; nesting deeper than :data:`MAX_DEPTH` is cut (the cut branch becomes a string that says
  so), a non-finite float becomes ``null``, a set or tuple a list, anything else JSON cannot
  hold (an object, a generator, an int of thousands of digits) a string naming its type, and a
  result larger than its byte limit a summary (``_truncated``) with a preview;
* a time is a finite float of epoch seconds within :data:`MIN_TIME` .. :data:`MAX_TIME`, or
  absent.

Sanitizing is idempotent: the JSON of a sanitized value sanitizes to itself (a property test
checks it, and that PostgreSQL accepts every output as ``jsonb``). Nothing here raises.

The usual result (plain dicts, lists, strings and numbers) costs one pass of the C encoder and
two scans of its output; only an unusual one is walked in Python.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: nesting deeper than this is cut (PostgreSQL parses jsonb recursively)
MAX_DEPTH = 64
#: containers and scalars visited at most while sanitizing one value (a cyclic structure that
#: is also wide would otherwise take exponential time before reaching MAX_DEPTH)
MAX_NODES = 200_000
#: the sane range of an event's times, in epoch seconds: 2000-01-01 .. 2200-01-01 UTC
MIN_TIME = 946_684_800.0
MAX_TIME = 7_258_118_400.0
#: characters of a result's JSON shown in the summary of a result over its limit
PREVIEW_CHARS = 500

_REPLACEMENT = "\ufffd"
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
# JSON text with a NUL (escaped by the encoder), or a character UTF-8 cannot encode: a lone
# surrogate (the encoder passes them through with ensure_ascii=False)
_UNSTORABLE_JSON = re.compile(r"\\u0000|[\ud800-\udfff]")
_UNSTORABLE_TEXT = re.compile(r"[\x00\ud800-\udfff]")
#: the name a class was created with (``type.__name__``'s own getter): a metaclass can make
#: ``cls.__name__`` anything, or raise; this is always a str, valid UTF-8 without NUL
_class_name = type.__dict__["__name__"].__get__


def storable_text(text: Any, limit: int | None = None) -> str:
    """``text`` (made a ``str`` if it is not one) as PostgreSQL's ``text`` takes it, cut to
    ``limit`` characters. Never raises: a ``__str__`` that does is named instead."""
    if type(text) is not str:
        text = _as_str(text)
    if not (text.isascii() and "\x00" not in text):
        text = _UNSTORABLE_TEXT.sub(_REPLACEMENT, text)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


def storable_time(value: Any) -> float | None:
    """A time as epoch seconds within the sane range, or None when it is not one."""
    if type(value) is float:
        return value if MIN_TIME <= value <= MAX_TIME else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = float(value)
        except (OverflowError, ValueError):
            return None
        return value if MIN_TIME <= value <= MAX_TIME else None  # NaN fails both comparisons
    return None


def storable_json(value: Any, max_bytes: int) -> str:
    """The JSON text of ``value`` sanitized (see the module docstring), at most ``max_bytes``
    bytes of UTF-8 or else a summary of it."""
    try:
        text = _ENCODER.encode(value)
    except BaseException:  # noqa: BLE001 - NaN, an object, too deep, an items() that raises
        # (even SystemExit: the result's own code runs here, in a hook): walk it
        text = None
    if text is not None and not _UNSTORABLE_JSON.search(text) and _shallow(text):
        return _capped(text, max_bytes)
    try:
        walker = _Walker()
        clean = walker.walk(value, 0)
        text = _ENCODER.encode(clean)
    except _TooLarge:
        return _summary(None, max_bytes, "larger than the walk allows")
    except BaseException as exc:  # noqa: BLE001 - whatever a hostile value does, the event survives
        return _ENCODER.encode({"_unstorable": True, "reason": _class_name(type(exc))[:200]})
    return _capped(text, max_bytes)


def sanitize(value: Any, max_bytes: int = 1 << 30) -> Any:
    """The sanitized value itself (what :func:`storable_json` encodes)."""
    return json.loads(storable_json(value, max_bytes))


def _as_str(value: Any) -> str:
    try:
        text = str(value)
    except BaseException:  # noqa: BLE001 - a __str__ that raises, even SystemExit (as traceback does)
        return f"<unprintable {_class_name(type(value))}>"
    return text if type(text) is str else f"<unprintable {_class_name(type(value))}>"


def _shallow(text: str) -> bool:
    """Whether the JSON ``text`` nests at most MAX_DEPTH deep. Free for a text with few
    containers; otherwise its strings are removed, then its innermost pairs of brackets, a pass
    at a time (each pass removes at most two levels), all in C."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return True
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(MAX_DEPTH // 2):
        if not brackets:
            return True
        brackets = brackets.replace("[]", "").replace("{}", "")
    return not brackets


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _capped(text: str, max_bytes: int) -> str:
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size <= max_bytes:
        return text
    return _summary(text, max_bytes, None, size)


def _summary(text: str | None, max_bytes: int, reason: str | None, size: int | None = None) -> str:
    summary: dict[str, Any] = {"_truncated": True, "limit_bytes": max_bytes}
    if size is not None:
        summary["size_bytes"] = size
    if reason is not None:
        summary["reason"] = reason
    if text is not None:
        summary["preview"] = text[:PREVIEW_CHARS]
    return _ENCODER.encode(summary)


class _TooLarge(Exception):
    """The walk visited MAX_NODES values."""


class _Walker:
    """Builds a JSON-native copy of a value, bounded in depth and in the nodes it visits."""

    def __init__(self) -> None:
        self.nodes = 0

    def walk(self, value: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        if value is None or value is True or value is False:
            return value
        if isinstance(value, str):
            return storable_text(str.__str__(value))
        if isinstance(value, bool):  # a bool subclass is not possible, but be exact
            return bool(value)
        if isinstance(value, int):
            try:
                int.__repr__(value)  # Python refuses ints of more than 4300 digits
            except ValueError:
                return f"<int of {value.bit_length()} bits>"
            return int(value)
        if isinstance(value, float):
            number = float(value)
            return number if math.isfinite(number) else None
        if depth >= MAX_DEPTH:
            return f"<cut: nested deeper than {MAX_DEPTH}>"
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in list(value.items()):
                out[self._key(key)] = self.walk(item, depth + 1)
            return out
        if isinstance(value, list | tuple):
            return [self.walk(item, depth + 1) for item in list(value)]
        if isinstance(value, set | frozenset):
            return [self.walk(item, depth + 1) for item in list(value)]
        return f"<unstorable {_class_name(type(value))[:100]}>"

    def _key(self, key: Any) -> str:
        # what json.dumps does with the keys it accepts; anything else is named by its type
        if isinstance(key, str):
            return storable_text(str.__str__(key))
        if key is None or key is True or key is False:
            return _ENCODER.encode(key)
        if isinstance(key, int):
            try:
                return int.__repr__(key)
            except ValueError:
                return f"<int of {key.bit_length()} bits>"
        if isinstance(key, float):
            number = float(key)
            return float.__repr__(number) if math.isfinite(number) else "null"
        return f"<unstorable {_class_name(type(key))[:100]}>"


__all__ = ["MAX_DEPTH", "MAX_TIME", "MIN_TIME", "sanitize", "storable_json", "storable_text", "storable_time"]
