"""The database stops for a few seconds in the middle of a run: no final status is lost.

A dedicated PostgreSQL cluster (the shared one cannot be stopped), the real `dramatiq` CLI, and
producers sending while the database is down: the writers retry, spill to the Redis outbox, and
drain it after the restart until every row is `completed`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from coursegen.embedded import LocalPostgres
from coursegen.migrate import migrate
from middleware.outbox import DEFAULT_KEY
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TEXT = "Glaciers grind rock into fine flour that rivers carry to the sea and deposit as silt. " * 8


def test_database_outage_loses_no_final_status(
    own_postgres: LocalPostgres, redis_url: str, tmp_path: Path
) -> None:
    url = own_postgres.url()
    migrate(url)
    owner = create_owner(url)
    env = app_env(
        REDIS_URL=redis_url,
        DATABASE_URL=url,
        COURSEGEN_RETRY_ATTEMPTS="3",
        COURSEGEN_RETRY_SECONDS="0.5",
        COURSEGEN_STORE_TIMEOUT="1",
    )
    payload = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": TEXT}]}
    outbox = redis.Redis.from_url(redis_url)

    with dramatiq_worker(env, tmp_path / "worker.log", threads=4) as worker:
        before = [item["job_id"] for item in send_jobs(env, [payload] * 100)]
        wait_for(lambda: len(fetch_rows(url, before)) == 100, timeout=60, what="the first jobs' rows")

        own_postgres.stop()
        # sent while the database is down: the producer's own writer must spill at exit
        during = [item["job_id"] for item in send_jobs(env, [payload] * 100)]
        wait_for(lambda: "spilling" in worker.log, timeout=30, what="the worker to spill to the outbox")
        assert outbox.llen(DEFAULT_KEY) > 0, "events wait in the outbox while the database is down"
        own_postgres.start()

        every = before + during

        def all_completed() -> bool:
            rows = fetch_rows(url, every)
            return len(rows) == len(every) and {r["status"] for r in rows.values()} == {"completed"}

        wait_for(all_completed, timeout=60, interval=0.5, what="every row to be completed")
        wait_for(lambda: outbox.llen(DEFAULT_KEY) == 0, timeout=30, what="the outbox to drain")
        assert worker.stop() == 0
    assert "Outbox drained" in worker.log
    rows = fetch_rows(url, every)
    assert {r["attempt"] for r in rows.values()} == {1}
    assert all(r["progress"] == 100 and r["finished_at"] is not None for r in rows.values())
