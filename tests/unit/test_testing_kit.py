"""middleware.testing: the fixtures an application's developer gets (loaded by its pytest11 entry
point, as in any project that installs the package)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Retries
from pydantic import BaseModel

from middleware import InvalidOwnerError, InvalidPayloadError, JobStatusMiddleware, Status, install, progress
from middleware.testing import (
    InMemoryCancelFlags,
    RecordingStore,
    StatusWorker,
    make_status_broker,
    use_broker,
)
from middleware.wiring import status_middleware

OWNER = {"tenant_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}


def test_a_job_is_recorded_event_by_event(
    status_broker: StubBroker, status_worker: StatusWorker, status_store: RecordingStore
) -> None:
    @dramatiq.actor(track_status=True)  # the kit's broker is the global one for the test
    def count(payload: dict[str, Any]) -> int:
        progress.report(40, "halfway")
        progress.report(80)
        return len(payload["text"].split())

    assert count.broker is status_broker
    message = count.send({**OWNER, "text": "one two three"})
    status_worker.join()
    job = message.message_id
    assert status_store.statuses(job) == ["pending", "active", "active", "active", "completed"]
    assert status_store.progress(job) == [(40, "halfway"), (80, None)]
    last = status_store.last(job)
    assert (last.status, last.result, last.attempt) == (Status.COMPLETED, 3, 1)
    assert (last.tenant_id, last.user_id, last.actor_name) == (OWNER["tenant_id"], OWNER["user_id"], "count")
    assert status_store.job_ids() == [job]
    # the writer delivered the job's events (coalesced): its final one was written
    assert status_store.written(job)[-1].status is Status.COMPLETED
    assert {o.outcome for o in status_store.outcomes(job)} == {"applied"}


def test_failures_retries_and_refusals_at_send(
    status_broker: StubBroker, status_worker: StatusWorker, status_store: RecordingStore
) -> None:
    class Payload(BaseModel):
        tenant_id: uuid.UUID
        user_id: uuid.UUID
        n: int

    @dramatiq.actor(track_status=True, max_retries=1, payload_model=Payload)
    def flaky(payload: dict[str, Any]) -> None:
        raise RuntimeError(f"no luck with {payload['n']}")

    message = flaky.send({**OWNER, "n": 7})
    with pytest.raises(InvalidPayloadError, match="n: Input should be a valid integer"):
        flaky.send({**OWNER, "n": "seven"})
    with pytest.raises(InvalidOwnerError, match="tenant_id"):
        flaky.send({"n": 7})
    status_worker.join()
    job = message.message_id
    assert status_store.statuses(job) == ["pending", "active", "retrying", "active", "failed"]
    last = status_store.last(job)
    assert (last.attempt, last.error_type, last.error_message) == (2, "RuntimeError", "no luck with 7")
    assert status_store.job_ids() == [job]  # nothing of the refused sends
    with pytest.raises(AssertionError, match="no status event for job nobody"):
        status_store.last("nobody")


def test_cancelled_before_it_runs_and_at_a_checkpoint(
    status_broker: StubBroker, status_store: RecordingStore, status_cancel_flags: InMemoryCancelFlags
) -> None:
    checkpoints: list[int] = []

    @dramatiq.actor(track_status=True)
    def long(payload: dict[str, Any]) -> None:
        for percent in (10, 20, 30):
            checkpoints.append(percent)
            if percent == 20:  # a producer cancels the job while it runs
                status_cancel_flags.request(CurrentMessage.get_current_message().message_id)
            progress.report(percent)

    queued = long.send(OWNER)
    status_cancel_flags.request(queued.message_id)  # before any worker runs
    worker = StatusWorker(status_broker)
    worker.start()
    try:
        worker.join()
        assert status_store.statuses(queued.message_id) == ["pending", "cancelled"]
        assert checkpoints == []

        running = long.send(OWNER)
        worker.join()
    finally:
        worker.stop()
    assert status_store.statuses(running.message_id) == ["pending", "active", "active", "cancelled"]
    assert status_store.progress(running.message_id) == [(10, None)]
    assert checkpoints == [10, 20]  # stopped at the checkpoint after the request


def test_join_waits_for_what_jobs_send_and_writes_their_events() -> None:
    store = RecordingStore()
    broker = make_status_broker(store, flush_interval=60.0)  # only an explicit flush writes
    worker = StatusWorker(broker)

    @dramatiq.actor(broker=broker, track_status=True, queue_name="second")
    def second(payload: dict[str, Any]) -> str:
        return "done"

    @dramatiq.actor(broker=broker, track_status=True, queue_name="first")
    def first(payload: dict[str, Any]) -> str:
        return second.send(payload).message_id

    worker.start()
    try:
        message = first.send(OWNER)
        worker.join()
        child = store.last(message.message_id).result
        assert store.statuses(child) == ["pending", "active", "completed"]
        # one batch, written by join()'s flush: each job's final event, the rest coalesced away
        assert sorted((e.job_id, e.status) for e in store.written()) == sorted(
            [(message.message_id, Status.COMPLETED), (child, Status.COMPLETED)]
        )
    finally:
        worker.stop()
        broker.close()


def test_the_kit_wires_its_broker_through_install(status_broker: StubBroker) -> None:
    assert isinstance(status_broker.middleware[0], JobStatusMiddleware)
    assert status_middleware(status_broker) is status_broker.middleware[0]
    assert dramatiq.get_broker() is status_broker
    assert any(isinstance(m, CurrentMessage) for m in status_broker.middleware)
    retries = next(m for m in status_broker.middleware if isinstance(m, Retries))
    assert (retries.min_backoff, retries.max_backoff) == (1, 10)


class RateLimitOption(Middleware):
    """A middleware of the application's that the kit's broker does not have."""

    actor_options = {"rate_limit"}


@pytest.fixture
def app_broker() -> Iterator[StubBroker]:
    """What an application does at import: its own broker, its actors declared on it."""
    broker = StubBroker(middleware=[AgeLimit(), Retries(), CurrentMessage(), RateLimitOption()])
    install(broker, None)
    yield broker
    broker.close()


def test_use_broker_moves_an_applications_actor_for_the_block_and_back(
    app_broker: StubBroker,
    status_broker: StubBroker,
    status_worker: StatusWorker,
    status_store: RecordingStore,
) -> None:
    @dramatiq.actor(broker=app_broker, track_status=True, max_retries=0)
    def shout(payload: dict[str, Any]) -> str:
        return payload["text"].upper()

    with use_broker(status_broker, shout):
        assert shout.broker is status_broker
        message = shout.send({**OWNER, "text": "hi"})
        status_worker.join()
    assert status_store.last(message.message_id).result == "HI"
    assert shout.broker is app_broker
    assert "shout" not in status_broker.actors
    assert app_broker.get_actor("shout") is shout

    @dramatiq.actor(broker=app_broker, rate_limit=3)
    def limited() -> None:
        return None

    with pytest.raises(ValueError, match=r"limited has options \['rate_limit'\]"):
        with use_broker(status_broker, shout, limited):
            pass
    assert (shout.broker, limited.broker) == (app_broker, app_broker)  # both back home
    assert "shout" not in status_broker.actors
