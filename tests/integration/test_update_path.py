"""public.job_status_update (the update path of PostgresStatusStore) against job_status_apply.

The update path must be invisible: for any event history, a job written through
``PostgresStatusStore(update_path=True)`` ends in the same row, with the same per-event outcomes,
as its twin written through ``update_path=False`` (everything through job_status_apply). Also
checked: the function alone against job_status_apply on random prior rows (ties included), the
routing of a mixed batch (new jobs, stale and bad events, a text only job_status_apply cleans),
the fallback when the function is missing, and concurrent writers over the same rows.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import Outcome
from middleware.stores.postgres import UPDATE_SQL, PostgresStatusStore, update_params
from tests.integration.test_state_machine import lifecycle, row_of, scrambled
from tests.support.db import create_owner, fetch_rows, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.sql]

UPDATE_SIGNATURE = (
    "public.job_status_update(text[], public.job_state[], integer[], smallint[], text[], text[], text[],"
    " text[], double precision[], double precision[], double precision[], double precision[])"
)

_owners: dict[str, Owner] = {}


def owner_of(conninfo: str) -> Owner:
    """One owner per database, made on first use (hypothesis runs many examples on one)."""
    if conninfo not in _owners:
        _owners[conninfo] = create_owner(conninfo)
    return _owners[conninfo]


#: the times below are offsets from here (an event holds only sane epoch seconds)
T0 = 1_800_000_000.0


def event(
    job_id: str, owner: Owner, status: Status, attempt: int, event_at: float, **fields: Any
) -> StatusEvent:
    for name in ("enqueued_at", "started_at", "next_retry_at"):
        if fields.get(name) is not None:
            fields[name] += T0
    return StatusEvent(job_id, status, attempt, owner, "generate_course", "q", T0 + event_at, **fields)


def corrupted(event: StatusEvent, **fields: Any) -> StatusEvent:
    """``event`` with values it could not have been built with (it bounds them): what a store
    must still reject on its own."""
    for name, value in fields.items():
        setattr(event, name, value)
    return event


def outcomes_of(outcomes: list[Outcome]) -> list[tuple[str, str | None]]:
    return [(o.outcome, o.reason) for o in outcomes]


@pytest.fixture
def tracked_url(pg_admin_url: str, database_url: str) -> str:
    """This test's database, counting calls of SQL functions in pg_stat_user_functions."""
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        # track_functions = 'pl' (the default) leaves SQL functions out; job_status_update is one
        # (never inlined: it has SET clauses). Sessions opened from now on take the setting.
        conn.execute(
            sql.SQL("alter database {} set track_functions = 'all'").format(sql.Identifier(str(dbname)))
        )
    return database_url


def calls_of(conninfo: str, function: str) -> int:
    """The calls of public.<function> in the statistics. A backend flushes its counts when it
    exits at the latest: they are complete once the stores that made the calls are closed and
    their backends gone, which ``wait_for_calls`` waits for."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "select coalesce(sum(calls), 0)::int from pg_stat_user_functions"
            " where schemaname = 'public' and funcname = %s",
            (function,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_calls(conninfo: str, function: str, expected: int) -> None:
    wait_for(
        lambda: calls_of(conninfo, function) >= expected,
        timeout=10,
        interval=0.02,
        what=f"{expected} calls of {function}",
    )
    assert calls_of(conninfo, function) == expected


# -- any history: the store with the update path against the store without ----------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scrambled())
# two progress events of one attempt in one batch, on an existing row: the fold keeps the higher
@example(case=(1, Status.COMPLETED, 2, [0, 3, 2, 1, 4], [1, 3]))
# a duplicate pending event beside the job's next events: the job goes through job_status_apply
@example(case=(1, Status.COMPLETED, 0, [0, 0, 1, 2], [1]))
def test_the_update_path_writes_any_history_as_job_status_apply_does(
    case: tuple[int, Status, int, list[int], list[int]], tracked_url: str
) -> None:
    attempts, outcome, steps, sequence, cuts = case
    owner = owner_of(tracked_url)
    fast_id, ref_id = f"upd-{uuid.uuid4()}", f"ref-{uuid.uuid4()}"
    # separate event objects per job: an event caches its encoding
    fast_events = lifecycle(owner, fast_id, attempts, outcome, steps)
    ref_events = lifecycle(owner, ref_id, attempts, outcome, steps)
    bounds = [0, *cuts, len(sequence)]
    batches = [sequence[start:end] for start, end in itertools.pairwise(bounds) if start < end]

    calls_before = calls_of(tracked_url, "job_status_update")
    fast = PostgresStatusStore(tracked_url, update_path=True)
    ref = PostgresStatusStore(tracked_url, update_path=False)
    with closing(fast), closing(ref):
        for n, batch in enumerate(batches):
            got = fast.apply([fast_events[i] for i in batch])
            want = ref.apply([ref_events[i] for i in batch])
            assert outcomes_of(got) == outcomes_of(want), f"batch {n}"
            assert row_of(tracked_url, fast_id) == row_of(tracked_url, ref_id), f"after batch {n}"
        assert fast.update_path, "the update path was switched off"

    # The update path was really taken: one job_status_update call per batch without a `pending`
    # event (update_row() takes every other event of lifecycle(); a job with an event it does not
    # take goes through job_status_apply whole), and none from the store without it. Counted by
    # the server itself, once the stores' backends are gone.
    wanted = sum(1 for batch in batches if all(ref_events[i].status is not Status.PENDING for i in batch))
    wait_for_calls(tracked_url, "job_status_update", calls_before + wanted)


# -- the function alone, on random prior rows --------------------------------------------------

# few distinct times, so that events often tie with the row on event_at
TIMES = (1_000.0, 1_000.5, 1_001.0)


def event_fields(
    statuses: list[Status], like: dict[str, Any] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """An event's fields; with ``like``, each field of the ordering key is often like's own
    (ties with the row it was written to, equal attempts and statuses within a batch)."""
    maybe_time = st.none() | st.sampled_from(TIMES)
    key = {
        "status": st.sampled_from(statuses),
        "attempt": st.integers(0, 3),
        "event_at": st.sampled_from(TIMES),
        "progress": st.none() | st.sampled_from([0, 50, 100]) | st.integers(0, 100),
    }
    if like is not None:
        key = {name: st.just(like[name]) | strategy for name, strategy in key.items()}
        key["status"] = key["status"].filter(lambda status: status in statuses)
    return st.fixed_dictionaries(
        {
            **key,
            "progress_message": st.none() | st.sampled_from(["outline", "lessons"]),
            "result": st.none() | st.sampled_from([{"modules": 2}, ["a", 1], "done", 0]),
            "error_type": st.none() | st.just("ValueError"),
            "error_message": st.none() | st.sampled_from(["boom", "bang"]),
            "next_retry_at": maybe_time,
            "enqueued_at": maybe_time,
            "started_at": maybe_time,
        }
    )


@st.composite
def prior_and_batch(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A row's event, and one to three non-pending events for it, each often like the one
    before (the first like the row's). Distinct times within the batch: two events with one
    ordering key but other fields would leave the fold's pick to the sort, on either path."""
    prior = draw(event_fields(list(Status)))
    batch: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        fields = draw(
            event_fields([s for s in Status if s is not Status.PENDING], like=(batch or [prior])[-1])
        )
        if all(fields["event_at"] != other["event_at"] for other in batch):
            batch.append(fields)
    return prior, batch


OPTIONAL_FIELDS = (
    "progress", "progress_message", "result", "error_type", "error_message", "next_retry_at",
    "enqueued_at", "started_at",
)  # fmt: skip


def fields_of(status: Status, attempt: int, event_at: float, **given: Any) -> dict[str, Any]:
    """What event_fields() draws, written out: the fields not given are absent."""
    absent = dict.fromkeys(OPTIONAL_FIELDS)
    return {"status": status, "attempt": attempt, "event_at": event_at, **absent, **given}


def from_fields(job_id: str, owner: Owner, fields: dict[str, Any]) -> StatusEvent:
    rest = dict(fields)
    return event(job_id, owner, rest.pop("status"), rest.pop("attempt"), rest.pop("event_at"), **rest)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=prior_and_batch())
# the rules hypothesis may take a while to hit, always tried: the fold keeps the highest
# progress, not the latest event; a live or terminal tie with the row is stale; a terminal row
# yields to an earlier terminal event only
@example(
    case=(
        fields_of(Status.ACTIVE, 1, 1000.0, progress=10),
        [fields_of(Status.ACTIVE, 1, 1000.5, progress=60), fields_of(Status.ACTIVE, 1, 1001.0, progress=30)],
    )
)
@example(
    case=(
        fields_of(Status.ACTIVE, 1, 1000.0, progress=50, progress_message="outline"),
        [fields_of(Status.ACTIVE, 1, 1000.0, progress=50, progress_message="lessons")],
    )
)
@example(
    case=(
        fields_of(Status.COMPLETED, 1, 1000.0, result={"modules": 1}),
        [fields_of(Status.COMPLETED, 1, 1000.0, result={"modules": 2})],
    )
)
@example(
    case=(
        fields_of(Status.FAILED, 1, 1000.5, error_message="boom"),
        [fields_of(Status.CANCELLED, 2, 1000.0), fields_of(Status.ACTIVE, 3, 1001.0)],
    )
)
def test_job_status_update_decides_as_job_status_apply_on_any_prior_row(
    case: tuple[dict[str, Any], list[dict[str, Any]]], database_url: str
) -> None:
    prior, batch = case
    owner = owner_of(database_url)
    fast_id, ref_id = f"upd-{uuid.uuid4()}", f"ref-{uuid.uuid4()}"
    with closing(PostgresStatusStore(database_url, update_path=False)) as ref:
        twins = [from_fields(fast_id, owner, prior), from_fields(ref_id, owner, prior)]
        assert outcomes_of(ref.apply(twins)) == [("applied", None)] * 2
        want = {o.outcome for o in ref.apply([from_fields(ref_id, owner, fields) for fields in batch])}
    assert want in ({"applied"}, {"stale"}), "one job: all its events are written, or none"

    rows = [from_fields(fast_id, owner, fields).update_row() for fields in batch]
    assert None not in rows
    with psycopg.connect(database_url, autocommit=True) as conn:
        answer = conn.execute(UPDATE_SQL, update_params(rows)).fetchone()  # as the store sends them
    assert answer is not None
    misses = answer[0]

    assert row_of(database_url, fast_id) == row_of(database_url, ref_id)
    assert misses == ([fast_id] if want == {"stale"} else [])


# -- routing of a mixed batch ------------------------------------------------------------------


@pytest.mark.parametrize("with_bad_progress", [False, True], ids=["update-succeeds", "update-refused"])
def test_a_mixed_batch_is_routed_and_reported_as_job_status_apply_does(
    with_bad_progress: bool, tracked_url: str
) -> None:
    owner = create_owner(tracked_url)
    kinds = ("new", "new-done", "pending", "done", "bad", "nul")

    def ids(prefix: str) -> dict[str, str]:
        return {kind: f"{prefix}-{kind}" for kind in kinds}

    def prior(job: dict[str, str]) -> list[StatusEvent]:
        return [
            event(job["pending"], owner, Status.PENDING, 0, 10.0),
            event(job["done"], owner, Status.COMPLETED, 1, 20.0, result={"ok": True}),
            event(job["bad"], owner, Status.ACTIVE, 1, 10.0, started_at=10.0, progress=10),
            event(
                job["nul"], owner, Status.ACTIVE, 1, 10.0, started_at=10.0, progress=10, progress_message="a"
            ),
        ]

    def batch(job: dict[str, str]) -> list[StatusEvent]:
        events = [
            event(job["new"], owner, Status.PENDING, 0, 30.0, enqueued_at=30.0),
            event(job["new-done"], owner, Status.COMPLETED, 1, 30.0, result={"n": 1}),
            event(job["pending"], owner, Status.COMPLETED, 1, 30.0, result={"n": 2}),
            event(job["done"], owner, Status.ACTIVE, 2, 30.0, progress=5),  # a terminal row never goes back
            corrupted(event(job["bad"], owner, Status.ACTIVE, 1, 30.0, progress=15), progress=150),
            event(job["nul"], owner, Status.ACTIVE, 1, 30.0, progress=50, progress_message="half\x00way"),
        ]
        return events if with_bad_progress else [e for e in events if e.job_id != job["bad"]]

    fast_ids, ref_ids = ids(f"upd-{uuid.uuid4()}"), ids(f"ref-{uuid.uuid4()}")
    with closing(PostgresStatusStore(tracked_url, update_path=False)) as ref:
        assert not [o for o in ref.apply([*prior(fast_ids), *prior(ref_ids)]) if o.outcome != "applied"]
        before = {kind: row_of(tracked_url, fast_ids[kind]) for kind in ("done", "bad")}
        want = ref.apply(batch(ref_ids))
    with closing(PostgresStatusStore(tracked_url, update_path=True)) as fast:
        got = fast.apply(batch(fast_ids))
        assert fast.update_path

    expected = [
        (fast_ids["new"], "applied", None),
        (fast_ids["new-done"], "applied", None),
        (fast_ids["pending"], "applied", None),
        (fast_ids["done"], "stale", None),
        (fast_ids["bad"], "rejected", "invalid_value: job_status_progress_check"),
        (fast_ids["nul"], "applied", None),
    ]
    if not with_bad_progress:
        del expected[4]
    assert [(o.job_id, o.outcome, o.reason) for o in got] == expected
    assert outcomes_of(got) == outcomes_of(want)

    rows = fetch_rows(tracked_url, list(fast_ids.values()))
    for kind in kinds:
        assert row_of(tracked_url, fast_ids[kind]) == row_of(tracked_url, ref_ids[kind]), kind
    assert rows[fast_ids["new"]]["status"] == "pending"
    assert (rows[fast_ids["new-done"]]["status"], rows[fast_ids["new-done"]]["result"]) == (
        "completed",
        {"n": 1},
    )
    assert (rows[fast_ids["pending"]]["status"], rows[fast_ids["pending"]]["result"]) == (
        "completed",
        {"n": 2},
    )
    assert row_of(tracked_url, fast_ids["done"]) == before["done"]
    assert row_of(tracked_url, fast_ids["bad"]) == before["bad"]
    # the event itself replaced the NUL when it was built (middleware.storable), on either path
    assert (rows[fast_ids["nul"]]["progress"], rows[fast_ids["nul"]]["progress_message"]) == (
        50,
        "half\ufffdway",
    )

    if not with_bad_progress:
        # one job_status_update call, and it did not fail: the NUL event, the new jobs and the
        # stale event went on to job_status_apply (setup, reference batch, the rest: 3 calls)
        wait_for_calls(tracked_url, "job_status_update", 1)
        wait_for_calls(tracked_url, "job_status_apply", 3)


# -- a database without the function -----------------------------------------------------------


def test_without_job_status_update_the_store_falls_back_to_job_status_apply(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    owner = create_owner(database_url)
    jobs = [f"old-db-{i}-{uuid.uuid4()}" for i in range(2)]
    with closing(PostgresStatusStore(database_url, update_path=False)) as ref:
        ref.apply([event(job, owner, Status.PENDING, 0, 10.0) for job in jobs])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop function {UPDATE_SIGNATURE}")

    caplog.set_level(logging.WARNING, logger="middleware.stores.postgres")
    with closing(PostgresStatusStore(database_url, update_path=True)) as store:
        first = store.apply([event(jobs[0], owner, Status.COMPLETED, 1, 20.0, result={"ok": True})])
        assert store.update_path is False
        second = store.apply([event(jobs[1], owner, Status.ACTIVE, 1, 20.0, progress=30)])

    assert outcomes_of(first) == outcomes_of(second) == [("applied", None)]
    rows = fetch_rows(database_url, jobs)
    assert (rows[jobs[0]]["status"], rows[jobs[0]]["result"]) == ("completed", {"ok": True})
    assert (rows[jobs[1]]["status"], rows[jobs[1]]["progress"]) == ("active", 30)
    warnings = [r for r in caplog.records if getattr(r, "action", None) == "sync_update_path_off"]
    assert [r.levelno for r in warnings] == [logging.WARNING], "said once, then the path stays off"


# -- concurrent writers ------------------------------------------------------------------------


def test_concurrent_writers_of_the_same_rows_do_not_deadlock(database_url: str) -> None:
    owner = create_owner(database_url)
    jobs = [f"conc-{i:02d}-{uuid.uuid4()}" for i in range(60)]
    rounds = 40
    with closing(PostgresStatusStore(database_url, update_path=False)) as setup:
        assert not [
            o for o in setup.apply([event(j, owner, Status.PENDING, 0, 10.0) for j in jobs]) if o.rejected
        ]
    barrier = threading.Barrier(2)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        order = list(jobs)
        try:
            with closing(PostgresStatusStore(database_url, update_path=True)) as store:
                for r in range(1, rounds + 1):
                    rng.shuffle(order)  # each writer its own order, each round another
                    batch = [
                        event(j, owner, Status.ACTIVE, 1, 100.0 + r + seed / 10, started_at=100.0, progress=r)
                        for j in order
                    ]
                    barrier.wait(timeout=30)  # both batches in flight together
                    # a deadlock would raise TransientStoreError (reason 'conflict') here
                    assert not [o for o in store.apply(batch) if o.rejected]
                assert store.update_path
        except BaseException:
            barrier.abort()  # do not leave the other writer waiting
            raise

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(writer, seed) for seed in (1, 2)]
        for future in futures:
            future.result()
    rows = fetch_rows(database_url, jobs)
    assert len(rows) == len(jobs)
    assert {(row["status"], row["progress"]) for row in rows.values()} == {("active", rounds)}


# -- a job goes one way whole; the identity is not looked at -----------------------------------


def test_a_pending_event_beside_an_update_of_its_job_is_reported_applied(database_url: str) -> None:
    """A job with an event the update path does not take goes through job_status_apply whole,
    which folds its events and reports every event of a job it wrote 'applied'."""
    owner = create_owner(database_url)
    answers = {}
    for update_path in (False, True):
        job = f"pend-{update_path}-{uuid.uuid4()}"
        with closing(PostgresStatusStore(database_url, update_path=update_path)) as store:
            store.apply([event(job, owner, Status.PENDING, 0, 10.0)])
            answers[update_path] = outcomes_of(
                store.apply(
                    [event(job, owner, Status.PENDING, 0, 10.0), event(job, owner, Status.ACTIVE, 1, 11.0)]
                )
            )
    assert answers[False] == [("applied", None), ("applied", None)]
    assert answers[True] == answers[False]
