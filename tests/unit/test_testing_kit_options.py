"""middleware.testing: a suite overriding ``status_broker_options`` gets its own broker's list."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import pytest
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Retries

from middleware import install
from middleware.testing import RecordingStore, StatusWorker, use_broker

OWNER = {"tenant_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}


class Priority(Middleware):
    """A middleware of the application's own, with an actor option."""

    actor_options = {"urgency"}


def production_middleware() -> list[Middleware]:
    return [AgeLimit(), Retries(max_retries=1, min_backoff=1, max_backoff=5), CurrentMessage(), Priority()]


@pytest.fixture
def status_broker_options() -> dict[str, Any]:
    return {"middleware": production_middleware(), "track_all": True}


def test_the_brokers_own_middleware_and_status_options_are_used(
    status_broker: StubBroker, status_worker: StatusWorker, status_store: RecordingStore
) -> None:
    assert any(isinstance(m, Priority) for m in status_broker.middleware)
    app_broker = StubBroker(middleware=production_middleware())
    install(app_broker, None)

    @dramatiq.actor(broker=app_broker, urgency="high")  # no track_status: tracked by track_all
    def fail_twice(payload: dict[str, Any]) -> None:
        raise RuntimeError("again")

    with use_broker(status_broker, fail_twice):
        message = fail_twice.send(OWNER)
        status_worker.join()
    # the broker's own Retries (max_retries=1), not the kit's default
    assert status_store.statuses(message.message_id) == ["pending", "active", "retrying", "active", "failed"]
    app_broker.close()
