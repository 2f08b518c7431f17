"""The long fault scenarios (`make test-faults`, and CI): a 30 s database outage under 5,000
jobs, and 100,000 jobs through `-p 2 -t 8` with bounded worker memory."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import redis

from coursegen.embedded import LocalPostgres
from coursegen.migrate import migrate
from middleware.outbox import DEFAULT_KEY
from tests.support.db import create_owner, wait_for
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults, pytest.mark.slow]

TEXT = "Volcanoes form where molten rock from the mantle reaches the surface of the Earth. " * 8


def count_by_status(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        return dict(
            conn.execute("select status::text, count(*) from public.job_status group by 1").fetchall()
        )


def rss_of_workers(pid: int) -> list[int]:
    """Current RSS of each worker process (the dramatiq main process's children), bytes."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            out.append(child.memory_info().rss)
        except psutil.Error:
            continue
    return out


@pytest.mark.timeout(600)
def test_thirty_second_outage_under_5000_jobs(
    own_postgres: LocalPostgres, redis_url: str, tmp_path: Path, record_property: object
) -> None:
    url = own_postgres.url()
    migrate(url)
    owner = create_owner(url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=url, COURSEGEN_STORE_TIMEOUT="2")
    payload = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": TEXT}]}
    outbox = redis.Redis.from_url(redis_url)
    queue = "dramatiq:course-generation.msgs"

    ids = [item["job_id"] for item in send_jobs(env, [payload] * 5000)]
    with dramatiq_worker(env, tmp_path / "worker.log", processes=2, threads=8) as worker:
        wait_for(lambda: outbox.hlen(queue) <= 3500, timeout=120, what="a third of the jobs to be done")
        own_postgres.stop()
        stopped = time.monotonic()
        left_at_stop = outbox.hlen(queue)
        wait_for(lambda: time.monotonic() - stopped >= 30, timeout=40, interval=1, what="30 s of outage")
        done_during = left_at_stop - outbox.hlen(queue)
        outbox_peak = outbox.llen(DEFAULT_KEY)
        own_postgres.start()
        restarted = time.monotonic()
        wait_for(
            lambda: count_by_status(url).get("completed") == 5000,
            timeout=60,
            interval=1,
            what="every row completed within 60 s of the restart",
        )
        converged = time.monotonic() - restarted
        wait_for(lambda: outbox.llen(DEFAULT_KEY) == 0, timeout=30, what="the outbox to drain")
        assert worker.stop() == 0
    assert done_during > 0, "jobs kept completing while the database was down"
    assert outbox_peak > 0, "the outbox held events during the outage"
    assert "spilling" in worker.log and "Outbox drained" in worker.log
    assert count_by_status(url) == {"completed": 5000}
    assert len(ids) == 5000
    figures = {
        "outage_s": 30,
        "jobs_done_during": done_during,
        "outbox_peak": outbox_peak,
        "converged_s": converged,
    }
    record_property("figures", figures)  # type: ignore[operator]
    print(f"\noutage figures: {figures}")


@pytest.mark.timeout(900)
def test_100k_jobs_with_bounded_worker_memory(database_url: str, redis_url: str, tmp_path: Path) -> None:
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    payload = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": TEXT}]}
    client = redis.Redis.from_url(redis_url)
    queue = "dramatiq:course-generation.msgs"
    n = 100_000
    send_jobs(env, [payload] * n)
    samples: list[tuple[int, int]] = []  # (jobs done, max worker RSS)
    with dramatiq_worker(env, tmp_path / "worker.log", processes=2, threads=8) as worker:

        def drained() -> bool:
            left = client.hlen(queue)
            rss = rss_of_workers(worker.process.pid)
            if rss:
                samples.append((n - left, max(rss)))
            return left == 0

        wait_for(drained, timeout=600, interval=0.5, what="100,000 jobs to be processed")
        wait_for(
            lambda: count_by_status(database_url).get("completed") == n,
            timeout=120,
            interval=1,
            what="every row completed",
        )
        assert worker.stop() == 0
    early = max(rss for done, rss in samples if done <= 20_000)
    late = max(rss for done, rss in samples)
    print(f"\nworker RSS: {early / 2**20:.1f} MB by 20k jobs, {late / 2**20:.1f} MB peak over 100k")
    assert late - early < 32 * 2**20, "worker memory does not grow with the number of jobs"
