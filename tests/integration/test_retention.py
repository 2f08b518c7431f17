"""Retention (migration 20261205120000): unfinished rows without news expire as ``failed``
(Expired) through the one write rule, finished rows are purged and leave tombstones, and a late
event for a purged job never brings it back, on both stores (psycopg, and the real supabase
client through the PostgREST stand-in). The purge's deletes are not broadcast; the expiry's
updates are.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
import redis

from coursegen import retention
from coursegen.migrate import migrations_dir
from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox
from middleware.stores.base import StatusStore
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import BIN, app_env
from tests.support.stores import STORE_KINDS, open_store

pytestmark = [pytest.mark.integration, pytest.mark.sql]

DAY = 86_400.0
ACTOR, QUEUE = "generate_course", "course-generation"


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, database_url: str) -> Iterator[StatusStore]:
    with open_store(store_kind, database_url) as s:
        yield s


@pytest.fixture
def owner(database_url: str) -> Owner:
    return create_owner(database_url)


def event(
    owner: Owner, job_id: str, status: Status, at: float, attempt: int = 1, **fields: Any
) -> StatusEvent:
    return StatusEvent(job_id, status, attempt, owner, ACTOR, QUEUE, at, **fields)


def new_job() -> str:
    return str(uuid.uuid4())


def age(conninfo: str, job_ids: list[str], *, days: float) -> None:
    """Make rows look ``days`` old: created and last written then (what the horizons read)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - make_interval(secs => %s),"
            " updated_at = now() - make_interval(secs => %s) where job_id = any(%s)",
            (days * DAY, days * DAY, job_ids),
        )


def sql(conninfo: str, statement: str, *args: Any) -> Any:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(statement, args).fetchone()[0]  # type: ignore[index]


def outcomes(store: StatusStore, events: list[StatusEvent]) -> list[str]:
    return [o.outcome for o in store.apply(events)]


def tombstones(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        return {row[0] for row in conn.execute("select job_id from public.job_status_tombstones")}


# -- expiry ------------------------------------------------------------------------------------


def test_an_unfinished_row_without_news_ends_failed_as_expired(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    now = time.time()
    quiet_active, quiet_pending, busy, done = new_job(), new_job(), new_job(), new_job()
    assert outcomes(
        store,
        [
            event(owner, quiet_active, Status.ACTIVE, now - 9 * DAY, started_at=now - 9 * DAY,
                  enqueued_at=now - 10 * DAY, progress=40, progress_message="outline: 3 modules"),
            event(owner, quiet_pending, Status.PENDING, now - 9 * DAY, attempt=0),
            event(owner, busy, Status.ACTIVE, now - 9 * DAY, progress=10),
            event(owner, done, Status.COMPLETED, now - 9 * DAY, result={"ok": True}),
        ],
    ) == ["applied"] * 4  # fmt: skip
    age(database_url, [quiet_active, quiet_pending, busy, done], days=9)
    store.apply([event(owner, busy, Status.ACTIVE, now, progress=20)])  # news today

    assert sql(database_url, "select public.job_status_expire(interval '7 days')") == 2

    rows = fetch_rows(database_url)
    for job_id in (quiet_active, quiet_pending):
        row = rows[job_id]
        assert (row["status"], row["error_type"], row["error_message"]) == (
            "failed", "Expired", "expired: no news for 7 days",
        )  # fmt: skip
        # the verdict happened now: it is the row's time and its end
        assert row["event_at"] == row["finished_at"]
        assert abs(row["event_at"].timestamp() - time.time()) < 60
    # what the row showed stays: progress, its message, when it started and was enqueued
    active = rows[quiet_active]
    assert (active["progress"], active["progress_message"], active["attempt"]) == (
        40,
        "outline: 3 modules",
        1,
    )
    assert active["started_at"].timestamp() == pytest.approx(now - 9 * DAY, abs=1e-3)
    assert active["enqueued_at"].timestamp() == pytest.approx(now - 10 * DAY, abs=1e-3)
    assert (rows[busy]["status"], rows[busy]["progress"]) == ("active", 20)
    assert (rows[done]["status"], rows[done]["error_type"]) == ("completed", None)
    # nothing left to expire
    assert sql(database_url, "select public.job_status_expire(interval '7 days')") == 0


def test_the_expiry_goes_in_bounded_batches_oldest_first(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    now = time.time()
    jobs = [new_job() for _ in range(5)]
    store.apply([event(owner, job_id, Status.ACTIVE, now - 20 * DAY) for job_id in jobs])
    for days, job_id in enumerate(jobs, start=10):
        age(database_url, [job_id], days=days)
    assert sql(database_url, "select public.job_status_expire(interval '7 days', 2)") == 2
    rows = fetch_rows(database_url)
    assert {j for j in jobs if rows[j]["status"] == "failed"} == set(jobs[-2:]), "the oldest first"
    assert [sql(database_url, "select public.job_status_expire(interval '7 days', 2)") for _ in range(3)] == [
        2,
        1,
        0,
    ]


def test_an_expiry_horizon_must_be_positive(database_url: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        sql(database_url, "select public.job_status_expire(interval '0')")


@pytest.mark.parametrize(
    ("real_outcome_at", "kept"),
    [(-DAY, "the real outcome: it happened before the expiry"), (+60.0, "the expiry: it came first")],
)
def test_a_real_outcome_after_an_expiry(
    database_url: str, store: StatusStore, owner: Owner, real_outcome_at: float, kept: str
) -> None:
    """The expiry is an outcome at the time it is decided (now()): an earlier real outcome,
    delivered late (an outbox after an outage), replaces it; a later one is stale."""
    now = time.time()
    job_id = new_job()
    store.apply([event(owner, job_id, Status.ACTIVE, now - 9 * DAY, progress=50)])
    age(database_url, [job_id], days=9)
    assert sql(database_url, "select public.job_status_expire(interval '7 days')") == 1
    expired_at = fetch_rows(database_url, [job_id])[job_id]["event_at"].timestamp()

    late_active = event(owner, job_id, Status.ACTIVE, expired_at + 1, attempt=2, progress=90)
    assert outcomes(store, [late_active]) == ["stale"], "a finished row takes no live news"
    completed = event(owner, job_id, Status.COMPLETED, expired_at + real_outcome_at, result={"modules": 3})
    row_before = fetch_rows(database_url, [job_id])[job_id]
    [outcome] = outcomes(store, [completed])

    row = fetch_rows(database_url, [job_id])[job_id]
    if real_outcome_at < 0:
        assert outcome == "applied", kept
        assert (row["status"], row["result"], row["error_type"], row["progress"]) == (
            "completed", {"modules": 3}, None, 100,
        )  # fmt: skip
    else:
        assert outcome == "stale", kept
        assert row == row_before
        assert (row["status"], row["error_type"]) == ("failed", "Expired")


# -- purge and tombstones ----------------------------------------------------------------------


def finished_long_ago(database_url: str, store: StatusStore, owner: Owner, days: float = 40) -> str:
    job_id = new_job()
    at = time.time() - days * DAY
    assert outcomes(store, [event(owner, job_id, Status.COMPLETED, at, result={"modules": 1})]) == ["applied"]
    age(database_url, [job_id], days=days)
    return job_id


LATE_EVENTS = [
    # what a late producer, worker or outbox may still send for a job
    (Status.PENDING, 0, {}),
    (Status.ACTIVE, 1, {"progress": 10}),
    (Status.RETRYING, 1, {"error_type": "ValueError", "error_message": "again"}),
    (Status.COMPLETED, 1, {"result": {"modules": 2}}),
    (Status.FAILED, 2, {"error_type": "RuntimeError", "error_message": "late"}),
]


def test_a_purged_job_never_comes_back(database_url: str, store: StatusStore, owner: Owner) -> None:
    purged = finished_long_ago(database_url, store, owner)
    assert sql(database_url, "select public.job_status_purge(interval '30 days')") == 1
    assert purged not in fetch_rows(database_url)
    assert tombstones(database_url) == {purged}

    now = time.time()
    for status, attempt, fields in LATE_EVENTS:
        # alone, at any time (before the purge, after it), and beside other jobs' events
        for at in (now - 50 * DAY, now, now + 60):
            assert outcomes(store, [event(owner, purged, status, at, attempt, **fields)]) == ["stale"], status
        fresh = new_job()
        mixed = [
            event(owner, fresh, Status.PENDING, now, 0),
            event(owner, purged, status, now, attempt, **fields),
            event(owner, fresh, Status.ACTIVE, now + 1),
        ]
        assert outcomes(store, mixed) == ["applied", "stale", "applied"], status
    # every late event of a batch, in one call, is stale too
    batch = [
        event(owner, purged, status, now + i, attempt, **fields)
        for i, (status, attempt, fields) in enumerate(LATE_EVENTS)
    ]
    assert outcomes(store, batch) == ["stale"] * len(LATE_EVENTS)
    assert purged not in fetch_rows(database_url)


@pytest.mark.parametrize(
    "late",
    [
        pytest.param("active", id="live news: the rule refuses it against the row it still sees"),
        pytest.param(
            "earlier-failure", id="an earlier outcome: the rule takes it, and waits for the row's lock"
        ),
    ],
)
def test_a_write_racing_the_purge_does_not_bring_the_job_back(
    database_url: str, store: StatusStore, owner: Owner, late: str
) -> None:
    """The write starts while the purge that deletes its row is not committed: its snapshot
    holds the row and not the tombstone. It must not insert the job when the row is gone."""
    purged = finished_long_ago(database_url, store, owner)
    finished_at = time.time() - 40 * DAY
    if late == "active":
        late_event = event(owner, purged, Status.ACTIVE, time.time(), attempt=2, progress=5)
    else:
        late_event = event(owner, purged, Status.FAILED, finished_at - 60, error_type="E", error_message="x")
    result: dict[str, Any] = {}

    with psycopg.connect(database_url) as purger:  # one transaction, open until commit()
        assert purger.execute("select public.job_status_purge(interval '30 days')").fetchone() == (1,)
        purger_pid = purger.info.backend_pid

        def write() -> None:
            try:
                result["outcomes"] = outcomes(store, [late_event])
            except BaseException as exc:  # the test's thread reports it below
                result["error"] = exc

        writer = threading.Thread(target=write)
        writer.start()

        def writer_waits_or_is_done() -> bool:
            if not writer.is_alive():
                return True
            with psycopg.connect(database_url, autocommit=True) as conn:
                return bool(
                    conn.execute(
                        "select exists (select from pg_stat_activity where datname = current_database()"
                        " and pid <> %s and wait_event_type = 'Lock')",
                        (purger_pid,),
                    ).fetchone()[0]  # type: ignore[index]
                )

        wait_for(writer_waits_or_is_done, timeout=30, what="the write to block on the purge or finish")
        purger.commit()
        writer.join(timeout=30)
    assert not writer.is_alive()
    assert "error" not in result, result
    assert result["outcomes"] == ["stale"]
    assert purged not in fetch_rows(database_url)
    assert tombstones(database_url) == {purged}


def test_tombstones_go_after_their_time_and_nothing_stays_forever(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    kept, old = finished_long_ago(database_url, store, owner), finished_long_ago(database_url, store, owner)
    assert sql(database_url, "select public.job_status_purge(interval '30 days')") == 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update public.job_status_tombstones set purged_at = now() - interval '31 days'"
            " where job_id = %s",
            (old,),
        )
    assert sql(database_url, "select public.job_status_purge_tombstones(interval '30 days')") == 1
    assert tombstones(database_url) == {kept}

    # past its tombstone, a late event makes a row again (see the migration): a live one
    # expires in its turn, and is purged like any finished row
    now = time.time()
    assert outcomes(store, [event(owner, old, Status.ACTIVE, now - 9 * DAY)]) == ["applied"]
    assert outcomes(store, [event(owner, kept, Status.ACTIVE, now)]) == ["stale"]
    age(database_url, [old], days=9)
    assert sql(database_url, "select public.job_status_expire(interval '7 days')") == 1
    assert sql(database_url, "select public.job_status_purge(interval '0')") == 1
    assert old not in fetch_rows(database_url)


def test_a_purged_jobs_late_events_fill_no_dead_letters(
    database_url: str, store_kind: str, owner: Owner, redis_url: str
) -> None:
    """What the writer does with a stale answer: nothing to repair, nothing to bury."""
    with open_store(store_kind, database_url) as setup:
        purged = finished_long_ago(database_url, setup, owner)
    assert sql(database_url, "select public.job_status_purge(interval '30 days')") == 1
    client = redis.Redis.from_url(redis_url)
    outbox = RedisOutbox(client, key=f"ob:retention:{uuid.uuid4()}")
    fresh, now = new_job(), time.time()
    outbox.push(
        [event(owner, purged, status, now, attempt, **fields) for status, attempt, fields in LATE_EVENTS]
        + [event(owner, fresh, Status.PENDING, now, 0)]
    )

    with ExitStack() as stores:
        writer = StatusWriter(
            lambda: stores.enter_context(open_store(store_kind, database_url)),
            outbox=outbox,
            flush_interval=0.01,
            drain_interval=0.01,
        )
        writer.start()
        try:
            wait_for(lambda: fetch_rows(database_url, [fresh]), timeout=30, what="the outbox drained")
            wait_for(lambda: outbox.depth() == 0, timeout=30, what="an empty outbox")
        finally:
            writer.close(timeout=10)
    try:
        assert outbox.dead_depth() == 0, outbox.dead_letters()
    finally:
        client.close()
    assert purged not in fetch_rows(database_url)


def test_the_retention_run_takes_its_settings_from_the_table(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    finished = [finished_long_ago(database_url, store, owner, days=3) for _ in range(3)]
    quiet = new_job()
    store.apply([event(owner, quiet, Status.ACTIVE, time.time() - 3 * DAY)])
    age(database_url, [quiet], days=3)
    # the defaults (30 days, 7 days) leave all of them alone
    assert sql(database_url, "select public.job_status_retention_run()") == {
        "expired": 0, "purged": 0, "tombstones_dropped": 0,
    }  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update public.job_status_retention set keep_finished = '2 days', expire_after = '2 days',"
            " keep_tombstones = '0', batch_size = 2"
        )
    # one batch of each per run
    assert sql(database_url, "select public.job_status_retention_run()") == {
        "expired": 1, "purged": 2, "tombstones_dropped": 0,
    }  # fmt: skip
    assert sql(database_url, "select public.job_status_retention_run()") == {
        "expired": 0, "purged": 1, "tombstones_dropped": 2,
    }  # fmt: skip
    assert set(fetch_rows(database_url)) == {quiet}
    assert tombstones(database_url) == {finished[-1]}  # purged last (the youngest), kept a run longer
    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update public.job_status_retention set expire_after = '0'")


# -- runs at once ------------------------------------------------------------------------------

FINISHED, STALE, OLD_TOMBSTONES = 3000, 3000, 3000
_PURGE_COUNTS = re.compile(r"expired: (\d+) .*\npurged: (\d+) .*\ntombstones dropped: (\d+) ")


def test_retention_runs_at_once_handle_each_row_exactly_once(database_url: str, owner: Owner) -> None:
    """README, Retention: a run alongside pg_cron's, or another `coursegen purge`, is harmless.
    Two `coursegen purge` processes, a `coursegen.retention.run` and pg_cron's function, released
    together on thousands of rows in batches of 100: every stale row expires once, every old
    finished row is purged once and leaves one tombstone, every old tombstone goes once, the
    runs' counts add up to exactly that, and none of them fails."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status,"
            " attempt, event_at, finished_at, created_at, updated_at)"
            " select 'done-' || i, %(tenant)s::uuid, %(user)s::uuid, %(actor)s, %(queue)s,"
            "  (array['completed', 'failed', 'cancelled', 'skipped'])[1 + i %% 4]::public.job_state,"
            "  1, now() - interval '40 days', now() - interval '40 days', now() - interval '40 days',"
            "  now() - interval '40 days'"
            " from generate_series(1, %(finished)s) as i"
            " union all"
            " select 'stale-' || i, %(tenant)s::uuid, %(user)s::uuid, %(actor)s, %(queue)s,"
            "  (array['pending', 'active', 'retrying'])[1 + i %% 3]::public.job_state,"
            "  least(i %% 3, 1), now() - interval '9 days', null, now() - interval '9 days',"
            "  now() - interval '9 days'"
            " from generate_series(1, %(stale)s) as i",
            {"tenant": owner.tenant_id, "user": owner.user_id, "actor": ACTOR, "queue": QUEUE,
             "finished": FINISHED, "stale": STALE},
        )  # fmt: skip
        conn.execute(
            "insert into public.job_status_tombstones (job_id, purged_at)"
            " select 'gone-' || i, now() - interval '40 days' from generate_series(1, %s) as i",
            (OLD_TOMBSTONES,),
        )
        conn.execute("update public.job_status_retention set batch_size = 100")
    now = time.time()
    recent = [new_job(), new_job()]  # neither old enough: left alone
    with open_store("postgres", database_url) as store:
        assert outcomes(
            store,
            [
                event(owner, recent[0], Status.COMPLETED, now - DAY, result={"ok": True}),
                event(owner, recent[1], Status.ACTIVE, now - DAY, progress=30),
            ],
        ) == ["applied", "applied"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from realtime.messages")

    counts: dict[str, tuple[int, ...]] = {}
    errors: dict[str, BaseException] = {}

    def in_process() -> None:
        try:
            done, _ = retention.run(database_url)
            counts["coursegen.retention.run"] = (done.expired, done.purged, done.tombstones_dropped)
        except BaseException as exc:  # reported below
            errors["coursegen.retention.run"] = exc

    def pg_cron() -> None:  # what the schedule runs, again until a run finds nothing
        try:
            total: tuple[int, ...] = (0, 0, 0)
            with psycopg.connect(database_url, autocommit=True) as conn:
                while True:
                    one = conn.execute("select public.job_status_retention_run()").fetchone()[0]  # type: ignore[index]
                    found = (one["expired"], one["purged"], one["tombstones_dropped"])
                    if found == (0, 0, 0):
                        break
                    total = tuple(a + b for a, b in zip(total, found, strict=True))
            counts["job_status_retention_run"] = total
        except BaseException as exc:  # reported below
            errors["job_status_retention_run"] = exc

    env = app_env(DATABASE_URL=database_url)
    with psycopg.connect(database_url) as gate:
        # every run reads the settings first: they all wait here until the gate opens
        gate.execute("lock table public.job_status_retention in access exclusive mode")
        gate_pid = gate.info.backend_pid
        purges = [
            subprocess.Popen(
                [str(BIN / "coursegen"), "purge"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        threads = [threading.Thread(target=in_process), threading.Thread(target=pg_cron)]
        try:
            for thread in threads:
                thread.start()

            def waiting() -> bool:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    row = conn.execute(
                        "select count(*) from pg_stat_activity where datname = current_database()"
                        " and pid <> %s and wait_event_type = 'Lock'",
                        (gate_pid,),
                    ).fetchone()
                return row is not None and row[0] == 4

            wait_for(waiting, timeout=30, what="the four runs to wait at the gate")
            gate.commit()
            for index, purge in enumerate(purges):
                out, err = purge.communicate(timeout=60)
                assert (purge.returncode, err) == (0, ""), out
                found = _PURGE_COUNTS.search(out)
                assert found is not None, out
                counts[f"coursegen purge #{index}"] = tuple(int(n) for n in found.groups())
        finally:
            for purge in purges:
                if purge.poll() is None:
                    purge.kill()
                    purge.wait(10)
            for thread in threads:
                thread.join(timeout=60)
    assert errors == {}
    assert len(counts) == 4
    totals = tuple(sum(column) for column in zip(*counts.values(), strict=True))
    assert totals == (STALE, FINISHED, OLD_TOMBSTONES), counts

    with psycopg.connect(database_url) as conn:
        by_state = conn.execute(
            "select split_part(job_id, '-', 1), status::text, error_type, count(*) from public.job_status"
            " where job_id like 'stale-%' or job_id like 'done-%' group by 1, 2, 3"
        ).fetchall()
        assert by_state == [("stale", "failed", "Expired", STALE)], "each stale row expired, none purged"
        assert {row["job_id"]: row["status"] for row in fetch_rows(database_url, recent).values()} == {
            recent[0]: "completed",
            recent[1]: "active",
        }
        buried = conn.execute(
            "select count(*), count(*) filter (where job_id like 'done-%'),"
            " count(*) filter (where purged_at > now() - interval '1 day') from public.job_status_tombstones"
        ).fetchone()
        assert buried == (FINISHED, FINISHED, FINISHED), "one tombstone per purged row, the old ones gone"
        # one broadcast UPDATE per expired row, nothing else (the purge's deletes are not broadcast)
        messages = conn.execute(
            "select payload ->> 'operation', count(*), count(distinct payload ->> 'job_id')"
            " from realtime.messages group by 1"
        ).fetchall()
        assert messages == [("UPDATE", STALE, STALE)]


# -- Realtime ----------------------------------------------------------------------------------


def broadcast(conninfo: str, job_ids: list[str]) -> list[tuple[str, str, str]]:
    """(job_id, operation, status) of the Broadcast messages about these jobs."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "select payload ->> 'job_id', payload ->> 'operation', payload ->> 'status'"
            " from realtime.messages where payload ->> 'job_id' = any(%s)",
            (job_ids,),
        ).fetchall()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_the_purge_broadcasts_nothing_the_expiry_does_and_other_deletes_still_do(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    purged = [finished_long_ago(database_url, store, owner) for _ in range(3)]
    quiet, deleted = new_job(), new_job()
    store.apply(
        [
            event(owner, quiet, Status.ACTIVE, time.time() - 9 * DAY),
            event(owner, deleted, Status.ACTIVE, time.time()),
        ]
    )
    age(database_url, [quiet], days=9)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from realtime.messages")
        with conn.transaction():
            # in one transaction: the purge's flag ends with the purge
            assert conn.execute("select public.job_status_retention_run()").fetchone()[0] == {  # type: ignore[index]
                "expired": 1, "purged": 3, "tombstones_dropped": 0,
            }  # fmt: skip
            conn.execute("delete from public.job_status where job_id = %s", (deleted,))
        assert conn.execute("select current_setting('job_status.purging', true)").fetchone()[0] in (None, "")  # type: ignore[index]
    # one transaction: the messages share their time, so no order between them
    assert sorted(broadcast(database_url, [*purged, quiet, deleted])) == sorted(
        [(quiet, "UPDATE", "failed"), (deleted, "DELETE", "active")]
    )


# -- scheduling where pg_cron is missing ----------------------------------------------------------


def test_without_pg_cron_the_schedule_migration_changes_nothing_and_says_so(database_url: str) -> None:
    [schedule] = [
        p for p in migrations_dir().iterdir() if p.name.endswith("_job_status_retention_schedule.sql")
    ]
    notices: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        if conn.execute("select exists (select from pg_extension where extname = 'pg_cron')").fetchone()[0]:  # type: ignore[index]
            pytest.skip("pg_cron is loaded here: tests/integration/test_pg_cron.py covers it")
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        with conn.transaction():
            conn.execute(schedule.read_text())
        assert conn.execute("select to_regnamespace('cron')").fetchone() == (None,)
    assert len(notices) == 1, notices
    assert notices[0].startswith("job_status retention is not scheduled: "), notices
    assert "coursegen purge" in notices[0]
