"""coursegen.testing: the kit's broker writing real rows to a migrated database of the test's own."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq.brokers.stub import StubBroker

from coursegen.testing import StatusDatabase
from middleware import Status, progress
from middleware.stores.base import StatusStore
from middleware.testing import RecordingStore, StatusWorker

pytestmark = [pytest.mark.integration]


@pytest.fixture
def status_backend(status_database: StatusDatabase) -> StatusStore:
    return status_database.store()


def test_a_job_writes_its_row_and_an_unknown_owner_is_rejected(
    status_database: StatusDatabase,
    status_broker: StubBroker,
    status_worker: StatusWorker,
    status_store: RecordingStore,
) -> None:
    @dramatiq.actor(track_status=True, max_retries=0)
    def shout(payload: dict[str, Any]) -> str:
        progress.report(60, "loud")
        return payload["text"].upper()

    owner = status_database.owner()
    good = shout.send({"tenant_id": owner.tenant_id, "user_id": owner.user_id, "text": "hi"})
    stranger = shout.send({"tenant_id": str(uuid.uuid4()), "user_id": owner.user_id, "text": "who?"})
    status_worker.join()

    row = status_database.row(good.message_id)
    assert row is not None
    assert (row["status"], row["result"], row["actor_name"]) == ("completed", "HI", "shout")
    assert str(row["user_id"]) == owner.user_id
    assert status_store.statuses(good.message_id)[-1] is Status.COMPLETED
    assert {o.outcome for o in status_store.outcomes(good.message_id)} <= {"applied", "stale"}

    assert status_database.row(stranger.message_id) is None  # the database refused it
    assert {o.outcome for o in status_store.outcomes(stranger.message_id)} == {"rejected"}
    assert status_store.last(stranger.message_id).status is Status.COMPLETED  # the actor ran


def test_each_test_gets_a_fresh_copy_of_the_migrated_template(
    status_database: StatusDatabase, status_template_database: str
) -> None:
    with psycopg.connect(status_database.url) as conn:
        assert conn.execute("select count(*) from public.job_status").fetchone() == (0,)
        name = conn.execute("select current_database()").fetchone()
        migrations = conn.execute("select count(*) from supabase_migrations.schema_migrations").fetchone()
    assert name is not None and name[0] != status_template_database
    assert migrations is not None and migrations[0] > 0
    assert repr(status_database) == "StatusDatabase(...)"  # the URL may hold a password


def test_a_hand_made_message_with_a_timestamp_in_seconds_still_gets_its_row(
    status_database: StatusDatabase, status_broker: StubBroker, status_worker: StatusWorker
) -> None:
    """A producer that writes epoch seconds where Dramatiq has milliseconds (or any time a row
    cannot hold): the job's row ends completed, without an enqueued_at, instead of every event
    being rejected by the database's time check."""

    @dramatiq.actor(track_status=True, max_retries=0)
    def shout(payload: dict[str, Any]) -> str:
        return payload["text"].upper()

    owner = status_database.owner()
    payload = {"tenant_id": owner.tenant_id, "user_id": owner.user_id, "text": "hi"}
    sent = [
        status_broker.enqueue(shout.message(payload).copy(message_timestamp=timestamp))
        for timestamp in (1_780_000_000, float("nan"), 10**30)
    ]
    status_worker.join()
    for message in sent:
        row = status_database.row(message.message_id)
        assert row is not None, message.message_timestamp
        assert (row["status"], row["result"], row["enqueued_at"]) == ("completed", "HI", None)
