"""The StatusStore protocol every store implements, and what the stores send and read back:
the arrays of ``public.job_status_write`` and its answer."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..errors import PermanentStoreError
from ..events import StatusEvent

APPLIED = "applied"
STALE = "stale"
REJECTED = "rejected"
#: the event was rejected and a summary of it written in its place (the writer's doing, never a
#: store's answer: see middleware.delivery)
REPLACED = "replaced"


class Outcome(NamedTuple):
    """What became of one event: applied, stale (the row already held newer news), rejected
    (with a reason), or replaced (rejected, and a summary written instead)."""

    job_id: str
    outcome: str
    reason: str | None = None

    @property
    def rejected(self) -> bool:
        return self.outcome == REJECTED


@runtime_checkable
class StatusStore(Protocol):
    """Applies batches of status events through ``public.job_status_write``.

    ``apply`` makes one round trip and returns one :class:`Outcome` per event, in order. It
    raises :class:`~middleware.errors.TransientStoreError` when the store cannot be reached
    (the batch may succeed later), :class:`~middleware.errors.RejectedBatchError` when the
    batch was refused for what it holds (the writer then isolates the bad events), and
    :class:`~middleware.errors.PermanentStoreError` when the store refuses any batch (no such
    function, a refused key). An event the store can judge on its own comes back as a rejected
    outcome instead.

    A store may also have ``prepare()``: called once at worker boot (see
    :meth:`~middleware.writer.StatusWriter.prepare`) to import and build what ``apply`` needs,
    without a network round trip.
    """

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]: ...

    def close(self) -> None: ...


class CancelRequest(NamedTuple):
    """A cancellation request stamped on a row (``cancel_requested_at``); ``live``: the job had
    not finished when it was read."""

    job_id: str
    requested_at: dt.datetime
    live: bool


@runtime_checkable
class CancelSource(Protocol):
    """What the fleet's cancel poller (:mod:`middleware.cancel_poll`) asks of a store that has
    them: both stores do, through ``public.job_status_cancel_requests`` and
    ``public.job_status_stamp_cancels``. Errors as for :meth:`StatusStore.apply`."""

    def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
        """The stamps after ``(since, after_job_id)`` in (time, job id) order, at most ``limit``."""
        ...

    def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
        """Stamp the unstamped rows of these (job id, time of the request); the ids that have
        a row."""
        ...


@runtime_checkable
class RetentionLagSource(Protocol):
    """A store that can say how far behind retention is (``public.job_status_retention_lag``):
    both stores can. The fleet's cancel poller reads it at most once a minute and exports it
    (``job_status_retention_lag_seconds``). Errors as for :meth:`StatusStore.apply`."""

    def retention_lag(self) -> float:
        """Seconds past its time of the row retention would take next (0: nothing overdue)."""
        ...


WRITE_FUNCTION = "job_status_write"
#: ``public.job_status_write``'s parameters in order, and the event attribute each array holds;
#: the first eight are required, the others default to null (a field no event has)
WRITE_PARAMS: tuple[tuple[str, str], ...] = (
    ("job_ids", "job_id"),
    ("statuses", "status"),
    ("attempts", "attempt"),
    ("tenant_ids", "tenant_id"),
    ("user_ids", "user_id"),
    ("actor_names", "actor_name"),
    ("queue_names", "queue_name"),
    ("event_ats", "event_at"),
    ("progresses", "progress"),
    ("progress_messages", "progress_message"),
    ("results", "result_json"),
    ("error_types", "error_type"),
    ("error_messages", "error_message"),
    ("next_retry_ats", "next_retry_at"),
    ("enqueued_ats", "enqueued_at"),
    ("started_ats", "started_at"),
)
REQUIRED_PARAMS = 8
_OPTIONAL_GETTERS = tuple(attrgetter(attribute) for _name, attribute in WRITE_PARAMS[REQUIRED_PARAMS:])

#: owners already seen, as UUIDs (a worker writes for a few tenants and users over and over)
_UUIDS: dict[str, uuid.UUID] = {}
_MAX_UUIDS = 4096


def as_uuid(text: str) -> uuid.UUID | None:
    """``text`` as a UUID (cached), or None when it is not one: the owner of an event that was
    not checked at send (a hand-made one), which no row can have."""
    value = _UUIDS.get(text)
    if value is None:
        try:
            value = uuid.UUID(text)
        except (TypeError, ValueError, AttributeError):
            return None
        if len(_UUIDS) >= _MAX_UUIDS:
            _UUIDS.clear()
        _UUIDS[text] = value
    return value


def write(events: Sequence[StatusEvent], call: Callable[[Sequence[StatusEvent]], Any]) -> list[Outcome]:
    """One :class:`Outcome` per event, from ``call`` (one round trip to ``job_status_write``
    with the events, returning its answer), but for the events that cannot travel in its typed
    arrays (an owner that is not a UUID: the arrays would refuse the whole batch for it), which
    are rejected here and not sent."""
    bad: dict[int, str] = {}
    for i, event in enumerate(events):
        if as_uuid(event.tenant_id) is None:
            bad[i] = "invalid_event: tenant_id is not a uuid"
        elif as_uuid(event.user_id) is None:
            bad[i] = "invalid_event: user_id is not a uuid"
    sent = [event for i, event in enumerate(events) if i not in bad] if bad else events
    outcomes = iter(outcomes_of(call(sent), sent) if sent else [])
    return [
        Outcome(event.job_id, REJECTED, bad[i]) if i in bad else next(outcomes)
        for i, event in enumerate(events)
    ]


def write_arrays(events: Sequence[StatusEvent]) -> list[list[Any] | None]:
    """``public.job_status_write``'s arguments for ``events``, in :data:`WRITE_PARAMS` order:
    one array per parameter, one element per event; None for an optional field no event has
    (most of a final status's fields are empty). Every value is already storable (the event
    made it so); owners stay text, each store encodes them its way."""
    arrays: list[list[Any] | None] = [
        [event.job_id for event in events],
        [event.status.value for event in events],
        [event.attempt for event in events],
        [event.tenant_id for event in events],
        [event.user_id for event in events],
        [event.actor_name for event in events],
        [event.queue_name for event in events],
        [event.event_at for event in events],
    ]
    for get in _OPTIONAL_GETTERS:
        column = list(map(get, events))
        arrays.append(None if column.count(None) == len(column) else column)
    return arrays


def outcomes_of(answer: Any, events: Sequence[StatusEvent]) -> list[Outcome]:
    """One :class:`Outcome` per event from ``job_status_write``'s answer, which names every
    event that was not applied and counts the rest. An answer that does not account for each
    event exactly once (cut short, from another function, garbled) raises
    :class:`~middleware.errors.PermanentStoreError`: no event counts as applied for lack of news.
    """
    n = len(events)
    try:
        stale = answer["stale"]
        rejected = answer["rejected"]
        applied = answer["applied"]
        if answer["events"] != n or type(applied) is not int or not isinstance(stale, list):
            raise ValueError("counts")
        if not isinstance(rejected, list) or applied + len(stale) + len(rejected) != n:
            raise ValueError("counts")
        outcomes: list[Outcome | None] = [None] * n
        for position in stale:
            _settle(outcomes, position, Outcome(_job_id(events, position), STALE))
        for position, reason in rejected:
            if type(reason) is not str:
                raise ValueError("reason")
            _settle(outcomes, position, Outcome(_job_id(events, position), REJECTED, reason))
    except (TypeError, KeyError, ValueError) as exc:
        raise PermanentStoreError(
            f"unexpected answer from {WRITE_FUNCTION} for {n} events: {_shape(answer)}",
            reason="bad_response",
        ) from exc
    return [
        outcome or Outcome(event.job_id, APPLIED) for outcome, event in zip(outcomes, events, strict=True)
    ]


def _job_id(events: Sequence[StatusEvent], position: Any) -> str:
    if type(position) is not int or not 1 <= position <= len(events):
        raise ValueError(f"position {position!r}")
    return events[position - 1].job_id


def _settle(outcomes: list[Outcome | None], position: int, outcome: Outcome) -> None:
    if outcomes[position - 1] is not None:
        raise ValueError(f"position {position} named twice")
    outcomes[position - 1] = outcome


def _shape(answer: Any) -> str:
    """What an answer looked like, for an error message (never its texts)."""
    if isinstance(answer, dict):
        return "object with " + ", ".join(sorted(str(key)[:20] for key in answer)[:8])
    return type(answer).__name__
