"""Retention scheduled by the real pg_cron (Debian's ``postgresql-15-cron``, 1.4) on PostgreSQL 15,
set up as Supabase sets it up: preloaded, its jobs kept in the ``postgres`` database, run over a
libpq connection to the server itself. The migrations create the extension and schedule the job;
a scheduled run really expires and purges.

Needs ``postgresql-15`` and ``postgresql-15-cron`` (``.ci/run`` installs both): missing, the
tests skip locally and fail in CI. The run test waits for a minute boundary (pg_cron 1.4 has no
sub-minute schedules): it is marked ``slow``, and ``make test-pg15`` (all ``sql`` tests, slow
ones included) runs it.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from coursegen.embedded import LocalPostgres, LocalServiceError, debian_pg_bindir
from coursegen.migrate import migrate, migrations_dir
from coursegen.retention import CRON_JOB, scheduled
from middleware.events import Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.conftest import unavailable
from tests.support.db import create_owner, fetch_rows, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.sql]

DAY = 86_400.0
SCHEDULE = "*/15 * * * *"
COMMAND = "select public.job_status_retention_run()"


def pg_cron_installed(bindir: Path) -> bool:
    """The extension's control file is in the installation's share directory."""
    sharedir = subprocess.run(
        [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    return bool(sharedir) and (Path(sharedir) / "extension" / "pg_cron.control").is_file()


@pytest.fixture(scope="module")
def cron_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL 15 cluster with pg_cron preloaded for its ``postgres`` database, migrated."""
    bindir = debian_pg_bindir(15)
    if bindir is None:
        unavailable("Debian's PostgreSQL 15 is not installed (apt-get install postgresql-15)")
    if not pg_cron_installed(bindir):
        unavailable("pg_cron for PostgreSQL 15 is not installed (apt-get install postgresql-15-cron)")
    server = LocalPostgres(
        tmp_path_factory.mktemp("pg-cron") / "data",
        bindir=bindir,
        settings={
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": "postgres",
            # its jobs connect with libpq; the cluster listens on 127.0.0.1 only
            "cron.host": "127.0.0.1",
        },
    )
    try:
        server.start()
    except (LocalServiceError, OSError) as exc:
        unavailable(f"cannot start PostgreSQL 15 with pg_cron: {exc}")
    try:
        url = server.url()
        migrate(url)
        yield url
    finally:
        server.stop()


def cron_jobs(conninfo: str) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo) as conn:
        cursor = conn.execute(
            "select jobid, jobname, schedule, command, database, username, active"
            " from cron.job order by jobid"
        )
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_the_migrations_schedule_retention_once(cron_database: str) -> None:
    [job] = cron_jobs(cron_database)
    assert {key: value for key, value in job.items() if key != "jobid"} == {
        "jobname": CRON_JOB, "schedule": SCHEDULE, "command": COMMAND, "database": "postgres",
        "username": "postgres", "active": True,
    }  # fmt: skip
    with psycopg.connect(cron_database, autocommit=True) as conn:
        assert scheduled(conn) == SCHEDULE  # what `coursegen migrate` reports

        # run again (a re-applied migration): still one job, its time and command restored
        conn.execute("select cron.schedule(%s, '0 3 * * *', 'select 1')", (CRON_JOB,))
        [schedule_sql] = [
            p.read_text()
            for p in migrations_dir().iterdir()
            if p.name.endswith("_job_status_retention_schedule.sql")
        ]
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        with conn.transaction():
            conn.execute(schedule_sql)
    assert notices == [f"job_status retention scheduled: pg_cron job {CRON_JOB}, {SCHEDULE}"]
    [again] = cron_jobs(cron_database)
    assert (again["jobid"], again["schedule"], again["command"]) == (job["jobid"], SCHEDULE, COMMAND)


@pytest.mark.slow
def test_a_scheduled_run_expires_and_purges(cron_database: str) -> None:
    owner = create_owner(cron_database)
    now = time.time()
    finished, quiet, busy = (f"cron-{name}-{uuid.uuid4()}" for name in ("finished", "quiet", "busy"))
    store = PostgresStatusStore(cron_database)
    try:
        outcomes = store.apply(
            [
                StatusEvent(finished, Status.COMPLETED, 1, owner, "generate_course", "q", now - 40 * DAY),
                StatusEvent(quiet, Status.ACTIVE, 1, owner, "generate_course", "q", now - 9 * DAY),
                StatusEvent(busy, Status.ACTIVE, 1, owner, "generate_course", "q", now),
            ]
        )
    finally:
        store.close()
    assert [o.outcome for o in outcomes] == ["applied"] * 3
    with psycopg.connect(cron_database, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - interval '40 days',"
            " updated_at = now() - interval '9 days' where job_id = any(%s)",
            ([finished, quiet],),
        )
        # every minute, the shortest pg_cron 1.4 has; the same named job, so no second one
        jobid = conn.execute("select cron.schedule(%s, '* * * * *', %s)", (CRON_JOB, COMMAND)).fetchone()[0]  # type: ignore[index]
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]

    def a_run() -> tuple[str, str] | None:
        with psycopg.connect(cron_database) as conn:
            row = conn.execute(
                "select status, coalesce(return_message, '') from cron.job_run_details"
                " where jobid = %s and start_time >= %s and status in ('succeeded', 'failed')"
                " order by start_time limit 1",
                (jobid, since),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    status, message = wait_for(a_run, timeout=130, interval=1.0, what="a finished run of the cron job")
    assert status == "succeeded", message
    rows = fetch_rows(cron_database, [finished, quiet, busy])
    assert finished not in rows
    assert (rows[quiet]["status"], rows[quiet]["error_type"]) == ("failed", "Expired")
    assert rows[busy]["status"] == "active"
    with psycopg.connect(cron_database, autocommit=True) as conn:
        assert conn.execute(
            "select job_id from public.job_status_tombstones where job_id = %s", (finished,)
        ).fetchone() == (finished,)
        conn.execute("select cron.schedule(%s, %s, %s)", (CRON_JOB, SCHEDULE, COMMAND))
