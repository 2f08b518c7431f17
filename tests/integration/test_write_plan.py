"""job_status_write finds a job's row by its job_id index, whatever the table's statistics.

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
from collections.abc import Iterator

import psycopg
import pytest

from middleware.events import Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_database, create_owner, database_url_for, drop_database

pytestmark = [pytest.mark.integration, pytest.mark.sql]

BATCH = 500
BATCHES = 8  # 4,000 jobs of one tenant: a pending event each, then their ending


@pytest.fixture
def fresh_database(pg_admin_url: str, template_database: str) -> Iterator[str]:
    name = create_database(pg_admin_url, template_database)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


def _index_scans(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        rows = conn.execute(
            "select indexrelname, idx_scan from pg_stat_user_indexes where relname = 'job_status'"
        ).fetchall()
    return {name: scans for name, scans in rows}


def _reltuples(conninfo: str) -> float:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("select reltuples from pg_class where oid = 'public.job_status'::regclass").fetchone()[0]


def test_a_session_planned_on_an_unanalyzed_table_uses_the_job_id_index(fresh_database: str) -> None:
    conninfo = fresh_database
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # no autovacuum may analyze the table behind the test's back
        conn.execute("alter table public.job_status set (autovacuum_enabled = false)")
    assert _reltuples(conninfo) < 0, "the table must start without statistics"
    owner = create_owner(conninfo)
    store = PostgresStatusStore(conninfo)
    t = 1_800_000_000.0
    try:
        for b in range(BATCHES):
            ids = [f"plan-{b}-{i}" for i in range(BATCH)]
            pending = [StatusEvent(j, Status.PENDING, 0, owner, "a", "q", t + b) for j in ids]
            done = [StatusEvent(j, Status.COMPLETED, 1, owner, "a", "q", t + b + 1) for j in ids]
            for events in (pending, done):
                outcomes = store.apply(events)
                assert all(o.outcome == "applied" for o in outcomes), outcomes[:3]
    finally:
        store.close()  # a backend reports its statistics when it exits
    assert _reltuples(conninfo) < 0, "something analyzed the table: the test proves nothing"

    deadline = time.monotonic() + 30
    while True:
        scans = _index_scans(conninfo)
        by_job_id = scans.get("job_status_job_id_key", 0)
        if by_job_id >= BATCHES * BATCH or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_job_id >= BATCHES * BATCH, scans
    others = {name: n for name, n in scans.items() if n and name != "job_status_job_id_key"}
    assert others == {}, f"the write scanned other indexes of job_status: {others}"
