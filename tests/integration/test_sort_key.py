"""Python's ``StatusEvent.sort_key`` against the rule in SQL.

The writer keeps one event per job in memory and lets a newer one replace it
(``StatusEvent.supersedes``, by ``sort_key``); the row is decided by public.job_status_write.
The two must agree: for any sequence of events of one job (any statuses, attempts, progress and
times, ties included), the event Python keeps is the one whose values the row holds, whether the
sequence reaches SQL in one batch or one event per call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_database, create_owner, database_url_for, drop_database, fetch_rows

pytestmark = [pytest.mark.integration, pytest.mark.sql]

T0 = 1_800_000_000.0
# few distinct times, so that events often tie on event_at
TIMES = (T0, T0 + 0.5, T0 + 1.0)


@pytest.fixture(scope="module")
def key_database(pg_admin_url: str, template_database: str) -> Iterator[str]:
    name = create_database(pg_admin_url, template_database)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def store(key_database: str) -> Iterator[PostgresStatusStore]:
    with closing(PostgresStatusStore(key_database)) as s:
        yield s


@pytest.fixture(scope="module")
def owner(key_database: str) -> Owner:
    return create_owner(key_database)


#: an event's fields: the ordering key, and a tag (its position) in a field the row keeps, to
#: tell which event the row holds
Fields = dict[str, Any]


@st.composite
def sequences(draw: st.DrawFn) -> list[Fields]:
    """One to six events of one job; each field of the key often like the previous event's."""
    events: list[Fields] = []
    for _ in range(draw(st.integers(1, 6))):
        like = events[-1] if events else None
        key = {
            "status": st.sampled_from(list(Status)),
            "attempt": st.integers(0, 3),
            "event_at": st.sampled_from(TIMES),
            "progress": st.none() | st.sampled_from([0, 50, 100]) | st.integers(0, 100),
        }
        if like is not None:
            key = {name: st.just(like[name]) | strategy for name, strategy in key.items()}
        events.append(draw(st.fixed_dictionaries(key)))
    return events


def build(job_id: str, owner: Owner, position: int, fields: Fields) -> StatusEvent:
    return StatusEvent(
        job_id,
        fields["status"],
        fields["attempt"],
        owner,
        "a",
        "q",
        fields["event_at"],
        progress=fields["progress"],
        progress_message=f"event {position}",
        started_at=T0,
    )


def kept_by_python(events: list[StatusEvent]) -> StatusEvent:
    """What the writer's buffer keeps of a job's events, in order (a tie keeps the first)."""
    kept = events[0]
    for event in events[1:]:
        if event.supersedes(kept):
            kept = event
    return kept


def as_row(event: StatusEvent) -> dict[str, Any]:
    """The part of a row an event decides, as SQL writes it."""
    return {
        "status": event.status.value,
        "attempt": event.attempt,
        "progress": 100 if event.status is Status.COMPLETED else (event.progress or 0),
        "progress_message": event.progress_message,
        "event_at": event.event_at,
        "finished": event.status.terminal,
    }


def row_decided(conninfo: str, job_id: str) -> dict[str, Any]:
    row = fetch_rows(conninfo, [job_id])[job_id]
    return {
        "status": row["status"],
        "attempt": row["attempt"],
        "progress": row["progress"],
        "progress_message": row["progress_message"],
        "event_at": row["event_at"].timestamp(),
        "finished": row["finished_at"] is not None,
    }


def key(status: Status, attempt: int, event_at: float, progress: int | None) -> Fields:
    return {"status": status, "attempt": attempt, "event_at": event_at, "progress": progress}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=sequences())
# a terminal event beats any live one; between two terminal ones the earlier wins, then the
# smaller status; a tie keeps the first
@example(
    sequence=[
        key(Status.ACTIVE, 3, T0 + 1, 90),
        key(Status.FAILED, 1, T0 + 0.5, None),
        key(Status.COMPLETED, 1, T0 + 0.5, None),
        key(Status.CANCELLED, 1, T0 + 1, None),
    ]
)
# within an attempt the higher progress wins, not the later event; then the later of two ties
@example(
    sequence=[
        key(Status.ACTIVE, 1, T0, 60),
        key(Status.ACTIVE, 1, T0 + 1, 30),
        key(Status.ACTIVE, 1, T0 + 0.5, 60),
        key(Status.ACTIVE, 1, T0 + 0.5, 60),
    ]
)
# a retry starts from zero; pending never beats what follows it
@example(
    sequence=[
        key(Status.ACTIVE, 1, T0 + 1, 90),
        key(Status.RETRYING, 1, T0, None),
        key(Status.ACTIVE, 2, T0, 0),
        key(Status.PENDING, 0, T0 + 1, None),
    ]
)
def test_the_event_python_keeps_is_the_row_sql_keeps(
    sequence: list[Fields], store: PostgresStatusStore, owner: Owner, key_database: str
) -> None:
    batch_job, call_job = f"key-batch-{uuid.uuid4()}", f"key-calls-{uuid.uuid4()}"
    events = [build(batch_job, owner, i, fields) for i, fields in enumerate(sequence)]
    want = as_row(kept_by_python(events))

    assert not [o for o in store.apply(events) if o.rejected]
    assert row_decided(key_database, batch_job) == want

    for i, fields in enumerate(sequence):
        assert not store.apply([build(call_job, owner, i, fields)])[0].rejected
    assert row_decided(key_database, call_job) == want
