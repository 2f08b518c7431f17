"""The full path with real processes: a producer script -> Redis -> `dramatiq coursegen.actors`
-> job_status rows in PostgreSQL, after `coursegen migrate`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from middleware.outbox import DEFAULT_KEY
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import BIN, app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TEXT = (
    "Rivers carry water from the mountains to the sea. Along the way they shape valleys, "
    "deposit sediment and feed wetlands where many species live. " * 4
)


def payload(owner: tuple[str, str], text: str = TEXT, title: str = "Rivers") -> dict[str, object]:
    return {
        "tenant_id": owner[0],
        "user_id": owner[1],
        "title": title,
        "sources": [{"title": "t", "text": text}],
    }


@pytest.fixture
def migrated_url(empty_database_url: str) -> str:
    """A database migrated by the real `coursegen migrate` command."""
    done = subprocess.run(
        [str(BIN / "coursegen"), "migrate"],
        env=app_env(DATABASE_URL=empty_database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied: ")
    return empty_database_url


def test_send_to_worker_to_row_for_completed_and_failed_jobs(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    owner = create_owner(migrated_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=migrated_url)
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        sent = send_jobs(env, [payload(owner), payload(owner, text="far too short", title="Thin")])
        ids = [item["job_id"] for item in sent]

        def finished() -> dict[str, dict[str, object]] | None:
            rows = fetch_rows(migrated_url, ids)
            done = {"completed", "failed"}
            return rows if len(rows) == 2 and all(r["status"] in done for r in rows.values()) else None

        rows = wait_for(finished, timeout=60, what="both jobs to finish")
        assert worker.stop() == 0
    good, thin = rows[ids[0]], rows[ids[1]]
    assert (good["status"], good["attempt"], good["progress"]) == ("completed", 1, 100)
    course = good["result"]  # the generated course itself (tests/e2e/test_courses.py looks closer)
    assert (course["title"], course["stats"]["sources"], course["stats"]["words"]) == ("Rivers", 1, 96)
    assert course["modules"] and all(module["lessons"] for module in course["modules"])
    assert (good["tenant_id"], good["user_id"]) == owner
    assert (good["actor_name"], good["queue_name"]) == ("generate_course", "course-generation")
    assert good["enqueued_at"] <= good["started_at"] <= good["finished_at"]
    # a thin request fails at once, without retries, with a readable reason
    assert (thin["status"], thin["attempt"], thin["error_type"]) == ("failed", 1, "CourseGenerationError")
    assert "a course needs at least 50" in thin["error_message"]
    assert thin["next_retry_at"] is None


def test_producer_with_redis_only_goes_through_the_outbox(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A producer without store credentials pushes `pending` to the outbox; a worker drains it."""
    owner = create_owner(migrated_url)
    producer_env = app_env(REDIS_URL=redis_url)
    # delayed a minute: the job stays queued, so its row can only come from the outbox
    sent = send_jobs(producer_env, [payload(owner)], delay=60_000)
    job_id = sent[0]["job_id"]
    client = redis.Redis.from_url(redis_url)
    assert client.llen(DEFAULT_KEY) == 1
    assert fetch_rows(migrated_url, [job_id]) == {}

    worker_env = app_env(REDIS_URL=redis_url, DATABASE_URL=migrated_url)
    with dramatiq_worker(worker_env, tmp_path / "worker.log"):
        rows = wait_for(lambda: fetch_rows(migrated_url, [job_id]), timeout=30, what="the pending row")
        assert rows[job_id]["status"] == "pending"
        assert rows[job_id]["attempt"] == 0
        wait_for(lambda: client.llen(DEFAULT_KEY) == 0, timeout=10, what="the outbox to drain")


def test_a_bad_payload_is_refused_at_send(migrated_url: str, redis_url: str) -> None:
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=migrated_url)
    sent = send_jobs(env, [{"title": "no owner"}, {"tenant_id": "acme", "user_id": "bob"}])
    assert [item.get("error") for item in sent] == ["InvalidOwnerError", "InvalidOwnerError"]
    assert "tenant_id" in sent[0]["message"] and "must be a UUID" in sent[1]["message"]
    client = redis.Redis.from_url(redis_url)
    assert [k for k in client.scan_iter("dramatiq:*") if client.type(k) == b"list" and client.llen(k)] == []


def test_a_worker_without_a_status_store_refuses_to_start(redis_url: str, tmp_path: Path) -> None:
    env = app_env(REDIS_URL=redis_url)
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        worker.process.wait(60)
        assert worker.process.returncode != 0
        assert "no status store configured" in worker.log
        assert "DATABASE_URL" in worker.log
