"""Fault injection with real processes: killed and stopped workers, Redis restarts, bad events.

Every final status must survive: a message of a SIGKILLed worker is redelivered and its row
converges; a SIGTERM flushes what is buffered; workers reconnect after a Redis restart; one
bad event is rejected alone while its batch lands.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

TEXT = "Tides rise and fall twice a day because the Moon and the Sun pull on the oceans. " * 8


def payload(owner: tuple[str, str]) -> dict[str, object]:
    return {
        "tenant_id": owner[0],
        "user_id": owner[1],
        "title": "Tides",
        "sources": [{"title": "t", "text": TEXT}],
    }


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    return {job_id: row["status"] for job_id, row in fetch_rows(url, ids).items()}


def test_sigkill_mid_job_is_redelivered_and_converges(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    owner = create_owner(database_url)
    env = app_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        COURSEGEN_DEMO_PACE="1.0",  # five stages: a job runs for about five seconds
        COURSEGEN_HEARTBEAT_TIMEOUT_MS="5000",
        COURSEGEN_MAINTENANCE_CHANCE="1000000",
    )
    job_id = send_jobs(env, [payload(owner)])[0]["job_id"]
    with dramatiq_worker(env, tmp_path / "first.log", threads=1) as first:
        wait_for(
            lambda: statuses(database_url, [job_id]).get(job_id) == "active",
            timeout=30,
            what="the job to start",
        )
        children = psutil.Process(first.process.pid).children()
        assert children, "the dramatiq main process has a worker process"
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        first.process.wait(30)  # the main process exits when a worker process dies
    assert statuses(database_url, [job_id])[job_id] == "active"

    with dramatiq_worker(env, tmp_path / "second.log", threads=1):
        wait_for(
            lambda: statuses(database_url, [job_id]).get(job_id) == "completed",
            timeout=120,
            interval=0.5,
            what="the redelivered job to complete",
        )
    row = fetch_rows(database_url, [job_id])[job_id]
    assert (row["status"], row["attempt"], row["progress"]) == ("completed", 1, 100)


def test_sigterm_flushes_buffered_events(database_url: str, redis_url: str, tmp_path: Path) -> None:
    owner = create_owner(database_url)
    env = app_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        COURSEGEN_FLUSH_INTERVAL="10",  # nothing is written until the flush at shutdown
    )
    ids = [item["job_id"] for item in send_jobs(env, [payload(owner)] * 20)]
    with dramatiq_worker(env, tmp_path / "worker.log", threads=4) as worker:
        wait_for(lambda: "Worker process is ready" in worker.log, timeout=30, what="the worker to boot")
        # the producer flushed its pending rows at exit; the worker buffers everything else
        assert set(statuses(database_url, ids).values()) == {"pending"}
        client = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: client.hlen("dramatiq:course-generation.msgs") == 0,
            timeout=60,
            what="the worker to ack every message",
        )
        assert set(statuses(database_url, ids).values()) == {"pending"}, "still buffered"
        assert worker.stop() == 0
    assert statuses(database_url, ids) == dict.fromkeys(ids, "completed")


def test_workers_reconnect_after_a_redis_restart(database_url: str, tmp_path: Path) -> None:
    from coursegen.embedded import LocalRedis

    owner = create_owner(database_url)
    server = LocalRedis(tmp_path / "redis")
    server.start()
    try:
        env = app_env(REDIS_URL=server.url, DATABASE_URL=database_url)
        with dramatiq_worker(env, tmp_path / "worker.log", threads=2) as worker:
            before = [item["job_id"] for item in send_jobs(env, [payload(owner)] * 5)]
            wait_for(
                lambda: statuses(database_url, before) == dict.fromkeys(before, "completed"),
                timeout=60,
                what="the first jobs",
            )
            server.stop()
            server.start()  # same port, empty: queued messages of a non-persistent Redis are gone
            after = [item["job_id"] for item in send_jobs(env, [payload(owner)] * 5)]
            wait_for(
                lambda: statuses(database_url, after) == dict.fromkeys(after, "completed"),
                timeout=90,
                interval=0.5,
                what="jobs sent after the restart",
            )
            assert worker.process.poll() is None, "the worker survived the restart"
    finally:
        server.stop()


def test_one_bad_event_is_rejected_alone(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """A job whose tenant does not exist: its events are rejected (logged, counted), the rest land."""
    owner = create_owner(database_url)
    stranger = (str(uuid.uuid4()), owner.user_id)  # a well-formed tenant id nobody has
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url, COURSEGEN_FLUSH_INTERVAL="0.5")
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        sent = send_jobs(env, [payload(owner), payload(stranger), payload(owner)])
        ids = [item["job_id"] for item in sent]
        wait_for(
            lambda: statuses(database_url, [ids[0], ids[2]]) == {ids[0]: "completed", ids[2]: "completed"},
            timeout=60,
            what="the good jobs",
        )
        wait_for(lambda: "unknown_tenant" in worker.log, timeout=30, what="the rejection to be logged")
    assert ids[1] not in fetch_rows(database_url, ids)
    assert "Status event rejected by the store: unknown_tenant" in worker.log
