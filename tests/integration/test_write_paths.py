"""Every write path against the others: public.job_status_write holds the transition rule once,
and every way into it must come to the same rows and the same per-event outcomes.

The paths: the Postgres store (typed arrays, binary), the Supabase store (the same arrays as JSON
through the PostgREST stand-in), ``job_status_apply`` (JSON objects, turned into the arrays in
SQL), the slow path (the same batch with an event that makes its round fail, so that the function
runs it again in halves until the bad event stands alone), and one event at a time. For any
scrambled history with duplicates, split into any batches, with events that carry another
job's identity among them, each path writes its twin of the job: the rows must be equal after
every batch, and the outcomes of each batch too (but for the event-at-a-time path, whose
outcomes are per call).

Then the rules one at a time: a job's identity, sane times, batches that take several rounds,
concurrent writers, and a batch whose arrays do not line up.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import WRITE_PARAMS, Outcome, write_arrays
from middleware.stores.base import outcomes_of as store_outcomes
from middleware.stores.postgres import WRITE_SQL, PostgresStatusStore
from middleware.stores.supabase import SupabaseStatusStore
from tests.integration.test_state_machine import lifecycle, row_of, scrambled
from tests.support.db import create_database, create_owner, database_url_for, drop_database, fetch_rows
from tests.support.postgrest import STAND_IN_URL, PostgrestStandIn, service_key, supabase_client

pytestmark = [pytest.mark.integration, pytest.mark.sql]

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def paths_database(pg_admin_url: str, template_database: str) -> Iterator[str]:
    name = create_database(pg_admin_url, template_database)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


class Paths:
    """The ways into job_status_write, on one database."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.store = PostgresStatusStore(conninfo)
        self.stand_in = PostgrestStandIn(conninfo)
        self.http = httpx.Client(transport=self.stand_in)
        self.supabase = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=self.http)
        self.conn = psycopg.connect(conninfo, autocommit=True)

    def apply(self, events: list[StatusEvent]) -> list[Outcome]:
        """Through job_status_apply, as JSON objects."""
        rows = self.conn.execute(
            "select job_id, outcome, reason from public.job_status_apply(%s::jsonb)",
            ("[" + ",".join(event.to_json() for event in events) + "]",),
        ).fetchall()
        return [Outcome(*row) for row in rows]

    def by(self, kind: str) -> Any:
        """The ``apply`` of a path by name: store, supabase or apply."""
        return {"store": self.store.apply, "supabase": self.supabase.apply, "apply": self.apply}[kind]

    def close(self) -> None:
        self.store.close()
        self.supabase.close()
        self.http.close()
        self.stand_in.close()
        self.conn.close()


@pytest.fixture(scope="module")
def paths(paths_database: str) -> Iterator[Paths]:
    with closing(Paths(paths_database)) as p:
        yield p


@pytest.fixture(scope="module")
def owners(paths_database: str) -> tuple[Owner, Owner]:
    return create_owner(paths_database), create_owner(paths_database, tenant_name="Globex")


def outcomes_of(outcomes: list[Outcome]) -> list[tuple[str, str | None]]:
    return [(o.outcome, o.reason) for o in outcomes]


def with_identity(event: StatusEvent, job_id: str, owner: Owner, actor: str, queue: str) -> StatusEvent:
    """A copy of ``event`` for the job ``job_id`` with this identity."""
    return StatusEvent(
        job_id, event.status, event.attempt, owner, actor, queue, event.event_at,
        enqueued_at=event.enqueued_at, started_at=event.started_at, progress=event.progress,
        progress_message=event.progress_message, result=event.result, error_type=event.error_type,
        error_message=event.error_message, next_retry_at=event.next_retry_at,
    )  # fmt: skip


def identity_of(event: StatusEvent) -> tuple[str, str, str, str]:
    return (event.tenant_id, event.user_id, event.actor_name, event.queue_name)


def rows_of(conninfo: str, job_ids: list[str]) -> list[dict[str, Any]]:
    return [row_of(conninfo, job_id) for job_id in job_ids]


# -- any history, every path -----------------------------------------------------------------

#: what a meddled event carries instead of its job's identity
MEDDLES = ("tenant", "user", "actor", "queue")


@st.composite
def meddled(draw: st.DrawFn) -> tuple[tuple[int, int, str], ...]:
    """Events of the history made another job's: (position in the sequence, copies, field)."""
    return tuple(
        draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 1), st.sampled_from(MEDDLES)), max_size=3))
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scrambled(), meddling=meddled(), poison_at=st.integers(0, 40))
# another tenant's event first: it makes the row, and the job's own events are rejected
@example(case=(1, Status.COMPLETED, 1, [0, 1, 2, 3], []), meddling=((0, 0, "tenant"),), poison_at=0)
# another actor's event beside the job's own, in one batch and in the next
@example(case=(2, Status.FAILED, 0, [0, 1, 2, 3, 4], [2]), meddling=((1, 1, "actor"), (4, 0, "queue")),
         poison_at=3)  # fmt: skip
# two events of one job in one batch, the first stale: the batch takes three rounds
@example(case=(1, Status.COMPLETED, 2, [0, 2, 1, 3, 4, 1], [4]), meddling=(), poison_at=5)
def test_every_write_path_writes_any_history_alike(
    case: tuple[int, Status, int, list[int], list[int]],
    meddling: tuple[tuple[int, int, str], ...],
    poison_at: int,
    paths: Paths,
    owners: tuple[Owner, Owner],
) -> None:
    attempts, outcome, steps, sequence, cuts = case
    owner, other = owners
    kinds = ("store", "supabase", "apply", "slow", "one")
    ids = {kind: f"{kind}-{uuid.uuid4()}" for kind in kinds}
    events = {kind: lifecycle(owner, ids[kind], attempts, outcome, steps) for kind in kinds}

    def meddle(kind: str, event: StatusEvent, field: str) -> StatusEvent:
        identity = {"tenant": other, "user": Owner(owner.tenant_id, other.user_id)}.get(field, owner)
        actor = "other_actor" if field == "actor" else event.actor_name
        queue = "other_queue" if field == "queue" else event.queue_name
        return with_identity(event, ids[kind], identity, actor, queue)

    history = {kind: [events[kind][i] for i in sequence] for kind in kinds}
    for position, copies, field in meddling:  # in place of an event, or beside it
        at = position % len(sequence)
        for kind in kinds:
            meddler = meddle(kind, history[kind][at], field)
            if copies:
                history[kind].insert(at, meddler)
            else:
                history[kind][at] = meddler
    bounds = [0, *[c for c in cuts if c < len(history["store"])], len(history["store"])]
    batches = [(start, end) for start, end in itertools.pairwise(bounds) if start < end]
    unknown = Owner(str(uuid.uuid4()), owner.user_id)

    for n, (start, end) in enumerate(batches):
        got = {}
        got["store"] = paths.store.apply(history["store"][start:end])
        got["supabase"] = paths.supabase.apply(history["supabase"][start:end])
        got["apply"] = paths.apply(history["apply"][start:end])
        # an event of a job whose tenant does not exist: its insert fails the round
        slow = list(history["slow"][start:end])
        at = poison_at % (len(slow) + 1)
        slow.insert(at, StatusEvent(f"poison-{uuid.uuid4()}", Status.PENDING, 0, unknown, "a", "q", T0))
        outcomes = paths.store.apply(slow)
        assert outcomes_of([outcomes.pop(at)]) == [("rejected", "unknown_tenant")], f"batch {n}"
        got["slow"] = outcomes
        for event in history["one"][start:end]:
            paths.store.apply([event])

        want = outcomes_of(got["store"])
        # the job's first event made its row: an event of another identity is rejected, and
        # only such an event
        for event, (kept, why) in zip(history["store"][start:end], want, strict=True):
            mismatch = identity_of(event) != identity_of(history["store"][0])
            assert (kept == "rejected") == mismatch and (not mismatch or why == "identity_mismatch")
        for kind in ("supabase", "apply", "slow"):
            assert outcomes_of(got[kind]) == want, f"{kind}, batch {n}"
        rows = rows_of(paths.conninfo, [ids[kind] for kind in kinds])
        assert all(row == rows[0] for row in rows[1:]), f"batch {n}: {rows}"

    # without meddling, every path ends where the job ended
    if not meddling:
        assert rows[0]["status"] == outcome.value


# -- a job's identity ------------------------------------------------------------------------


@pytest.mark.parametrize("field", MEDDLES)
def test_an_event_of_another_identity_is_rejected_on_every_path(
    field: str, paths: Paths, owners: tuple[Owner, Owner]
) -> None:
    owner, other = owners
    answers, rows = {}, {}
    for kind in ("store", "supabase", "apply"):
        job = f"ident-{kind}-{uuid.uuid4()}"
        first = StatusEvent(job, Status.ACTIVE, 1, owner, "generate_course", "q", T0, progress=10)
        assert outcomes_of(paths.store.apply([first])) == [("applied", None)]
        before = row_of(paths.conninfo, job)
        forged = with_identity(
            StatusEvent(job, Status.COMPLETED, 1, owner, "generate_course", "q", T0 + 1, result={"x": 1}),
            job,
            {"tenant": other, "user": Owner(owner.tenant_id, other.user_id)}.get(field, owner),
            "other_actor" if field == "actor" else "generate_course",
            "other_queue" if field == "queue" else "q",
        )
        # a newer event of the job itself beside it still lands
        own = StatusEvent(job, Status.ACTIVE, 1, owner, "generate_course", "q", T0 + 2, progress=20)
        answers[kind] = outcomes_of(paths.by(kind)([forged, own]))
        after = row_of(paths.conninfo, job)
        assert (after["status"], after["progress"]) == ("active", 20)
        assert {key: after[key] for key in ("tenant_id", "user_id", "actor_name", "queue_name")} == {
            key: before[key] for key in ("tenant_id", "user_id", "actor_name", "queue_name")
        }
        rows[kind] = after
    assert answers["store"] == [("rejected", "identity_mismatch"), ("applied", None)]
    assert answers["supabase"] == answers["apply"] == answers["store"]


def test_a_new_jobs_first_event_sets_its_identity(paths: Paths, owners: tuple[Owner, Owner]) -> None:
    owner, other = owners
    job = f"first-{uuid.uuid4()}"
    events = [
        StatusEvent(job, Status.PENDING, 0, owner, "a", "q", T0),
        StatusEvent(job, Status.ACTIVE, 1, other, "a", "q", T0 + 1),
        StatusEvent(job, Status.ACTIVE, 1, owner, "a", "q", T0 + 2, progress=5),
    ]
    assert outcomes_of(paths.store.apply(events)) == [
        ("applied", None),
        ("rejected", "identity_mismatch"),
        ("applied", None),
    ]
    row = row_of(paths.conninfo, job)
    assert (row["tenant_id"], row["status"], row["progress"]) == (owner.tenant_id, "active", 5)


# -- sane times ------------------------------------------------------------------------------

TIME_FIELDS = ("event_ats", "enqueued_ats", "started_ats", "next_retry_ats")
BAD_TIMES = {
    "nan": math.nan,
    "infinity": math.inf,
    "-infinity": -math.inf,
    "1970": 1000.0,
    "2300": 10_500_000_000.0,
    "milliseconds": T0 * 1000,
}


def arrays_of(events: list[StatusEvent]) -> dict[str, list[Any] | None]:
    return dict(zip((name for name, _attribute in WRITE_PARAMS), write_arrays(events), strict=True))


def write_through(path: str, paths: Paths, arrays: dict[str, list[Any] | None]) -> Any:
    """job_status_write's answer for these arrays, sent as the Postgres store sends them (typed,
    binary) or as the Supabase store does (JSON through PostgREST)."""
    if path == "postgrest":
        sent = {name: array for name, array in arrays.items() if array is not None}
        return supabase_client(paths.http, service_key()).rpc("job_status_write", sent).execute().data
    binary = dict(arrays)
    for name in ("tenant_ids", "user_ids"):
        binary[name] = [uuid.UUID(text) for text in binary[name] or []]
    row = paths.conn.execute(WRITE_SQL, list(binary.values())).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("field", TIME_FIELDS)
@pytest.mark.parametrize("bad", sorted(BAD_TIMES))
def test_a_time_that_is_not_sane_is_rejected_on_every_path(
    field: str, bad: str, paths: Paths, owners: tuple[Owner, Owner]
) -> None:
    """Not finite, or outside 2000-01-01 .. 2200-01-01: rejected with the field's name, on the
    typed arrays (binary floats), through PostgREST (JSON arrays, where a non-finite float
    travels as the string PostgreSQL reads as one) and through job_status_apply (JSON objects);
    the rest of the batch lands, and a stale event with a bad time is rejected too. (A store
    cannot send one: an event makes its times sane when it is built.)"""
    owner, _other = owners
    name = field.removesuffix("s")
    value = BAD_TIMES[bad]
    as_json: Any = (
        value if math.isfinite(value) else {"nan": "NaN", "infinity": "Infinity"}.get(bad, "-Infinity")
    )
    for path in ("arrays", "postgrest", "apply"):
        job, good, done = (f"{kind}-{uuid.uuid4()}" for kind in ("time", "good", "done"))
        assert outcomes_of(
            paths.store.apply([StatusEvent(done, Status.COMPLETED, 1, owner, "a", "q", T0)])
        ) == [("applied", None)]
        times = {"enqueued_at": T0, "started_at": T0, "next_retry_at": T0}
        events = [
            StatusEvent(job, Status.ACTIVE, 1, owner, "a", "q", T0, **times),
            StatusEvent(good, Status.ACTIVE, 1, owner, "a", "q", T0),
            StatusEvent(done, Status.ACTIVE, 2, owner, "a", "q", T0, **times),  # stale: the job is done
        ]
        if path == "apply":
            docs = [json.loads(event.to_json()) for event in events]
            for doc in (docs[0], docs[2]):
                doc[name] = as_json
            rows = paths.conn.execute(
                "select outcome, reason from public.job_status_apply(%s::jsonb)", (json.dumps(docs),)
            ).fetchall()
            got = [tuple(row) for row in rows]
        else:
            arrays = arrays_of(events)
            column = list(arrays[field] or [None] * 3)
            column[0] = column[2] = value if path == "arrays" else as_json
            arrays[field] = column
            got = outcomes_of(store_outcomes(write_through(path, paths, arrays), events))
        reason = f"invalid_time: {name}"
        assert got == [("rejected", reason), ("applied", None), ("rejected", reason)], path
        rows_now = fetch_rows(paths.conninfo, [job, good, done])
        assert job not in rows_now and rows_now[good]["status"] == "active", path
        assert rows_now[done]["status"] == "completed", path


def test_the_table_refuses_a_time_outside_the_sane_range(
    paths_database: str, owners: tuple[Owner, Owner]
) -> None:
    owner, _other = owners
    job = f"constraint-{uuid.uuid4()}"
    insert = (
        "insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status, event_at)"
        " values (%s, %s, %s, 'a', 'q', 'pending', %s)"
    )
    with psycopg.connect(paths_database, autocommit=True) as conn:
        for at in ("-infinity", "infinity", "1999-12-31 23:59:59.999999+00", "2200-01-01 00:00:00.000001+00"):
            with pytest.raises(psycopg.errors.CheckViolation) as caught:
                conn.execute(insert, (f"{job}-{at}", owner.tenant_id, owner.user_id, at))
            assert caught.value.diag.constraint_name == "job_status_times_check"
        for at in ("2000-01-01 00:00:00+00", "2200-01-01 00:00:00+00"):  # the bounds are sane
            conn.execute(insert, (f"{job}-{at}", owner.tenant_id, owner.user_id, at))
        for column in ("enqueued_at", "started_at", "next_retry_at", "finished_at"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(
                    f"update public.job_status set {column} = '-infinity' where job_id = %s",
                    (f"{job}-2000-01-01 00:00:00+00",),
                )


# -- batches that take more than one round ---------------------------------------------------


def test_a_mixed_batch_gets_an_answer_for_every_event(paths: Paths, owners: tuple[Owner, Owner]) -> None:
    """New jobs, a pending event of a job that has moved on, a terminal row that never goes
    back, a job whose tenant does not exist (its round fails and is run again in halves), a job
    with a stale event before a newer one (three rounds): one call, an outcome for each."""
    owner, other = owners
    job = {kind: f"mixed-{kind}-{uuid.uuid4()}" for kind in ("new", "new2", "moved", "done", "ghost", "two")}
    assert {
        o.outcome
        for o in paths.store.apply(
            [
                StatusEvent(job["moved"], Status.ACTIVE, 1, owner, "a", "q", T0 + 10),
                StatusEvent(job["done"], Status.COMPLETED, 1, owner, "a", "q", T0 + 10, result={"ok": True}),
                StatusEvent(job["two"], Status.ACTIVE, 1, owner, "a", "q", T0 + 10, progress=40),
            ]
        )
    } == {"applied"}
    batch = [
        StatusEvent(job["new"], Status.PENDING, 0, owner, "a", "q", T0 + 20, enqueued_at=T0 + 20),
        StatusEvent(job["moved"], Status.PENDING, 0, owner, "a", "q", T0),
        StatusEvent(job["done"], Status.ACTIVE, 2, owner, "a", "q", T0 + 20, progress=5),
        StatusEvent(job["ghost"], Status.PENDING, 0, Owner(str(uuid.uuid4()), owner.user_id), "a", "q", T0),
        StatusEvent(job["two"], Status.ACTIVE, 1, owner, "a", "q", T0 + 15, progress=30),  # stale
        StatusEvent(job["new2"], Status.COMPLETED, 1, other, "a", "q", T0 + 20, result={"n": 2}),
        StatusEvent(job["two"], Status.ACTIVE, 1, owner, "a", "q", T0 + 20, progress=60),  # newer
    ]
    want = [
        ("applied", None),
        ("stale", None),
        ("stale", None),
        ("rejected", "unknown_tenant"),
        ("applied", None),  # its job was written by the call: outcomes are per job
        ("applied", None),
        ("applied", None),
    ]
    for kind in ("store", "supabase", "apply"):
        twins = {job_id: f"{job_id}-{kind}" for job_id in job.values()}
        if kind != "store":  # the same prior rows for the twins
            paths.store.apply(
                [
                    StatusEvent(twins[job["moved"]], Status.ACTIVE, 1, owner, "a", "q", T0 + 10),
                    StatusEvent(
                        twins[job["done"]], Status.COMPLETED, 1, owner, "a", "q", T0 + 10, result={"ok": True}
                    ),
                    StatusEvent(twins[job["two"]], Status.ACTIVE, 1, owner, "a", "q", T0 + 10, progress=40),
                ]
            )
            events = [
                with_identity(e, twins[e.job_id], Owner(e.tenant_id, e.user_id), e.actor_name, e.queue_name)
                for e in batch
            ]
        else:
            events = batch
        assert outcomes_of(paths.by(kind)(events)) == want, kind
    rows = fetch_rows(paths.conninfo, list(job.values()))
    assert job["ghost"] not in rows
    assert (rows[job["new"]]["status"], rows[job["new2"]]["status"]) == ("pending", "completed")
    assert (rows[job["moved"]]["status"], rows[job["done"]]["status"]) == ("active", "completed")
    assert (rows[job["two"]]["status"], rows[job["two"]]["progress"]) == ("active", 60)


def test_a_value_the_table_refuses_is_rejected_alone(paths: Paths, owners: tuple[Owner, Owner]) -> None:
    """What a store cannot send (an event bounds its progress) but another caller can: the
    table's constraint decides, in the slow path, with the constraint's name."""
    owner, _other = owners
    events = [
        StatusEvent(f"value-{i}-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", T0) for i in range(5)
    ]
    arrays = arrays_of(events)
    arrays["progresses"] = [10, 150, 20, -1, 30]
    answer = write_through("arrays", paths, arrays)
    assert answer == {
        "events": 5,
        "applied": 3,
        "stale": [],
        "rejected": [
            [2, "invalid_value: job_status_progress_check"],
            [4, "invalid_value: job_status_progress_check"],
        ],
    }
    rows = fetch_rows(paths.conninfo, [e.job_id for e in events])
    assert sorted(row["progress"] for row in rows.values()) == [10, 20, 30]


def test_arrays_of_different_lengths_are_refused_as_a_whole(
    paths: Paths, owners: tuple[Owner, Owner]
) -> None:
    owner, _other = owners
    arrays = arrays_of([StatusEvent(f"len-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", T0)])
    arrays["progresses"] = [1, 2]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        write_through("arrays", paths, arrays)
    empty = {name: [] for name, _attribute in WRITE_PARAMS[:8]}
    assert paths.conn.execute(
        "select public.job_status_write(%s, %s, %s, %s, %s, %s, %s, %s)", list(empty.values())
    ).fetchone() == ({"events": 0, "applied": 0, "stale": [], "rejected": []},)


# -- concurrent writers ----------------------------------------------------------------------


def test_concurrent_writers_of_the_same_rows_do_not_deadlock(
    paths_database: str, owners: tuple[Owner, Owner]
) -> None:
    owner, _other = owners
    jobs = [f"conc-{i:02d}-{uuid.uuid4()}" for i in range(60)]
    rounds = 40
    with closing(PostgresStatusStore(paths_database)) as setup:
        assert not [
            o
            for o in setup.apply([StatusEvent(j, Status.PENDING, 0, owner, "a", "q", T0) for j in jobs])
            if o.rejected
        ]
    barrier = threading.Barrier(2)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        order = list(jobs)
        try:
            with closing(PostgresStatusStore(paths_database)) as store:
                for r in range(1, rounds + 1):
                    rng.shuffle(order)  # each writer its own order, each round another
                    batch = [
                        StatusEvent(
                            j,
                            Status.ACTIVE,
                            1,
                            owner,
                            "a",
                            "q",
                            T0 + r + seed / 10,
                            started_at=T0,
                            progress=r,
                        )
                        for j in order
                    ]
                    barrier.wait(timeout=30)  # both batches in flight together
                    # a deadlock would raise TransientStoreError (reason 'conflict') here
                    assert not [o for o in store.apply(batch) if o.rejected]
        except BaseException:
            barrier.abort()  # do not leave the other writer waiting
            raise

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(writer, seed) for seed in (1, 2)]:
            future.result()
    rows = fetch_rows(paths_database, jobs)
    assert {(row["status"], row["progress"]) for row in rows.values()} == {("active", rounds)}


def test_writers_racing_to_create_the_same_jobs_all_get_answers(
    paths_database: str, owners: tuple[Owner, Owner]
) -> None:
    """Two writers insert the same new jobs at once, each with its own event: the one whose
    insert loses runs its event again against the row the other made (the function's round for
    a job's first event that wrote nothing), so every event is applied or stale, none lost."""
    owner, _other = owners
    barrier = threading.Barrier(2)

    def writer(seed: int, jobs: list[str]) -> list[Outcome]:
        status, at = (Status.PENDING, T0) if seed == 1 else (Status.ACTIVE, T0 + 1)
        batch = [StatusEvent(j, status, seed - 1, owner, "a", "q", at) for j in jobs]
        random.Random(seed).shuffle(batch)
        with closing(PostgresStatusStore(paths_database)) as store:
            store.prepare()
            barrier.wait(timeout=30)
            outcomes = store.apply(batch)
        by_job = {event.job_id: outcome for event, outcome in zip(batch, outcomes, strict=True)}
        return [by_job[j] for j in jobs]

    for attempt in range(5):
        jobs = [f"race-{attempt}-{i:02d}-{uuid.uuid4()}" for i in range(80)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending, active = (f.result() for f in [pool.submit(writer, seed, jobs) for seed in (1, 2)])
        assert {o.outcome for o in active} == {"applied"}, "the newer event lands, whoever inserted"
        assert {o.outcome for o in pending} <= {"applied", "stale"}
        rows = fetch_rows(paths_database, jobs)
        assert {row["status"] for row in rows.values()} == {"active"} and len(rows) == len(jobs)
