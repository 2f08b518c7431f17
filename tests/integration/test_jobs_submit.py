"""Jobs(settings).submit sends through a broker built from those settings, not a global one."""

from __future__ import annotations

from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Message

from coursegen.app import QUEUE
from coursegen.jobs import Jobs
from coursegen.settings import Settings
from tests.support.db import create_owner, fetch_rows

pytestmark = [pytest.mark.integration]

TEXT = (Path(__file__).resolve().parents[1] / "data" / "honeybees.txt").read_text(encoding="utf-8")


def queued(url: str) -> list[str]:
    """Ids of the messages waiting on the course queue of the Redis database ``url`` names."""
    client = redis.Redis.from_url(url)
    try:
        return sorted(Message.decode(data).message_id for data in client.hvals(f"dramatiq:{QUEUE}.msgs"))
    finally:
        client.close()


def test_each_jobs_sends_through_the_broker_its_own_settings_describe(
    redis_url: str, database_url: str
) -> None:
    owner = create_owner(database_url)
    request = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": TEXT}]}
    base = redis_url.rsplit("/", 1)[0]
    first_url, second_url = f"{base}/1", f"{base}/2"
    first = Jobs(Settings(redis_url=first_url, database_url=database_url))
    second = Jobs(Settings(redis_url=second_url, database_url=database_url))
    global_before = dramatiq.broker.global_broker
    try:
        one = first.submit(request)
        two = second.submit(request)
        assert queued(first_url) == [one]
        assert queued(second_url) == [two]
        # the pending rows were written by each Jobs' own writer before submit returned
        assert fetch_rows(database_url, [one])[one]["status"] == "pending"
        assert first.as_user(owner.user_id, owner.tenant_id).status(one).status.value == "pending"
        assert second.as_user(owner.user_id, owner.tenant_id).status(two).status.value == "pending"
        assert first.app.broker is not second.app.broker
        assert dramatiq.broker.global_broker is global_before  # nobody's global broker was touched
    finally:
        first.close()
        second.close()
    rows = fetch_rows(database_url, [one, two])
    assert {row["status"] for row in rows.values()} == {"pending"}
    assert {row["actor_name"] for row in rows.values()} == {"generate_course"}


def test_a_closed_jobs_builds_its_app_again_when_it_submits(redis_url: str, database_url: str) -> None:
    owner = create_owner(database_url)
    request = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "sources": [{"text": TEXT}]}
    jobs = Jobs(Settings(redis_url=redis_url, database_url=database_url))
    try:
        first_app = jobs.app
        one = jobs.submit(request)
        jobs.close()
        two = jobs.submit(request)
        assert jobs.app is not first_app
        assert sorted(queued(redis_url)) == sorted([one, two])
    finally:
        jobs.close()
