"""install(): the status system's middleware, each in its place, whatever broker it is given."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Retries, TimeLimit
from pydantic import BaseModel

from middleware import (
    InstallError,
    InvalidPayloadError,
    JobStatusMiddleware,
    PayloadValidation,
    ProducerOnlyError,
    Status,
    install,
)
from middleware.metrics_endpoint import WorkerPrometheus
from middleware.wiring import ProducerOnly, TrackStatusOption, status_middleware
from middleware.writer import StatusWriter
from tests.unit.conftest import RecordingStore, owner_payload


def kinds(broker: dramatiq.Broker) -> list[type[Any]]:
    return [type(m) for m in broker.middleware]


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def status(store: RecordingStore) -> Iterator[JobStatusMiddleware]:
    writer = StatusWriter(lambda: store, flush_interval=0.01)
    yield JobStatusMiddleware(writer)
    writer.close(timeout=5)


def test_the_status_middleware_goes_first_then_metrics_then_validation(status: JobStatusMiddleware) -> None:
    broker = StubBroker()  # Dramatiq's defaults: AgeLimit first, no CurrentMessage
    defaults = kinds(broker)
    install(broker, status, metrics=True)
    assert broker.middleware[0] is status
    assert kinds(broker) == [
        JobStatusMiddleware,
        WorkerPrometheus,
        PayloadValidation,
        *defaults,
        CurrentMessage,  # progress.report reads the current message
    ]
    assert status_middleware(broker) is status


def test_first_means_first_whatever_the_broker_starts_with(status: JobStatusMiddleware) -> None:
    broker = StubBroker(middleware=[CurrentMessage(), TimeLimit(), Retries(), AgeLimit()])
    install(broker, status)
    assert kinds(broker) == [
        JobStatusMiddleware,
        PayloadValidation,
        CurrentMessage,  # already there: not added twice
        TimeLimit,
        Retries,
        AgeLimit,
    ]


def test_an_empty_broker_gets_the_status_system(status: JobStatusMiddleware) -> None:
    broker = StubBroker(middleware=[])
    install(broker, status)
    assert kinds(broker) == [JobStatusMiddleware, PayloadValidation, CurrentMessage]


def test_sync_off_keeps_the_option_valid_and_runs_no_hook() -> None:
    broker = StubBroker()
    install(broker, None, metrics=True)
    assert kinds(broker)[:3] == [TrackStatusOption, WorkerPrometheus, PayloadValidation]
    assert status_middleware(broker) is None

    @dramatiq.actor(broker=broker, track_status=True)
    def tracked(payload: dict[str, Any]) -> None:
        return None

    tracked.send({"no": "owner"})  # no status middleware: nobody asks for an owner
    assert broker.queues["default"].qsize() == 1


def test_actors_declared_after_install_get_the_options(
    status: JobStatusMiddleware, store: RecordingStore
) -> None:
    class Payload(BaseModel):
        tenant_id: str
        user_id: str
        n: int

    broker = StubBroker()
    with pytest.raises(ValueError, match="track_status"):  # what install() is for
        dramatiq.actor(lambda payload: None, broker=broker, actor_name="early", track_status=True)
    install(broker, status)

    @dramatiq.actor(broker=broker, track_status=True, payload_model=Payload)
    def counted(payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidPayloadError, match="invalid payload for counted"):
        counted.send(owner_payload(n="many"))
    message = counted.send(owner_payload(n=3))
    assert status.writer.flush(timeout=5)
    assert store.statuses(message.message_id) == [Status.PENDING]
    assert broker.queues["default"].qsize() == 1  # the invalid one was never enqueued


def test_install_refuses_a_second_time(status: JobStatusMiddleware) -> None:
    broker = StubBroker()
    install(broker, status)
    before = list(broker.middleware)
    with pytest.raises(InstallError, match="JobStatusMiddleware, PayloadValidation") as twice:
        install(broker, JobStatusMiddleware(status.writer))
    assert isinstance(twice.value, ValueError)
    assert broker.middleware == before
    other = StubBroker(middleware=[AgeLimit(), PayloadValidation()])
    with pytest.raises(InstallError, match="PayloadValidation"):
        install(other, None)


def test_a_producer_only_configuration_refuses_to_boot_a_worker(status: JobStatusMiddleware) -> None:
    broker = StubBroker()
    install(broker, status, producer_only="set DATABASE_URL")
    assert isinstance(broker.middleware[-1], ProducerOnly)
    worker = dramatiq.Worker(broker, worker_timeout=100)
    with pytest.raises(ProducerOnlyError, match="set DATABASE_URL") as refused:
        worker.start()
    assert refused.value.reason == "set DATABASE_URL"
    assert worker.workers == []  # no worker thread was started
    broker.close()
