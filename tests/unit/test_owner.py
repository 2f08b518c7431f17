"""A tracked job must name its owner; the check happens at send(), before anything is queued."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from dramatiq.middleware import MiddlewareError

from middleware.errors import InvalidOwnerError, StatusSyncError
from middleware.events import Status
from middleware.message_fields import owner_from_payload

from .conftest import Harness, MetricDelta, owner_payload

TENANT = str(uuid.uuid4())
USER = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        pytest.param(({"user_id": USER, "title": "x"},), {}, "must carry", id="no-tenant"),
        pytest.param(({"tenant_id": TENANT},), {}, "must carry", id="no-user"),
        pytest.param(
            ({"tenant_id": TENANT, "user_id": "alice"},), {}, "user_id must be a UUID", id="user-not-uuid"
        ),
        pytest.param(
            ({"tenant_id": "acme", "user_id": USER},), {}, "tenant_id must be a UUID", id="tenant-not-uuid"
        ),
        pytest.param(("just a string",), {}, "must carry", id="payload-not-a-dict"),
        pytest.param((), {}, "must carry", id="no-payload"),
    ],
)
def test_tracked_send_without_a_valid_owner_raises_and_enqueues_nothing(
    harness: Harness, args: tuple[Any, ...], kwargs: dict[str, Any], problem: str
) -> None:
    @harness.actor
    def build_course(*args: Any, **kwargs: Any) -> None:
        return None

    with pytest.raises(InvalidOwnerError) as caught:
        build_course.send(*args, **kwargs)

    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, MiddlewareError)  # else Dramatiq would log it and enqueue anyway
    assert isinstance(error, StatusSyncError)
    assert error.actor_name == "build_course"
    assert problem in error.problem
    assert harness.broker.queues["default"].qsize() == 0
    assert harness.broker.queues["default.DQ"].qsize() == 0
    assert harness.writer.submitted == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"retries": 0}, id="retries"),
        pytest.param({"retries": 3, "max_retries": 5}, id="retries-and-max"),
        pytest.param({"requeue_timestamp": 1}, id="requeue-timestamp"),
    ],
)
def test_a_producers_own_options_do_not_skip_the_owner_check(
    harness: Harness, options: dict[str, Any]
) -> None:
    """Options a producer may set, some of which Dramatiq's Retries sets on its copies too."""

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidOwnerError):
        build_course.send_with_options(args=({"text": "no owner"},), **options)
    assert harness.broker.queues["default"].qsize() == 0
    assert harness.writer.submitted == []

    message = build_course.send_with_options(args=(owner_payload(),), **options)
    assert [event.status for event in harness.writer.submitted_for(message.message_id)] == [Status.PENDING]


def test_delayed_tracked_send_without_owner_is_refused_too(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidOwnerError):
        build_course.send_with_options(args=({"title": "no owner"},), delay=10_000)

    assert harness.broker.queues["default"].qsize() == 0
    assert harness.broker.queues["default.DQ"].qsize() == 0


def test_owner_may_come_from_keyword_arguments(harness: Harness) -> None:
    @harness.actor
    def build_course(*, tenant_id: str, user_id: str, title: str) -> str:
        return title

    message = build_course.send(tenant_id=TENANT, user_id=USER, title="Go")
    assert harness.broker.queues["default"].qsize() == 1
    harness.run()

    done = harness.store.last(message.message_id)
    assert done.status is Status.COMPLETED
    assert (done.tenant_id, done.user_id, done.result) == (TENANT, USER, "Go")


def test_untracked_actor_sends_without_owner(harness: Harness) -> None:
    @harness.actor(track_status=False)
    def housekeeping(payload: dict[str, Any]) -> None:
        return None

    housekeeping.send({"title": "no owner needed"})

    assert harness.broker.queues["default"].qsize() == 1
    assert harness.writer.flush(timeout=5)
    assert harness.writer.submitted == []
    assert harness.store.events == []


def test_tracked_and_untracked_actors_share_a_broker(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    @harness.actor(track_status=False)
    def housekeeping(payload: dict[str, Any]) -> None:
        return None

    tracked = build_course.send(owner_payload())
    housekeeping.send({})
    harness.run()

    assert {event.job_id for event in harness.store.events} == {tracked.message_id}


def test_a_message_that_loses_its_owner_is_counted_and_still_runs(make_harness: Any) -> None:
    lost = threading.Event()

    def owner_of(message: Any) -> Any:
        return None if lost.is_set() else owner_from_payload(message)

    harness: Harness = make_harness(owner_of=owner_of)
    delta = MetricDelta().watch("job_status_sync_failures_total", reason="no_owner")
    ran: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        ran.append(1)

    message = build_course.send(owner_payload())
    lost.set()
    harness.run()

    assert ran == [1]
    assert delta("job_status_sync_failures_total", reason="no_owner") == 1  # once per message run
    assert harness.store.statuses(message.message_id) == [Status.PENDING]
