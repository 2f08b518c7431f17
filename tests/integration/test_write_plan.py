"""The functions that look up one job find its row by the job_id index, whatever the table's
statistics: job_status_write, and the owner-scoped reads and cancellation.

The function is planned once per session (``plan_cache_mode = force_generic_plan``). A session
that plans it while ``job_status`` has no statistics (a new project, a table just truncated) must
not settle on another index of the table (the tenant's or the user's, filtering on job_id): then
every event reads all of its tenant's rows, and a batch takes hundreds of milliseconds once the
tenant has a few thousand jobs, until the next session replans. Counted, not timed: the index
scans of ``pg_stat_user_indexes`` after a session writes thousands of jobs of one tenant to a
table that was never analyzed.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner

pytestmark = [pytest.mark.integration, pytest.mark.sql]

BATCH = 500
BATCHES = 8  # 4,000 jobs of one tenant: a pending event each, then their ending


def _index_scans(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        rows = conn.execute(
            "select indexrelname, idx_scan from pg_stat_user_indexes where relname = 'job_status'"
        ).fetchall()
    return {name: scans for name, scans in rows}


def _reltuples(conninfo: str) -> float:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("select reltuples from pg_class where relname = 'job_status'").fetchone()
    return row[0]


def _write_jobs(conninfo: str) -> tuple[Owner, list[str]]:
    """BATCHES x BATCH jobs of one owner, pending then completed, from one store's session."""
    owner = create_owner(conninfo)
    store = PostgresStatusStore(conninfo)
    t = 1_800_000_000.0
    job_ids: list[str] = []
    try:
        for b in range(BATCHES):
            ids = [f"plan-{b}-{i}" for i in range(BATCH)]
            pending = [StatusEvent(j, Status.PENDING, 0, owner, "a", "q", t + b) for j in ids]
            done = [StatusEvent(j, Status.COMPLETED, 1, owner, "a", "q", t + b + 1) for j in ids]
            for events in (pending, done):
                outcomes = store.apply(events)
                assert all(o.outcome == "applied" for o in outcomes), outcomes[:3]
            job_ids += ids
    finally:
        store.close()  # a backend reports its statistics when it exits
    return owner, job_ids


def _scans_once_reported(conninfo: str, at_least: int) -> dict[str, int]:
    deadline = time.monotonic() + 30
    while True:
        scans = _index_scans(conninfo)
        if scans.get("job_status_job_id_key", 0) >= at_least or time.monotonic() > deadline:
            return scans
        time.sleep(0.2)


@pytest.fixture
def unanalyzed(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # no autovacuum may analyze the table behind the test's back
        conn.execute("alter table public.job_status set (autovacuum_enabled = false)")
    assert _reltuples(database_url) < 0, "the table must start without statistics"
    return database_url


def test_a_session_planned_on_an_unanalyzed_table_writes_through_the_job_id_index(unanalyzed: str) -> None:
    _write_jobs(unanalyzed)
    assert _reltuples(unanalyzed) < 0, "something analyzed the table: the test proves nothing"
    scans = _scans_once_reported(unanalyzed, BATCHES * BATCH)
    assert scans.get("job_status_job_id_key", 0) >= BATCHES * BATCH, scans
    others = {name: n for name, n in scans.items() if n and name != "job_status_job_id_key"}
    assert others == {}, f"the write scanned other indexes of job_status: {others}"


def test_the_owner_scoped_lookups_go_through_the_job_id_index(unanalyzed: str) -> None:
    owner, job_ids = _write_jobs(unanalyzed)
    before = _scans_once_reported(unanalyzed, BATCHES * BATCH)
    looked_up = job_ids[:: len(job_ids) // 20]
    with psycopg.connect(unanalyzed, autocommit=True) as conn:
        for job_id in looked_up:  # more calls than the plan cache's five custom plans
            row = conn.execute(
                "select status::text from public.user_job_status(%s, %s, %s)",
                (owner.user_id, owner.tenant_id, job_id),
            ).fetchone()
            assert row == ("completed",)
            cancelled = conn.execute(
                "select status::text, stamped from public.user_job_cancel(%s, %s, %s)",
                (owner.user_id, owner.tenant_id, job_id),
            ).fetchone()
            assert cancelled == ("completed", False)  # finished: left alone
            assert conn.execute("select public.cancel_job(%s)::text", (job_id,)).fetchone() == ("completed",)
    assert _reltuples(unanalyzed) < 0, "something analyzed the table: the test proves nothing"
    after = _scans_once_reported(unanalyzed, before.get("job_status_job_id_key", 0) + 3 * len(looked_up))
    grown = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    assert grown.get("job_status_job_id_key", 0) >= 3 * len(looked_up), grown
    others = {name: n for name, n in grown.items() if name != "job_status_job_id_key"}
    assert others == {}, f"a lookup of one job scanned other indexes of job_status: {others}"
