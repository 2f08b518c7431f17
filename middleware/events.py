"""The status vocabulary shared with SQL, and the event a hook hands to the writer.

Python mirrors the statuses in one ``Enum`` and knows the ordering key only to coalesce
events of one job in memory; whether a transition is allowed is decided in SQL, never here.
An event is safe from the moment it is built: every value it holds is storable
(:mod:`middleware.storable`).
"""

from __future__ import annotations

import enum
import json
import time
from json.encoder import encode_basestring as _json_string  # C; ensure_ascii=False
from typing import Any, NamedTuple

from .storable import MAX_TIME, MIN_TIME, storable_json, storable_text, storable_time


class Status(enum.StrEnum):
    """Job states, in the order of ``public.job_state`` (the order is the state machine's)."""

    PENDING = "pending"
    ACTIVE = "active"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({Status.CANCELLED, Status.COMPLETED, Status.FAILED, Status.SKIPPED})
#: position of each status in ``public.job_state``
_ORDER = {status: index for index, status in enumerate(Status)}

#: stored error messages are capped at this many characters (the column allows 4000)
MAX_ERROR_CHARS = 2000
MAX_PROGRESS_MESSAGE_CHARS = 500
#: results larger than this (encoded JSON) are replaced by a summary
DEFAULT_MAX_RESULT_BYTES = 256 * 1024


class Owner(NamedTuple):
    tenant_id: str
    user_id: str


#: (job_id, owner, actor_name, queue_name, enqueued_at): what every event of one message repeats
Identity = tuple[str, Owner, str, str, float | None]

#: A job that began running: (identity, attempt, started_at). Its ``active`` event is made only
#: if the job is still running when the writer next flushes (:meth:`StatusWriter.started`): a
#: short job's one row write is its final status, and its worker thread builds one event, not two.
JobStart = tuple[Identity, int, float]

#: the longest identity text (job id, tenant, user, actor, queue) a row takes
MAX_NAME_CHARS = 255
MAX_ERROR_TYPE_CHARS = 255
#: attempts beyond this are stored as this (the column is an int4)
MAX_ATTEMPT = 1_000_000


def event_time() -> float:
    """Now in seconds, to the microsecond (what PostgreSQL keeps). ``round(time.time(), 6)``
    costs four times as much, twice per job on a worker thread."""
    return int(time.time() * 1_000_000) / 1_000_000


def make_identity(
    job_id: Any, owner: tuple[Any, Any], actor_name: Any, queue_name: Any, enqueued_at: Any
) -> Identity:
    """An :data:`Identity` whose every field a row takes (see :func:`storable_name`)."""
    return (
        storable_name(job_id),
        Owner(storable_name(owner[0]), storable_name(owner[1])),
        storable_name(actor_name),
        storable_name(queue_name),
        storable_time(enqueued_at),
    )


class StatusEvent:
    """One thing that happened to one job. Cheap to build: no I/O.

    Whatever it is given, an event holds only what the store and the outbox take (see
    :mod:`middleware.storable`): texts without NUL or lone surrogates, within their columns'
    lengths; times finite and sane (or absent); the result as JSON text of at most
    ``max_result_bytes`` bytes (else a summary). It can always be encoded, written and spilled.
    Whether its transition is allowed is decided in SQL.
    """

    __slots__ = (
        "actor_name",
        "attempt",
        "enqueued_at",
        "error_message",
        "error_type",
        "event_at",
        "job_id",
        "next_retry_at",
        "progress",
        "progress_message",
        "queue_name",
        "result_json",
        "started_at",
        "status",
        "tenant_id",
        "user_id",
    )

    def __init__(
        self,
        job_id: str,
        status: Status,
        attempt: int,
        owner: tuple[str, str],
        actor_name: str,
        queue_name: str,
        event_at: float,
        *,
        enqueued_at: float | None = None,
        started_at: float | None = None,
        progress: int | None = None,
        progress_message: str | None = None,
        result: Any = None,
        error_type: str | None = None,
        error_message: str | None = None,
        next_retry_at: float | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.job_id = storable_name(job_id)
        self.tenant_id = storable_name(owner[0])
        self.user_id = storable_name(owner[1])
        self.actor_name = storable_name(actor_name)
        self.queue_name = storable_name(queue_name)
        self.enqueued_at = storable_time(enqueued_at)
        self._fill(
            status,
            attempt,
            event_at,
            started_at=started_at,
            progress=progress,
            progress_message=progress_message,
            result=result,
            error_type=error_type,
            error_message=error_message,
            next_retry_at=next_retry_at,
            max_result_bytes=max_result_bytes,
        )

    @classmethod
    def of(
        cls, identity: Identity, status: Status, attempt: int, event_at: float, **fields: Any
    ) -> StatusEvent:
        """An event of the message ``identity`` names (made by :func:`make_identity`, so its
        texts are not checked again: the hooks' one way to build events)."""
        event = cls.__new__(cls)
        event.job_id, owner, event.actor_name, event.queue_name, event.enqueued_at = identity
        event.tenant_id, event.user_id = owner
        event._fill(status, attempt, event_at, **fields)
        return event

    def _fill(
        self,
        status: Status,
        attempt: Any,
        event_at: Any,
        *,
        started_at: Any = None,
        progress: Any = None,
        progress_message: Any = None,
        result: Any = None,
        error_type: Any = None,
        error_message: Any = None,
        next_retry_at: Any = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        # every check has a cheap test first for what the hooks give (this runs per event)
        if type(status) is not Status:
            status = Status(status)  # a str of a known status, or ValueError: a caller's bug
        self.status = status
        if type(attempt) is not int or not 0 <= attempt <= MAX_ATTEMPT:
            attempt = _bounded_int(attempt, 0, MAX_ATTEMPT, 0)
        self.attempt = attempt
        if type(event_at) is not float or not MIN_TIME <= event_at <= MAX_TIME:
            event_at = storable_time(event_at)
            if event_at is None:  # an event always has a time: now, if it came with none sane
                event_at = event_time()
        self.event_at = event_at
        if started_at is not None and (
            type(started_at) is not float or not MIN_TIME <= started_at <= MAX_TIME
        ):
            started_at = storable_time(started_at)
        self.started_at = started_at
        self.next_retry_at = None if next_retry_at is None else storable_time(next_retry_at)
        if progress is not None and (type(progress) is not int or not 0 <= progress <= 100):
            progress = _bounded_int(progress, 0, 100, None)
        self.progress = progress
        self.progress_message = (
            None if progress_message is None else _text(progress_message, MAX_PROGRESS_MESSAGE_CHARS)
        )
        self.error_type = None if error_type is None else _text(error_type, MAX_ERROR_TYPE_CHARS)
        self.error_message = None if error_message is None else _text(error_message, MAX_ERROR_CHARS)
        if result is not None:
            result = storable_json(result, max_result_bytes)
            if result == "null":  # NaN, infinity: absent, as None would be
                result = None
        self.result_json = result

    def __repr__(self) -> str:
        return (
            f"StatusEvent(job_id={self.job_id!r}, status={self.status.value}, "
            f"attempt={self.attempt}, progress={self.progress})"
        )

    @property
    def result(self) -> Any:
        """The result as stored (decoded from :attr:`result_json`), or None."""
        return None if self.result_json is None else json.loads(self.result_json)

    @property
    def identity(self) -> Identity:
        return (self.job_id, Owner(self.tenant_id, self.user_id), self.actor_name, self.queue_name,
                self.enqueued_at)  # fmt: skip

    def sort_key(self) -> tuple[Any, ...]:
        """The ordering of the SQL state machine, for coalescing in memory only.

        Any terminal event beats any live one; between terminal events the earlier wins;
        between live ones the greater (attempt, status, progress, event_at).
        """
        if self.status in _TERMINAL:
            return (1, -self.event_at, -_ORDER[self.status])
        return (0, self.attempt, _ORDER[self.status], self.progress or 0, self.event_at)

    def supersedes(self, other: StatusEvent) -> bool:
        return self.sort_key() > other.sort_key()

    def as_dict(self) -> dict[str, Any]:
        """The event as the store's JSON object, without the absent fields."""
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status.value,
            "attempt": self.attempt,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "actor_name": self.actor_name,
            "queue_name": self.queue_name,
            "event_at": self.event_at,
        }
        for name in _OPTIONAL:
            value = self.result if name == "result" else getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_json(self) -> str:
        """The event as JSON for the store or the outbox: the keys and values of
        :meth:`as_dict`, built by hand (every field is already storable: this is a join)."""
        parts = [
            '{"job_id":',
            _json_string(self.job_id),
            ',"status":"',
            self.status,  # a StrEnum member: its text is its value
            '","attempt":',
            int.__repr__(self.attempt),
            ',"tenant_id":',
            _json_string(self.tenant_id),
            ',"user_id":',
            _json_string(self.user_id),
            ',"actor_name":',
            _json_string(self.actor_name),
            ',"queue_name":',
            _json_string(self.queue_name),
            ',"event_at":',
            float.__repr__(self.event_at),
        ]
        for name, key, encode in _JSON_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                parts += (key, encode(value))
        parts.append("}")
        return "".join(parts)

    def size_bound(self) -> int:
        """At least ``len(self.to_json())``, without encoding: every key, numbers of at most 24
        characters, each text escaped (at most 6 characters per character)."""
        size = _PLAIN_SIZE + 6 * (
            len(self.job_id) + len(self.tenant_id) + len(self.user_id) + len(self.actor_name)
            + len(self.queue_name)
        )  # fmt: skip
        for text in (self.progress_message, self.error_type, self.error_message):
            if text is not None:
                size += 6 * len(text)
        if self.result_json is not None:
            size += len(self.result_json)
        return size


def event_for(
    identity: Identity, status: Status, attempt: int, event_at: float, **fields: Any
) -> StatusEvent:
    """An event of the message ``identity`` names (see :meth:`StatusEvent.of`)."""
    return StatusEvent.of(identity, status, attempt, event_at, **fields)


def active_event(start: JobStart) -> StatusEvent:
    """The ``active`` event of a :data:`JobStart`: stamped with the time the job started."""
    identity, attempt, started_at = start
    return StatusEvent.of(identity, Status.ACTIVE, attempt, started_at, started_at=started_at)


#: :meth:`StatusEvent.size_bound` of an event without texts of its own: its keys and
#: punctuation (~190 characters with every optional number present), and 24 per number
_PLAIN_SIZE = 512


def storable_name(value: Any) -> str:
    """An identity text: storable, 1 to 255 characters (an empty one becomes ``?``)."""
    if type(value) is str and 0 < len(value) <= MAX_NAME_CHARS and value.isascii() and "\x00" not in value:
        return value
    return storable_text(value, MAX_NAME_CHARS) or "?"


def _text(value: Any, limit: int) -> str:
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value
    return storable_text(value, limit)


def _bounded_int(value: Any, low: int, high: int, default: int | None) -> int | None:
    """``value`` as an int clamped to ``low .. high``; ``default`` when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    try:
        number = int(value)
    except (OverflowError, ValueError):  # infinity, NaN
        return default
    return max(low, min(high, number))


#: the optional fields, in as_dict order: (attribute, its JSON key, its encoder)
_JSON_OPTIONAL = (
    ("enqueued_at", ',"enqueued_at":', float.__repr__),
    ("started_at", ',"started_at":', float.__repr__),
    ("progress", ',"progress":', int.__repr__),
    ("progress_message", ',"progress_message":', _json_string),
    ("result_json", ',"result":', str),
    ("error_type", ',"error_type":', _json_string),
    ("error_message", ',"error_message":', _json_string),
    ("next_retry_at", ',"next_retry_at":', float.__repr__),
)

_OPTIONAL = tuple("result" if name == "result_json" else name for name, _key, _encode in _JSON_OPTIONAL)
