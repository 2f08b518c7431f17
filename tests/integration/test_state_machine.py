"""The SQL state machine (public.job_status_write) against a real PostgreSQL.

Late, duplicated and reordered events must converge: for any permutation of a job's events,
with duplicates, split into any batches, the row ends the same as when the events arrive in
order one by one. Every test runs on both stores: PostgresStatusStore (psycopg) and
SupabaseStatusStore (the real supabase client, through the PostgREST stand-in), so the stores are
exercised too.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import StatusStore
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_database, create_owner, database_url_for, drop_database, fetch_rows
from tests.support.stores import STORE_KINDS, open_store

pytestmark = [pytest.mark.integration, pytest.mark.sql]

# Everything but the bookkeeping the database stamps itself (id, created_at, updated_at).
COMPARED = (
    "status", "attempt", "progress", "progress_message", "result", "error_type", "error_message",
    "next_retry_at", "enqueued_at", "started_at", "finished_at", "event_at", "tenant_id", "user_id",
    "actor_name", "queue_name",
)  # fmt: skip


@pytest.fixture(scope="module")
def sm_database(pg_admin_url: str, template_database: str) -> Iterator[str]:
    name = create_database(pg_admin_url, template_database)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="module", params=STORE_KINDS)
def store(request: pytest.FixtureRequest, sm_database: str) -> Iterator[StatusStore]:
    with open_store(request.param, sm_database) as s:
        yield s


@pytest.fixture(scope="module")
def owner(sm_database: str) -> Owner:
    return create_owner(sm_database)


def lifecycle(
    owner: Owner, job_id: str, attempts: int, outcome: Status, progress_steps: int
) -> list[StatusEvent]:
    """The events one job produces, in the order they happen."""
    t = 1_700_000_000.0
    enqueued = t

    def ev(status: Status, attempt: int, **fields: Any) -> StatusEvent:
        nonlocal t
        t += 0.25
        return StatusEvent(
            job_id, status, attempt, owner, "generate_course", "q", t, enqueued_at=enqueued, **fields
        )

    events = [ev(Status.PENDING, 0)]
    if outcome in (Status.SKIPPED, Status.CANCELLED) and attempts == 1 and progress_steps == 0:
        events.append(ev(outcome, 1))  # skipped or cancelled before it ever ran
        return events
    for attempt in range(1, attempts + 1):
        started = t + 0.25
        events.append(ev(Status.ACTIVE, attempt, started_at=started))
        for step in range(1, progress_steps + 1):
            events.append(
                ev(Status.ACTIVE, attempt, started_at=started, progress=step * 90 // progress_steps,
                   progress_message=f"step {step} of attempt {attempt}")
            )  # fmt: skip
        if attempt < attempts:
            events.append(
                ev(Status.RETRYING, attempt, started_at=started, error_type="ValueError",
                   error_message=f"boom {attempt}", next_retry_at=t + 5)
            )  # fmt: skip
    final_attempt = attempts
    if outcome is Status.COMPLETED:
        events.append(ev(outcome, final_attempt, started_at=started, result={"modules": final_attempt}))
    elif outcome is Status.FAILED:
        events.append(
            ev(outcome, final_attempt, started_at=started, error_type="RuntimeError", error_message="x")
        )
    else:
        events.append(ev(outcome, final_attempt))
    return events


def row_of(conninfo: str, job_id: str) -> dict[str, Any]:
    rows = fetch_rows(conninfo, [job_id])
    assert job_id in rows, f"no row for {job_id}"
    return {key: rows[job_id][key] for key in COMPARED}


@st.composite
def scrambled(draw: st.DrawFn) -> tuple[int, Status, int, list[int], list[int]]:
    attempts = draw(st.integers(1, 3))
    outcome = draw(st.sampled_from([Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.SKIPPED]))
    steps = draw(st.integers(0, 3))
    # length of lifecycle() for these parameters
    if outcome in (Status.SKIPPED, Status.CANCELLED) and attempts == 1 and steps == 0:
        n = 2
    else:
        n = 1 + attempts * (1 + steps) + (attempts - 1) + 1
    order = draw(st.permutations(range(n)))
    extra = draw(st.lists(st.integers(0, n - 1), max_size=n))
    sequence = list(order)
    for i, dup in enumerate(extra):
        sequence.insert(draw(st.integers(0, len(sequence))) if i % 2 else len(sequence), dup)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(sequence) - 1)), max_size=4, unique=True)))
    return attempts, outcome, steps, sequence, cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scrambled())
def test_any_order_with_duplicates_converges(
    case: tuple[int, Status, int, list[int], list[int]],
    store: StatusStore,
    owner: Owner,
    sm_database: str,
) -> None:
    attempts, outcome, steps, sequence, cuts = case
    ref_id, test_id = f"ref-{uuid.uuid4()}", f"scr-{uuid.uuid4()}"

    for event in lifecycle(owner, ref_id, attempts, outcome, steps):
        store.apply([event])
    expected = row_of(sm_database, ref_id)

    events = lifecycle(owner, test_id, attempts, outcome, steps)
    scrambled_events = [events[i] for i in sequence]
    bounds = [0, *cuts, len(scrambled_events)]
    for start, end in itertools.pairwise(bounds):
        if start < end:
            outcomes = store.apply(scrambled_events[start:end])
            assert not [o for o in outcomes if o.rejected]
    assert row_of(sm_database, test_id) == expected

    assert expected["status"] == outcome.value
    assert expected["finished_at"] is not None
    if outcome is Status.COMPLETED:
        assert expected["progress"] == 100
        assert expected["result"] == {"modules": attempts}
    if len(events) > 2:
        assert expected["attempt"] == attempts


def test_a_bad_event_is_rejected_alone(store: StatusStore, owner: Owner, sm_database: str) -> None:
    good = [
        StatusEvent(f"good-{i}-{uuid.uuid4()}", Status.COMPLETED, 1, owner, "a", "q", 1000.0 + i)
        for i in range(3)
    ]
    unknown_tenant = StatusEvent(
        f"bad-{uuid.uuid4()}", Status.COMPLETED, 1, Owner(str(uuid.uuid4()), owner.user_id), "a", "q", 1000.0
    )
    unknown_user = StatusEvent(
        f"bad-{uuid.uuid4()}", Status.ACTIVE, 1, Owner(owner.tenant_id, str(uuid.uuid4())), "a", "q", 1000.0
    )
    bad_progress = StatusEvent(f"bad-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", 1000.0, progress=25)
    bad_progress.progress = 250  # an event cannot be built so (it bounds its values): corrupted after

    outcomes = store.apply([good[0], unknown_tenant, good[1], unknown_user, bad_progress, good[2]])

    assert [(o.job_id, o.outcome, o.reason) for o in outcomes] == [
        (good[0].job_id, "applied", None),
        (unknown_tenant.job_id, "rejected", "unknown_tenant"),
        (good[1].job_id, "applied", None),
        (unknown_user.job_id, "rejected", "unknown_user"),
        (bad_progress.job_id, "rejected", "invalid_value: job_status_progress_check"),
        (good[2].job_id, "applied", None),
    ]
    rows = fetch_rows(sm_database, [e.job_id for e in [*good, unknown_tenant, unknown_user, bad_progress]])
    assert set(rows) == {e.job_id for e in good}
    assert {row["status"] for row in rows.values()} == {"completed"}


def test_a_terminal_row_never_goes_back(store: StatusStore, owner: Owner, sm_database: str) -> None:
    job = f"term-{uuid.uuid4()}"
    done = StatusEvent(job, Status.COMPLETED, 1, owner, "a", "q", 2000.0, result={"ok": True})
    later_noise = [
        StatusEvent(job, Status.ACTIVE, 5, owner, "a", "q", 3000.0, progress=99),
        StatusEvent(job, Status.RETRYING, 4, owner, "a", "q", 3001.0, error_message="late"),
        StatusEvent(job, Status.PENDING, 0, owner, "a", "q", 3002.0),
    ]
    assert store.apply([done])[0].outcome == "applied"
    assert [o.outcome for o in store.apply(later_noise)] == ["stale", "stale", "stale"]
    row = row_of(sm_database, job)
    assert (row["status"], row["attempt"], row["progress"], row["result"]) == (
        "completed",
        1,
        100,
        {"ok": True},
    )


def test_progress_never_moves_backwards_within_an_attempt(
    store: StatusStore, owner: Owner, sm_database: str
) -> None:
    job = f"prog-{uuid.uuid4()}"
    high = StatusEvent(job, Status.ACTIVE, 1, owner, "a", "q", 10.0, progress=70, progress_message="lessons")
    low_but_later = StatusEvent(
        job, Status.ACTIVE, 1, owner, "a", "q", 11.0, progress=30, progress_message="outline"
    )
    store.apply([high])
    store.apply([low_but_later])
    row = row_of(sm_database, job)
    assert (row["progress"], row["progress_message"]) == (70, "lessons")
    # the next attempt starts from zero again
    store.apply([StatusEvent(job, Status.ACTIVE, 2, owner, "a", "q", 12.0, progress=10)])
    assert (row_of(sm_database, job)["attempt"], row_of(sm_database, job)["progress"]) == (2, 10)


def test_malformed_batches_are_refused_as_a_whole(sm_database: str) -> None:
    with psycopg.connect(sm_database) as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute('select * from public.job_status_apply(\'{"not": "an array"}\'::jsonb)')


def test_purge_deletes_finished_rows_in_bounded_batches(database_url: str) -> None:
    owner = create_owner(database_url)
    store = PostgresStatusStore(database_url)
    try:
        forty_days_ago = time.time() - 40 * 86400
        finished = [
            StatusEvent(f"old-{i}", Status.COMPLETED, 1, owner, "a", "q", forty_days_ago + i)
            for i in range(5)
        ]
        running = StatusEvent("running", Status.ACTIVE, 1, owner, "a", "q", forty_days_ago)
        store.apply([*finished, running])
    finally:
        store.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update public.job_status set created_at = now() - interval '40 days'")
        purge = "select public.job_status_purge(interval '30 days', 2)"
        assert [conn.execute(purge).fetchone()[0] for _ in range(4)] == [2, 2, 1, 0]
        assert [r[0] for r in conn.execute("select job_id from public.job_status")] == ["running"]


# Columns a status write never changes: an index on anything else would make every write a
# non-HOT update that inserts into every index (see the hot_updates migration). Only the cancel
# functions write cancel_requested_at.
_IMMUTABLE = {
    "id", "job_id", "tenant_id", "user_id", "actor_name", "queue_name", "created_at", "cancel_requested_at"
}  # fmt: skip
# The one partial index: the stamped rows, for the cancel poller (its predicate's column counts too)
_PARTIAL = {"public.job_status_cancel_requested_idx": "(cancel_requested_at IS NOT NULL)"}


def test_no_index_covers_a_column_that_status_writes_change(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select i.indexrelid::regclass::text, a.attname, i.indexprs is not null,"
            " pg_get_expr(i.indpred, i.indrelid)"
            " from pg_index as i"
            " left join pg_attribute as a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
            " where i.indrelid = 'public.job_status'::regclass"
        ).fetchall()
    assert rows, "job_status has indexes"
    assert [(index, column) for index, column, _, _ in rows if column not in _IMMUTABLE] == []
    assert [index for index, _, expression, _ in rows if expression] == [], "no expression index"
    assert {
        "public." + index.removeprefix("public."): where for index, _, _, where in rows if where
    } == _PARTIAL


def test_a_status_write_is_a_heap_only_update(database_url: str) -> None:
    # a batch that moves every row of several pages in one transaction: each page must have room
    # for a new version of all its rows (fillfactor 50); at 70, about a third went to the indexes
    owner = create_owner(database_url)
    ids = [f"hot-{uuid.uuid4()}" for _ in range(300)]
    with psycopg.connect(database_url) as conn:
        apply_sql = "select count(*) from public.job_status_apply(%s::jsonb)"
        conn.execute(apply_sql, (_batch(ids, Status.PENDING, owner),))
        conn.commit()
        conn.execute(apply_sql, (_batch(ids, Status.ACTIVE, owner),))
        updated, hot = conn.execute(
            "select pg_stat_get_xact_tuples_updated(c), pg_stat_get_xact_tuples_hot_updated(c)"
            " from (select 'public.job_status'::regclass::oid as c) as t"
        ).fetchone()  # type: ignore[misc]
        conn.commit()
    assert (updated, hot) == (len(ids), len(ids))


def test_a_status_write_to_a_row_whose_cancellation_was_requested_is_heap_only(database_url: str) -> None:
    """The cancel poller's partial index holds the stamped rows: the stamp itself goes to the
    index, the status writes that follow (the worker stopping the job) do not."""
    owner = create_owner(database_url)
    ids = [f"hot-cancel-{uuid.uuid4()}" for _ in range(10)]  # one page, with room to spare
    apply_sql = "select count(*) from public.job_status_apply(%s::jsonb)"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(apply_sql, (_batch(ids, Status.PENDING, owner),))
        stamped = conn.execute(
            "update public.job_status set cancel_requested_at = now() where job_id = any(%s)", (ids,)
        ).rowcount
        conn.execute("vacuum public.job_status")  # the versions the stamp left behind
    assert stamped == len(ids)
    with psycopg.connect(database_url) as conn:
        conn.execute(apply_sql, (_batch(ids, Status.CANCELLED, owner),))
        updated, hot = conn.execute(
            "select pg_stat_get_xact_tuples_updated(c), pg_stat_get_xact_tuples_hot_updated(c)"
            " from (select 'public.job_status'::regclass::oid as c) as t"
        ).fetchone()  # type: ignore[misc]
        conn.commit()
    assert (updated, hot) == (len(ids), len(ids))


def test_a_row_keeps_its_id_through_every_write_and_a_new_row_gets_a_fresh_one(
    database_url: str,
) -> None:
    owner = create_owner(database_url)
    ids = [f"id-{uuid.uuid4()}" for _ in range(3)]
    select = "select job_id, id, status::text from public.job_status where job_id = any(%s)"
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_sql = "select count(*) from public.job_status_apply(%s::jsonb)"
        conn.execute(apply_sql, (_batch(ids[:2], Status.PENDING, owner),))
        first = {job_id: row_id for job_id, row_id, _ in conn.execute(select, (ids,))}
        # the two existing rows move on and the third is new, in one batch
        conn.execute(apply_sql, (_batch(ids, Status.ACTIVE, owner),))
        second = {job_id: (row_id, status) for job_id, row_id, status in conn.execute(select, (ids,))}
    assert [second[job_id][1] for job_id in ids] == ["active"] * 3
    assert {job_id: second[job_id][0] for job_id in ids[:2]} == first
    new_id = second[ids[2]][0]
    assert new_id not in first.values() and isinstance(new_id, uuid.UUID) and new_id.version == 4


def _batch(ids: list[str], status: Status, owner: Owner) -> str:
    attempt = 0 if status is Status.PENDING else 1
    events = [StatusEvent(job_id, status, attempt, owner, "a", "q", 1_800_000_000.0) for job_id in ids]
    return "[" + ",".join(event.to_json() for event in events) + "]"
