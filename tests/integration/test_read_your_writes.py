"""Read-your-writes for producers, on both stores: in the process that sent a job, status, wait
and cancel find it at once, though its pending row is still in the writer's buffer (flushed
every ten seconds here); acting for another user, the job is unknown and nothing is flushed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coursegen.jobs import JobNotFound, Jobs, WaitTimeout
from coursegen.settings import Settings
from middleware import RedisCancelFlags
from middleware.events import Owner, Status
from tests.support.db import create_owner, fetch_rows
from tests.support.postgrest import PostgrestStandIn, serve, service_key

pytestmark = [pytest.mark.integration]

TEXT = (Path(__file__).resolve().parents[1] / "data" / "honeybees.txt").read_text(encoding="utf-8")


@pytest.fixture(params=["postgres", "supabase"])
def jobs(request: pytest.FixtureRequest, database_url: str, redis_url: str) -> Iterator[Jobs]:
    slow = {"redis_url": redis_url, "flush_interval": 10.0}  # nothing is written unless flushed
    if request.param == "postgres":
        client = Jobs(Settings(database_url=database_url, **slow))
        yield client
        client.close()
        return
    stand_in = PostgrestStandIn(database_url)
    with serve(stand_in) as url:
        client = Jobs(Settings(supabase_url=url, supabase_service_role_key=service_key(), **slow))
        yield client
        client.close()
    stand_in.close()


def send(jobs: Jobs, owner: Owner) -> str:
    payload: dict[str, Any] = {
        "tenant_id": owner.tenant_id,
        "user_id": owner.user_id,
        "sources": [{"text": TEXT}],
    }
    return str(jobs.app.generate_course.send(payload).message_id)


def test_status_wait_and_cancel_find_a_job_sent_a_moment_ago(
    jobs: Jobs, database_url: str, redis_url: str
) -> None:
    owner = create_owner(database_url)
    me = jobs.as_user(owner.user_id, owner.tenant_id)

    job = send(jobs, owner)
    assert fetch_rows(database_url, [job]) == {}  # in the writer's buffer
    assert me.status(job).status is Status.PENDING

    job = send(jobs, owner)
    with pytest.raises(WaitTimeout) as waited:  # found at once: it waits for the end, not the row
        me.wait(job, timeout=0.2, interval=0.05, missing_grace=0)
    assert waited.value.last is not None and waited.value.last.status is Status.PENDING

    job = send(jobs, owner)
    outcome = me.cancel(job)
    assert (outcome.requested, outcome.status) == (True, Status.PENDING)
    assert outcome.cancel_requested_at is not None  # the row was written, then stamped
    assert RedisCancelFlags(jobs.cancel_flags.client, refresh=0).is_requested(job)


def test_another_users_lookup_of_a_job_sent_here_flushes_nothing(jobs: Jobs, database_url: str) -> None:
    alice = create_owner(database_url)
    bob = Owner(alice.tenant_id, create_owner(database_url).user_id)
    job = send(jobs, alice)
    for call in ("status", "cancel"):
        with pytest.raises(JobNotFound, match=f"^no job {job}$"):
            getattr(jobs.as_user(bob.user_id, bob.tenant_id), call)(job)
    with pytest.raises(JobNotFound):
        jobs.as_user(bob.user_id, bob.tenant_id).wait(job, timeout=5, missing_grace=0)
    # as for an unknown job, nothing was flushed: the row is still only in alice's writer
    assert fetch_rows(database_url, [job]) == {}
    assert jobs.as_user(alice.user_id, alice.tenant_id).status(job).status is Status.PENDING
    assert fetch_rows(database_url, [job])[job]["cancel_requested_at"] is None
