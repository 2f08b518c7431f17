"""The status vocabulary shared with SQL, and the event a hook hands to the writer.

Python mirrors the statuses in one ``Enum`` and knows the ordering key only to coalesce
events of one job in memory; whether a transition is allowed is decided in SQL
(``public.job_status_upsert`` and ``public.job_status_update``), never here.
"""

from __future__ import annotations

import enum
import json
import math
import time
from json.encoder import encode_basestring as _json_string  # C; ensure_ascii=False
from typing import Any, NamedTuple

from .redaction import clean_text


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
Identity = tuple[str, Owner, str, str, float]

#: A job that began running: (identity, attempt, started_at). Its ``active`` event is made only
#: if the job is still running when the writer next flushes (:meth:`StatusWriter.started`): a
#: short job's one row write is its final status, and its worker thread builds one event, not two.
JobStart = tuple[Identity, int, float]


def event_time() -> float:
    """Now in seconds, to the microsecond (what PostgreSQL keeps). ``round(time.time(), 6)``
    costs four times as much, twice per job on a worker thread."""
    return int(time.time() * 1_000_000) / 1_000_000


class StatusEvent:
    """One thing that happened to one job. Cheap to build: no validation, no I/O."""

    __slots__ = (
        "_json",
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
        "result",
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
        owner: Owner,
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
    ) -> None:
        self.job_id = job_id
        self.status = status
        self.attempt = attempt
        self.tenant_id, self.user_id = owner
        self.actor_name = actor_name
        self.queue_name = queue_name
        self.event_at = event_at
        self.enqueued_at = enqueued_at
        self.started_at = started_at
        self.progress = progress
        self.progress_message = progress_message
        self.result = result
        self.error_type = error_type
        self.error_message = error_message
        self.next_retry_at = next_retry_at
        self._json: tuple[int, str] | None = None  # (max_result_bytes, encoding) of to_json

    def __repr__(self) -> str:
        return (
            f"StatusEvent(job_id={self.job_id!r}, status={self.status.value}, "
            f"attempt={self.attempt}, progress={self.progress})"
        )

    def sort_key(self) -> tuple[Any, ...]:
        """The ordering of ``public.job_status_upsert``, for coalescing in memory only.

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
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_json(self, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> str:
        """Encode for the store or the outbox (cached: events are not changed once handed over).

        Never raises on a bad result or text: a result that is not JSON (NaN, infinity, an
        object) or larger than ``max_result_bytes`` is replaced by a summary that says so;
        the status still lands.
        """
        cached = self._json
        if cached is not None and cached[0] == max_result_bytes:
            return cached[1]
        text = self._encode(max_result_bytes)
        self._json = (max_result_bytes, text)
        return text

    def _encode(self, max_result_bytes: int) -> str:
        try:
            text = self._encode_plain(max_result_bytes)
        except _Unusual:
            return self._encode_general(max_result_bytes)
        return text if _travels(text) else self._encode_general(max_result_bytes)

    def _encode_plain(self, max_result_bytes: int) -> str:
        """The JSON of an event whose fields have the types the hooks give them, built by hand.

        The status of every job goes through here, on the writer thread of a busy worker: this
        costs about half of ``json.dumps(self.as_dict())`` (measured). Raises :class:`_Unusual`
        for anything else (a text that is not a ``str``, a float that is not finite), which
        :meth:`_encode_general` handles. Same keys and values as :meth:`as_dict`.
        """
        status = self.status
        if type(status) is not Status:
            raise _Unusual
        parts = [
            '{"job_id":',
            _text(self.job_id),
            ',"status":"',
            status,  # a StrEnum member: its text is its value
            '","attempt":',
            _number(self.attempt),
            ',"tenant_id":',
            _text(self.tenant_id),
            ',"user_id":',
            _text(self.user_id),
            ',"actor_name":',
            _text(self.actor_name),
            ',"queue_name":',
            _text(self.queue_name),
            ',"event_at":',
            _number(self.event_at),
        ]
        for name, key, encode in _PLAIN_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                parts += (key, encode(value) if encode else _storable_result(value, max_result_bytes)[1])
        parts.append("}")
        return "".join(parts)

    def _encode_general(self, max_result_bytes: int) -> str:
        """Any event, whatever its fields hold: texts made ``str``, bad values made null."""
        doc = self.as_dict()
        for key in ("error_message", "progress_message", "error_type"):
            if key in doc and not isinstance(doc[key], str):
                doc[key] = str(doc[key])
        if "result" in doc:
            doc["result"] = _storable_result(doc["result"], max_result_bytes)[0]
        try:
            text = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):  # NaN in a float field
            text = ""
        if text and _travels(text):
            return text
        return json.dumps(_sanitized(doc), ensure_ascii=False, separators=(",", ":"))

    def update_row(self, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> UpdateRow | None:
        """The event as one element of ``public.job_status_update``'s arrays, or None when it
        goes through ``job_status_apply`` instead: a ``pending`` event (it usually creates its
        row), or a field whose type or text is not what the hooks give it (that path checks and
        reports each event on its own). The result is encoded as :meth:`to_json` would."""
        status = self.status
        if type(status) is not Status or status is Status.PENDING:
            return None
        job_id, attempt, progress = self.job_id, self.attempt, self.progress
        if type(job_id) is not str or not _storable_text(job_id) or type(attempt) is not int:
            return None
        if progress is not None and type(progress) is not int:
            return None
        for at in (self.event_at, self.enqueued_at, self.started_at, self.next_retry_at):
            if at is not None and (type(at) is not float or not math.isfinite(at)):
                return None
        for text in (self.progress_message, self.error_type, self.error_message):
            if text is not None and (type(text) is not str or not _storable_text(text)):
                return None
        result = self.result
        if result is not None:
            result = _storable_result(result, max_result_bytes)[1]
            if not _travels(result):
                return None
        return (
            job_id, status.value, attempt, progress, self.progress_message, result, self.error_type,
            self.error_message, self.next_retry_at, self.enqueued_at, self.started_at, self.event_at,
        )  # fmt: skip

    def size_bound(self) -> int:
        """At least ``len(self.to_json())``, without encoding when nothing in the event is
        longer than its identity: the writer sizes every batch, and most events then go to the
        store as arrays (:meth:`update_row`), never as JSON."""
        if self.result is None and self.progress_message is None and self.error_type is None:
            if self.error_message is None and type(self.status) is Status:
                texts = (self.job_id, self.tenant_id, self.user_id, self.actor_name, self.queue_name)
                if all(type(text) is str for text in texts):
                    # every key, six numbers of at most 24 characters, each text escaped
                    return _PLAIN_SIZE + 6 * sum(map(len, texts))
        return len(self.to_json())

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StatusEvent:
        """Rebuild an event from :meth:`as_dict` output (the outbox stores that)."""
        return cls(
            doc["job_id"],
            Status(doc["status"]),
            doc["attempt"],
            Owner(doc["tenant_id"], doc["user_id"]),
            doc["actor_name"],
            doc["queue_name"],
            doc["event_at"],
            **{name: doc.get(name) for name in _OPTIONAL},
        )


def event_for(
    identity: Identity, status: Status, attempt: int, event_at: float, **fields: Any
) -> StatusEvent:
    """An event of the message ``identity`` names (the hooks' one way to build events)."""
    job_id, owner, actor_name, queue_name, enqueued_at = identity
    return StatusEvent(
        job_id, status, attempt, owner, actor_name, queue_name, event_at, enqueued_at=enqueued_at, **fields
    )


def active_event(start: JobStart) -> StatusEvent:
    """The ``active`` event of a :data:`JobStart`: stamped with the time the job started."""
    identity, attempt, started_at = start
    return event_for(identity, Status.ACTIVE, attempt, started_at, started_at=started_at)


#: one element of ``public.job_status_update``'s arrays, in its parameters' order: job_id,
#: status, attempt, progress, progress_message, result (JSON text), error_type, error_message,
#: next_retry_at, enqueued_at, started_at, event_at
UpdateRow = tuple[Any, ...]

#: :meth:`StatusEvent.size_bound` of an event without texts of its own: its keys and
#: punctuation (~190 characters with every optional number present), and 24 per number
_PLAIN_SIZE = 512


def _storable_text(text: str) -> bool:
    """Whether PostgreSQL takes the text as it is: no NUL, valid UTF-8 (no lone surrogates)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Unusual(Exception):
    """A field the hand-built encoding does not take: use the general one."""


_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _text(value: Any) -> str:
    if type(value) is not str:
        raise _Unusual
    return _json_string(value)


def _number(value: Any) -> str:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Unusual
        return float.__repr__(value)  # what json.dumps writes
    if kind is int:
        return int.__repr__(value)
    raise _Unusual  # bool, Decimal, None in a required field, ...


def _travels(text: str) -> bool:
    """Whether encoded JSON can go to the store: UTF-8 (no lone surrogates) and no NUL, which
    PostgreSQL's jsonb refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text


def _storable_result(result: Any, max_result_bytes: int) -> tuple[Any, str]:
    """(value, its JSON): the result, or a summary when it is not JSON (NaN, infinity, an
    object, too deep) or its encoding is larger than ``max_result_bytes``."""
    try:
        encoded = _JSON.encode(result)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        summary: dict[str, Any] = {"_unstorable": True, "reason": clean_text(str(exc), 300)}
        return summary, _JSON.encode(summary)
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > max_result_bytes:
        summary = {
            "_truncated": True,
            "size_bytes": size,
            "limit_bytes": max_result_bytes,
            "preview": clean_text(encoded[:500], 500),
        }
        return summary, _JSON.encode(summary)
    return result, encoded


#: the optional fields, in as_dict order: (attribute, its JSON key, its encoder; None: the result)
_PLAIN_OPTIONAL = (
    ("enqueued_at", ',"enqueued_at":', _number),
    ("started_at", ',"started_at":', _number),
    ("progress", ',"progress":', _number),
    ("progress_message", ',"progress_message":', _text),
    ("result", ',"result":', None),
    ("error_type", ',"error_type":', _text),
    ("error_message", ',"error_message":', _text),
    ("next_retry_at", ',"next_retry_at":', _number),
)

_OPTIONAL = tuple(name for name, _key, _encode in _PLAIN_OPTIONAL)


def _sanitized(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): _sanitized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitized(v) for v in value]
    return value
