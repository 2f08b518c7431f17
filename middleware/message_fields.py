"""What the status hooks read from a message and its outcome, whatever a hand-made message or a
hostile actor puts there: the owner, times, attempts, progress percents and error texts.

Every function here never raises on odd input (a timestamp that is not a number, an exception
whose ``__str__`` raises, a class whose ``__name__`` is not a str); each returns what a row can
hold, or None.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

from .events import MAX_ATTEMPT, MAX_ERROR_CHARS, Owner
from .redaction import clean_text
from .storable import MAX_TIME, MIN_TIME

OwnerExtractor = Callable[[Message[Any]], Owner | None]


def owner_from_payload(message: Message[Any]) -> Owner | None:
    """The owner named by the job's payload: ``tenant_id`` and ``user_id`` keys of the first
    positional argument when it is a dict, else of the keyword arguments."""
    source: Any = message.args[0] if message.args and isinstance(message.args[0], dict) else message.kwargs
    tenant_id = source.get("tenant_id") if isinstance(source, dict) else None
    user_id = source.get("user_id") if isinstance(source, dict) else None
    if tenant_id is None or user_id is None:
        return None
    return Owner(str(tenant_id), str(user_id))


def unwrapped(message: Message[Any]) -> Message[Any]:
    """The message behind a worker's ``MessageProxy``: every field read through the proxy is a
    failed attribute lookup and a Python ``__getattr__`` call (~0.5 µs), on the hooks' hot path."""
    return message._message if isinstance(message, MessageProxy) else message


def check_owner(owner: Owner | None) -> str | None:
    """What is wrong with ``owner``, or None."""
    if owner is None:
        return "the payload must carry 'tenant_id' and 'user_id'"
    for name, value in zip(("tenant_id", "user_id"), owner, strict=True):
        try:
            uuid.UUID(str(value))
        except (ValueError, AttributeError, TypeError):
            return f"{name} must be a UUID, got {str(value)[:60]!r}"
    return None


def seconds_from_ms(milliseconds: Any) -> float | None:
    """Epoch milliseconds from a message (its timestamp, a retry's eta) as seconds, or None
    when a hand-made message carries something else: not a number, or a time a row cannot
    hold (NaN, 10**30, seconds where milliseconds belong: before 2000 or after 2200)."""
    if type(milliseconds) is int or type(milliseconds) is float:
        try:
            seconds = milliseconds / 1000
        except OverflowError:  # an int too large for a float
            return None
        return seconds if MIN_TIME <= seconds <= MAX_TIME else None  # NaN fails both
    return None


def progress_percent(value: Any) -> int | None:
    """A progress percent as an int clamped to 0..100, or None when ``value`` is not a finite
    number (NaN, infinity, a word). Anything ``float()`` takes counts: numpy's numbers, "50"."""
    if isinstance(value, int):
        return max(0, min(100, int(value)))
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0, min(100, int(number))) if math.isfinite(number) else None


def attempt_of(retries: Any) -> int:
    """The attempt a message's ``retries`` option makes (1 for the first run)."""
    if type(retries) is int and retries >= 0:
        return min(retries + 1, MAX_ATTEMPT)
    return 1


#: the name a class was created with (``type.__name__``'s own getter): a metaclass can make
#: ``cls.__name__`` anything, or raise; this is always a str, valid UTF-8 without NUL
class_name = type.__dict__["__name__"].__get__


def error_fields(exception: BaseException) -> dict[str, str]:
    """The error texts of a failed job's row. Never raises, whatever the exception does."""
    try:
        # an exact str: the methods of a str subclass that __str__ returned are never called
        text = str.__str__(str(exception))
    except BaseException:  # noqa: BLE001 - as traceback does: even a SystemExit from __str__
        text = "<unprintable exception>"
    return {
        "error_type": class_name(type(exception))[:255],
        "error_message": clean_text(text, MAX_ERROR_CHARS),
    }
