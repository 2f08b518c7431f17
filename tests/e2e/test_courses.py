"""Course generation for real: producer processes, the real `dramatiq coursegen.actors` worker,
real Redis and PostgreSQL, checked from the job_status rows.

A course from a real document, a thin request that fails, a job cancelled while queued and one
cancelled while running (neither retried), and payload validation at both ends.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from coursegen.course import CourseRequest, build_course
from coursegen.jobs import Jobs
from coursegen.settings import Settings
from middleware.events import Owner
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DATA = Path(__file__).resolve().parents[1] / "data"
QUEUE = "course-generation"
STAGES = ("ingest", "outline", "lessons", "quizzes", "assemble")


def course_request(owner: Owner, *names: str, **fields: Any) -> dict[str, Any]:
    sources = [{"title": name, "text": (DATA / name).read_text(encoding="utf-8")} for name in names]
    return {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": sources, **fields}


def finished(url: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    rows = fetch_rows(url, ids)
    terminal = {"completed", "failed", "cancelled", "skipped"}
    return rows if len(rows) == len(ids) and all(r["status"] in terminal for r in rows.values()) else None


def queued_messages(client: redis.Redis) -> dict[str, int]:
    """Messages Redis holds for the queue and its delay queue (a retry would wait in the latter)."""
    return {key: int(client.hlen(f"dramatiq:{key}.msgs")) for key in (QUEUE, f"{QUEUE}.DQ")}


def test_a_real_document_becomes_a_course_and_thin_material_fails_at_once(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    owner = create_owner(database_url)
    # each stage lingers longer than a batch waits for company (COURSEGEN_FLUSH_MAX_WAIT, 0.8 s)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url, COURSEGEN_DEMO_PACE="1.0")
    good = course_request(owner, "printing-press.md")
    thin = {**course_request(owner), "title": "Thin", "sources": [{"text": "Too few words to teach."}]}
    ids = [item["job_id"] for item in send_jobs(env, [good, thin])]  # queued before a worker runs
    seen: set[str] = set()
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:

        def done() -> dict[str, dict[str, Any]] | None:
            row = fetch_rows(database_url, [ids[0]]).get(ids[0])
            if row and row["progress_message"]:
                seen.add(row["progress_message"].split(":")[0])
            return finished(database_url, ids)

        rows = wait_for(done, timeout=60, interval=0.05, what="both jobs to finish")
        assert worker.stop() == 0
    course_row, thin_row = rows[ids[0]], rows[ids[1]]
    assert (course_row["status"], course_row["attempt"], course_row["progress"]) == ("completed", 1, 100)
    assert len(seen & set(STAGES)) >= 3, f"progress seen: {seen}"  # each stage lingers 1 s
    course = course_row["result"]
    assert course["title"] == "The Printing Press"
    assert len(course["modules"]) >= 3
    assert all(lesson["quiz"] for m in course["modules"] for lesson in m["lessons"])
    # the worker made exactly what the generator makes here: deterministic across processes
    expected = build_course(CourseRequest.model_validate(good))
    assert course == json.loads(expected.model_dump_json())

    assert (thin_row["status"], thin_row["attempt"], thin_row["error_type"]) == (
        "failed",
        1,
        "CourseGenerationError",
    )
    assert "the sources hold 5 words; a course needs at least 50" in thin_row["error_message"]
    assert thin_row["next_retry_at"] is None and thin_row["result"] is None


def test_a_job_cancelled_while_queued_ends_cancelled_without_running(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    victim, other = (item["job_id"] for item in send_jobs(env, [course_request(owner, "honeybees.txt")] * 2))
    jobs = Jobs(Settings(redis_url=redis_url, database_url=database_url))
    me = jobs.as_user(owner.user_id, owner.tenant_id)
    try:
        assert me.status(victim).status.value == "pending"  # no worker runs yet
        outcome = me.cancel(victim)
        assert (outcome.requested, outcome.status.value) == (True, "pending")
    finally:
        jobs.close()

    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        rows = wait_for(lambda: finished(database_url, [victim, other]), timeout=60, what="both jobs")
        assert worker.stop() == 0
    row = rows[victim]
    assert (row["status"], row["progress"], row["result"], row["error_type"]) == ("cancelled", 0, None, None)
    assert row["started_at"] is None  # the actor never ran
    assert row["cancel_requested_at"] is not None and row["finished_at"] >= row["cancel_requested_at"]
    assert rows[other]["status"] == "completed"
    assert "was skipped" in worker.log


def test_a_job_cancelled_while_running_stops_at_its_next_checkpoint_and_is_not_retried(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    owner = create_owner(database_url)
    # two seconds a stage: ten seconds a job, plenty of time to cancel it in the middle
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url, COURSEGEN_DEMO_PACE="2")
    client = redis.Redis.from_url(redis_url)
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        [job_id] = [item["job_id"] for item in send_jobs(env, [course_request(owner, "printing-press.md")])]

        def running() -> bool:
            row = fetch_rows(database_url, [job_id]).get(job_id)
            return bool(row and row["status"] == "active" and row["progress"] >= 10)

        wait_for(running, timeout=30, what="the job to be under way")
        jobs = Jobs(Settings(redis_url=redis_url, database_url=database_url))
        try:
            outcome = jobs.as_user(owner.user_id, owner.tenant_id).cancel(job_id)
        finally:
            jobs.close()
        assert (outcome.requested, outcome.status.value) == (True, "active")
        rows = wait_for(lambda: finished(database_url, [job_id]), timeout=10, what="the job to stop")
        # a retry would be re-enqueued before the cancelled status is even sent: look now
        wait_for(lambda: queued_messages(client)[QUEUE] == 0, timeout=10, what="the message to be acked")
        assert queued_messages(client) == {QUEUE: 0, f"{QUEUE}.DQ": 0}
        assert worker.stop() == 0
    row = rows[job_id]
    assert (row["status"], row["attempt"], row["result"]) == ("cancelled", 1, None)
    assert 10 <= row["progress"] < 100  # where it stopped
    assert row["finished_at"] - row["cancel_requested_at"] < dt.timedelta(seconds=3)
    assert "Retrying message" not in worker.log
    assert "expected exception JobCancelled" in worker.log


def test_an_invalid_payload_is_refused_at_send_and_nothing_is_enqueued(
    database_url: str, redis_url: str
) -> None:
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    base = course_request(owner, "honeybees.txt")
    sent = send_jobs(
        env,
        [
            {**base, "sources": []},
            {**base, "modules": 40, "audience": "experts"},
            {**base, "sources": [{"title": "big", "text": "word " * 500_000}]},
        ],
    )
    assert [item.get("error") for item in sent] == ["InvalidPayloadError"] * 3
    assert "sources: List should have at least 1 item" in sent[0]["message"]
    assert "2 validation errors" in sent[1]["message"]
    assert "audience: Input should be 'beginner', 'intermediate' or 'advanced'" in sent[1]["message"]
    assert "modules: Input should be less than or equal to 12" in sent[1]["message"]
    assert "at most 2097152 (2 MiB) in all" in sent[2]["message"]
    client = redis.Redis.from_url(redis_url)
    assert [k for k in client.scan_iter("dramatiq:*") if client.type(k) == b"list" and client.llen(k)] == []
    assert fetch_rows(database_url) == {}


def test_a_payload_that_slips_past_fails_when_run_without_retries(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A hand-made message (an old producer, a script) enqueued with a plain broker."""
    owner = create_owner(database_url)
    plain = RedisBroker(url=redis_url)  # Dramatiq's default middleware: no payload check
    plain.declare_queue(QUEUE)
    bad = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "title": "Old", "sources": "notes.txt"}
    message = plain.enqueue(
        Message(queue_name=QUEUE, actor_name="generate_course", args=(bad,), kwargs={}, options={})
    )
    plain.close()
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    client = redis.Redis.from_url(redis_url)
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        rows = wait_for(lambda: finished(database_url, [message.message_id]), timeout=60, what="the job")
        wait_for(lambda: queued_messages(client)[QUEUE] == 0, timeout=10, what="the message to be acked")
        assert queued_messages(client) == {QUEUE: 0, f"{QUEUE}.DQ": 0}
        assert worker.stop() == 0
    row = rows[message.message_id]
    assert (row["status"], row["attempt"], row["error_type"]) == ("failed", 1, "InvalidPayloadError")
    assert "sources: Input should be a valid list" in row["error_message"]
    assert row["next_retry_at"] is None
    assert (row["tenant_id"], row["user_id"]) == owner
    assert str(uuid.UUID(row["job_id"])) == message.message_id
