"""progress.report() inside an actor: active events with progress, throttled, superseded by completed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import dramatiq.broker
import pytest

from middleware import progress
from middleware.events import MAX_PROGRESS_MESSAGE_CHARS, Status

from .conftest import Harness, owner_payload


@pytest.fixture
def global_harness(make_harness: Callable[..., Harness]) -> Iterator[Callable[..., Harness]]:
    """Harnesses whose broker is Dramatiq's global broker (progress.report looks it up there)."""
    previous = dramatiq.broker.global_broker

    def make(**options: Any) -> Harness:
        harness = make_harness(**options)
        dramatiq.set_broker(harness.broker)
        return harness

    yield make
    dramatiq.broker.global_broker = previous


def test_progress_reports_become_active_events_of_the_attempt(global_harness: Callable[..., Harness]) -> None:
    harness = global_harness(progress_interval=0.0)
    answers: list[bool] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        answers.append(progress.report(10, "outline"))
        answers.append(progress.report(40, "lessons"))
        answers.append(progress.report(40, "lessons again"))  # no change: nothing recorded
        answers.append(progress.report(70, "password=hunter2 " + "q" * 2000))
        return "done"

    message = build_course.send(owner_payload())
    harness.run()

    assert answers == [True, True, False, True]
    job_id = message.message_id
    reports = [e for e in harness.writer.submitted_for(job_id) if e.status is Status.ACTIVE and e.progress]
    assert [(e.attempt, e.progress) for e in reports] == [(1, 10), (1, 40), (1, 70)]
    assert [e.progress_message for e in reports[:2]] == ["outline", "lessons"]
    assert "hunter2" not in reports[2].progress_message
    assert len(reports[2].progress_message) <= MAX_PROGRESS_MESSAGE_CHARS
    assert reports[0].started_at is not None
    assert {e.started_at for e in reports} == {reports[0].started_at}
    assert harness.store.last(job_id).status is Status.COMPLETED


def test_progress_is_throttled_but_100_always_goes_through(global_harness: Callable[..., Harness]) -> None:
    harness = global_harness(progress_interval=30.0)
    answers: list[bool] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        answers.append(progress.report(10))
        answers.append(progress.report(20))  # within the interval: dropped
        answers.append(progress.report(100))

    build_course.send(owner_payload())
    harness.run()

    assert answers == [True, False, True]


def test_progress_is_clamped_to_0_100(global_harness: Callable[..., Harness]) -> None:
    harness = global_harness(progress_interval=0.0)

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        progress.report(-5)
        progress.report(250)

    message = build_course.send(owner_payload())
    harness.run()

    reported = [
        e.progress for e in harness.writer.submitted_for(message.message_id) if e.progress is not None
    ]
    assert reported == [0, 100]


def test_progress_outside_a_tracked_job_does_nothing(global_harness: Callable[..., Harness]) -> None:
    harness = global_harness(progress_interval=0.0)
    answers: list[bool] = []

    @harness.actor(track_status=False)
    def housekeeping() -> None:
        answers.append(progress.report(50))

    assert progress.report(50) is False  # not inside any job
    housekeeping.send()
    harness.run()

    assert answers == [False]
    assert harness.writer.submitted == []


def test_a_percent_that_is_not_a_number_is_ignored_and_the_job_goes_on(
    global_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    harness = global_harness(progress_interval=0.0)
    answers: list[bool] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        for percent in (float("nan"), float("inf"), "fifty", None, object()):
            answers.append(progress.report(percent, "not a number"))  # type: ignore[arg-type]
        answers.append(progress.report("60", "a number as text"))  # type: ignore[arg-type]
        answers.append(progress.report(70.9))  # type: ignore[arg-type]
        answers.append(progress.report(10**100))
        return "done"

    message = build_course.send(owner_payload())
    harness.run()

    assert answers == [False] * 5 + [True, True, True]
    job_id = message.message_id
    reported = [e.progress for e in harness.writer.submitted_for(job_id) if e.progress is not None]
    assert reported == [60, 70, 100]
    assert harness.store.last(job_id).status is Status.COMPLETED
    ignored = [r for r in caplog.records if getattr(r, "action", None) == "sync_bad_progress"]
    assert len(ignored) == 1  # once per job, however often it is called
