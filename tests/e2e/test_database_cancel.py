"""Cancellation requested in the database, honoured by the real `dramatiq coursegen.actors`
worker on both stores: a signed-in user's ``cancel_job`` (the README's browser snippet, through
the PostgREST stand-in and the real supabase client) and a plain SQL ``update`` stop a running
job at its next checkpoint and skip queued ones; and a producer that cancels right after
``send()`` cancels the job, its row written or not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from coursegen.jobs import Jobs
from coursegen.readers import PostgresReader
from coursegen.settings import Settings
from middleware.events import Owner, Status
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.postgrest import (
    PostgrestStandIn,
    anon_key,
    serve,
    service_key,
    supabase_client,
    user_token,
)
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DATA = Path(__file__).resolve().parents[1] / "data"
TERMINAL = {s.value for s in Status if s.terminal}


@dataclass
class Stack:
    kind: str
    database_url: str
    env: dict[str, str]  # what the worker and producers get
    rest: PostgrestStandIn  # the REST API a browser talks to


@pytest.fixture(params=["postgres", "supabase"])
def stack(request: pytest.FixtureRequest, database_url: str, redis_url: str) -> Iterator[Stack]:
    rest = PostgrestStandIn(database_url)
    if request.param == "postgres":
        yield Stack("postgres", database_url, app_env(REDIS_URL=redis_url, DATABASE_URL=database_url), rest)
    else:
        with serve(rest) as url:
            env = app_env(REDIS_URL=redis_url, SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=service_key())
            yield Stack("supabase", database_url, env, rest)
    rest.close()


def course(owner: Owner, name: str = "honeybees.txt") -> dict[str, Any]:
    text = (DATA / name).read_text(encoding="utf-8")
    return {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": text}]}


def finished(database_url: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    rows = fetch_rows(database_url, ids)
    return rows if len(rows) == len(ids) and all(r["status"] in TERMINAL for r in rows.values()) else None


def test_cancel_job_and_a_plain_update_stop_a_running_job_and_skip_queued_ones(
    stack: Stack, tmp_path: Path
) -> None:
    owner = create_owner(stack.database_url)
    # one thread, two seconds a stage: one job runs for about ten seconds, the others wait
    env = {**stack.env, "COURSEGEN_DEMO_PACE": "2"}
    with (
        httpx.Client(transport=stack.rest) as http,
        dramatiq_worker(env, tmp_path / "worker.log", threads=1) as worker,
    ):
        browser = supabase_client(http, anon_key(), access_token=user_token(owner.user_id))
        ids = [item["job_id"] for item in send_jobs(env, [course(owner)] * 3)]

        def under_way() -> str | None:
            rows = fetch_rows(stack.database_url, ids)
            active = [j for j, r in rows.items() if r["status"] == "active" and r["progress"] >= 10]
            return active[0] if active else None

        running = wait_for(under_way, timeout=60, what="a job to be under way")
        queued, updated = (job_id for job_id in ids if job_id != running)
        # the queued ones first: once the running one stops, the worker takes the next at once
        assert browser.rpc("cancel_job", {"job_id": queued}).execute().data == "pending"
        with psycopg.connect(stack.database_url, autocommit=True) as conn:  # as in Supabase Studio
            conn.execute(
                "update public.job_status set cancel_requested_at = now() where job_id = %s", (updated,)
            )
        assert browser.rpc("cancel_job", {"job_id": running}).execute().data == "active"

        rows = wait_for(lambda: finished(stack.database_url, ids), timeout=60, what="the three jobs to end")
        assert worker.stop() == 0
    stopped = rows[running]
    assert (stopped["status"], stopped["attempt"], stopped["result"]) == ("cancelled", 1, None)
    assert 10 <= stopped["progress"] < 100  # where it stopped
    for job_id in (queued, updated):
        row = rows[job_id]
        assert (row["status"], row["progress"], row["started_at"]) == ("cancelled", 0, None)  # never ran
        assert row["cancel_requested_at"] is not None
    assert worker.log.count("was skipped") == 2
    assert "Cancellation requested in the database for" in worker.log
    latency = stopped["finished_at"] - stopped["cancel_requested_at"]
    print(f"[{stack.kind}] running job stopped {latency.total_seconds():.2f}s after cancel_job")


PRODUCER = """
import json, sys
import coursegen.actors
from coursegen import jobs

request = json.load(sys.stdin)
me = {"user_id": request["user_id"], "tenant_id": request["tenant_id"]}
message = coursegen.actors.generate_course.send(request)
found = jobs.status(message.message_id, **me)
outcome = jobs.cancel(message.message_id, **me)
print(json.dumps({
    "job_id": message.message_id,
    "found": found.status.value,
    "cancelled": outcome.requested,
    "stamped": outcome.cancel_requested_at is not None,
}))
"""


def test_cancel_right_after_send_from_the_module_level_app(stack: Stack, tmp_path: Path) -> None:
    """`m = generate_course.send(...)` then `coursegen.jobs.cancel(m.message_id, ...)` at once,
    in one process: the pending row is still in the writer's buffer (a flush every ten seconds
    here), and the job is found, cancelled, and skipped by the worker."""
    owner = create_owner(stack.database_url)
    env = {**stack.env, "COURSEGEN_FLUSH_INTERVAL": "10"}
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER],
        input=json.dumps(course(owner)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert (answer["found"], answer["cancelled"], answer["stamped"]) == ("pending", True, True)
    job_id = answer["job_id"]
    with dramatiq_worker(stack.env, tmp_path / "worker.log") as worker:
        rows = wait_for(lambda: finished(stack.database_url, [job_id]), timeout=60, what="the job to end")
        assert worker.stop() == 0
    row = rows[job_id]
    assert (row["status"], row["started_at"]) == ("cancelled", None)
    assert "was skipped" in worker.log


def test_a_job_cancelled_before_its_row_exists_is_skipped_and_stamped_later(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A producer whose writer can only put the pending event on the outbox (Redis alone): the
    cancel finds no row even after the flush, flags the job at once, and the fleet's poller
    stamps the row once a worker has drained the outbox."""
    owner = create_owner(database_url)
    producer = Jobs(Settings(redis_url=redis_url, store="outbox"), reader=PostgresReader(database_url))
    try:
        job_id = producer.submit(course(owner))
        assert fetch_rows(database_url, [job_id]) == {}  # on the outbox, not in the database
        outcome = producer.as_user(owner.user_id, owner.tenant_id).cancel(job_id)
        other = producer.as_user(str(uuid.uuid4()), owner.tenant_id)
        with pytest.raises(LookupError):
            other.cancel(job_id)  # still nobody else's to cancel
    finally:
        producer.close()
    assert (outcome.requested, outcome.status, outcome.cancel_requested_at) == (True, Status.PENDING, None)

    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    with dramatiq_worker(env, tmp_path / "worker.log") as worker:

        def stamped() -> dict[str, Any] | None:
            row = fetch_rows(database_url, [job_id]).get(job_id)
            return row if row and row["status"] in TERMINAL and row["cancel_requested_at"] else None

        row = wait_for(stamped, timeout=60, what="the job to end, its row stamped")
        assert worker.stop() == 0
    assert (row["status"], row["started_at"]) == ("cancelled", None)
    assert "was skipped" in worker.log
