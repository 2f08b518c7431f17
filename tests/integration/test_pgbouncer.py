"""The PostgreSQL store through a transaction pooler, as workers reach Supabase through its pooler
(port 6543): PgBouncer in transaction mode (Debian's package, started here as the ``postgres`` OS
user) in front of the test database, with fewer server connections than writers.

In transaction mode consecutive statements of one client may run on different server connections,
and one server connection serves many clients: nothing may outlive a transaction. The store and
the producer's reader keep no session state: no server-side prepared statements
(``prepare_threshold=None``), no ``SET`` without ``LOCAL``, no advisory locks, no ``LISTEN``. A
regression there fails here: the control test shows what a prepared statement does on this pooler.
(``coursegen migrate`` holds a session advisory lock: it needs a direct or session-mode URL.)
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from coursegen.embedded import LocalPgBouncer, LocalServiceError, pgbouncer_binary
from coursegen.jobs import PostgresReader
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import Outcome
from middleware.stores.postgres import PostgresStatusStore
from middleware.writer import StatusWriter
from tests.conftest import unavailable
from tests.support.db import create_owner, fetch_rows

pytestmark = [pytest.mark.integration, pytest.mark.sql]

#: server connections per pool: fewer than the writers
POOL_SIZE = 2
WRITERS = 6
JOBS_PER_WRITER = 10


@pytest.fixture
def pgbouncer(pg_admin_url: str, tmp_path: Path) -> Iterator[LocalPgBouncer]:
    if pgbouncer_binary() is None:
        unavailable("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    params = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    bouncer = LocalPgBouncer(
        tmp_path / "pgbouncer",
        int(params.get("port") or 5432),
        upstream_host=str(params.get("host") or "127.0.0.1"),
        pool_size=POOL_SIZE,
    )
    try:
        bouncer.start()
    except LocalServiceError as exc:
        unavailable(f"cannot start pgbouncer: {exc}")
    yield bouncer
    bouncer.stop()


def pooled(bouncer: LocalPgBouncer, database_url: str) -> str:
    return bouncer.url(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]))


def test_writers_outnumbering_server_connections_write_every_row(
    pgbouncer: LocalPgBouncer, database_url: str
) -> None:
    owner = create_owner(database_url)
    url = pooled(pgbouncer, database_url)
    # each writer sends one batch per step and flushes: each of its store's connections (up to
    # two) runs statement after statement, past psycopg's default prepare_threshold of 5, while
    # the other writers do the same
    steps: list[tuple[Status, dict[str, object]]] = [
        (Status.PENDING, {}),
        (Status.ACTIVE, {}),
        *((Status.ACTIVE, {"progress": p}) for p in range(5, 100, 5)),
        (Status.COMPLETED, {"result": {"ok": True}}),
    ]
    jobs = [
        [f"bouncer-{w}-{j}-{uuid.uuid4().hex[:8]}" for j in range(JOBS_PER_WRITER)] for w in range(WRITERS)
    ]
    clients_seen: list[int] = []
    all_connected = threading.Barrier(WRITERS + 1)

    errors: list[BaseException] = []

    class Store(PostgresStatusStore):  # the writer would retry a failed batch: count them
        def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
            try:
                return super().apply(events)
            except Exception as exc:
                errors.append(exc)
                raise

    def run(ids: list[str]) -> None:
        writer = StatusWriter(
            lambda: Store(url), flush_interval=60.0, close_timeout=10.0, sleep=lambda _s: None
        )
        try:
            for i, (status, fields) in enumerate(steps):
                for job_id in ids:
                    writer.submit(_event(job_id, owner, status, 1_800_000_000.0 + i, **fields))
                assert writer.flush(timeout=20)
                if i == 0:
                    all_connected.wait(timeout=20)  # every writer holds its connection now
                    all_connected.wait(timeout=20)  # the clients were counted
        finally:
            assert writer.close(timeout=20)

    with ThreadPoolExecutor(WRITERS) as pool:
        done = [pool.submit(run, ids) for ids in jobs]
        all_connected.wait(timeout=20)
        clients_seen.append(_clients(pgbouncer, url))
        all_connected.wait(timeout=20)
        for future in done:
            future.result(timeout=60)

    assert errors == []
    rows = fetch_rows(database_url, [job_id for ids in jobs for job_id in ids])
    assert len(rows) == WRITERS * JOBS_PER_WRITER
    assert {(row["status"], row["progress"], str(row["result"])) for row in rows.values()} == {
        ("completed", 100, "{'ok': True}")
    }
    # more clients than server connections, and never more server connections than the pool
    assert clients_seen[0] >= WRITERS > POOL_SIZE
    servers = [s for s in pgbouncer.show("servers") if s["database"] == _dbname(url)]
    assert 1 <= len(servers) <= POOL_SIZE


def test_the_producers_reads_go_through_the_pooler(pgbouncer: LocalPgBouncer, database_url: str) -> None:
    owner = create_owner(database_url)
    job_id = f"bouncer-read-{uuid.uuid4().hex[:8]}"
    with closing(PostgresStatusStore(database_url)) as store:
        store.apply([_event(job_id, owner, Status.COMPLETED, 1_800_000_000.0)])
    url = pooled(pgbouncer, database_url)
    readers = [PostgresReader(url) for _ in range(POOL_SIZE + 2)]
    for _ in range(8):  # past psycopg's default prepare_threshold, on every reader
        for reader in readers:
            row = reader.get(job_id)
            assert row is not None and row["status"] == "completed"
            assert reader.owner_problem(owner.tenant_id, owner.user_id) is None
            assert [
                r["job_id"] for r in reader.list(status=None, user_id=owner.user_id, tenant_id=None, limit=5)
            ] == [job_id]


def test_the_cancel_polls_queries_go_through_the_pooler(pgbouncer: LocalPgBouncer, database_url: str) -> None:
    owner = create_owner(database_url)
    running, unknown = f"bouncer-cancel-{uuid.uuid4().hex[:8]}", f"bouncer-none-{uuid.uuid4().hex[:8]}"
    url = pooled(pgbouncer, database_url)
    stores = [PostgresStatusStore(url) for _ in range(POOL_SIZE + 2)]
    try:
        stores[0].apply([_event(running, owner, Status.ACTIVE, 1_800_000_000.0)])
        requested = dt.datetime.now(dt.UTC)
        for _ in range(8):  # past psycopg's default prepare_threshold, on every store
            for store in stores:
                assert store.stamp_cancels([(running, requested), (unknown, requested)]) == [running]
                found = store.cancel_requests(requested - dt.timedelta(seconds=1), "", 10)
                assert [(r.job_id, r.live) for r in found] == [(running, True)]
    finally:
        for store in stores:
            store.close()


def test_control_a_prepared_statement_does_not_survive_this_pooler(
    pgbouncer: LocalPgBouncer, database_url: str
) -> None:
    """What the store avoids: psycopg's prepared statements (the default after 5 executions; at
    once here) meet another client's on the shared server connection."""
    url = pooled(pgbouncer, database_url)
    with (
        psycopg.connect(url, autocommit=True, prepare_threshold=0) as first,
        psycopg.connect(url, autocommit=True, prepare_threshold=0) as second,
    ):
        assert first.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            second.execute("select 2")


def _event(job_id: str, owner: Owner, status: Status, at: float, **fields: object) -> StatusEvent:
    if status is not Status.PENDING:
        fields.setdefault("started_at", 1_800_000_000.0)
    return StatusEvent(
        job_id, status, 0 if status is Status.PENDING else 1, owner, "bouncer", "default", at, **fields
    )


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def _clients(bouncer: LocalPgBouncer, url: str) -> int:
    return sum(1 for c in bouncer.show("clients") if c["database"] == _dbname(url))
