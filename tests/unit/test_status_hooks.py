"""Every row of the hook table in docs/design.md ("Hook mapping"), on a StubBroker.

Transitions are observed twice: what the hooks submit to the writer (SpyWriter, every event)
and what the writer handed to the recording store (after coalescing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage

from middleware.events import Status
from middleware.status_sync import UNBUILDABLE_TYPE

from .conftest import Harness, owner_payload, wait_until


def _retry_copies(harness: Harness, job_id: str) -> list[tuple[Any, int]]:
    """The copies Retries re-enqueued (with a delay), not their return from the delay queue."""
    return [
        (message, delay)
        for message, delay in harness.enqueues.enqueued
        if message.message_id == job_id and "retries" in message.options and delay is not None
    ]


def _pairs(harness: Harness, job_id: str) -> list[tuple[Status, int]]:
    return [(event.status, event.attempt) for event in harness.writer.submitted_for(job_id)]


def test_send_emits_pending_with_attempt_zero_and_enqueued_at(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    payload = owner_payload(title="Rust")
    message = build_course.send(payload)
    assert harness.writer.flush(timeout=5)

    [event] = harness.store.for_job(message.message_id)  # no worker: nothing but the send
    assert event.status is Status.PENDING
    assert event.attempt == 0
    assert event.enqueued_at == message.message_timestamp / 1000
    assert event.event_at >= event.enqueued_at
    assert event.started_at is None
    assert (event.tenant_id, event.user_id) == (payload["tenant_id"], payload["user_id"])
    assert (event.actor_name, event.queue_name) == ("build_course", "default")


def test_active_with_attempt_one_and_started_at_is_written_while_the_job_runs(harness: Harness) -> None:
    seen: dict[str, Any] = {}

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        seen["flushed"] = harness.writer.flush(timeout=5)
        seen["row"] = harness.store.last(CurrentMessage.get_current_message().message_id)

    before = current_millis() / 1000
    message = build_course.send(owner_payload())
    harness.run()

    assert seen["flushed"] is True
    active = seen["row"]
    assert active.job_id == message.message_id
    assert active.status is Status.ACTIVE
    assert active.attempt == 1
    assert active.started_at is not None
    assert before <= active.enqueued_at <= active.started_at <= active.event_at


def test_a_job_that_ends_within_a_flush_interval_costs_one_row_write(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(flush_interval=60.0)  # nothing is written until run() flushes

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    message = build_course.send(owner_payload())
    harness.run()

    # pending, the start and completed all happened before the flush: one event reaches the store
    [done] = harness.store.for_job(message.message_id)
    assert done.status is Status.COMPLETED
    assert done.started_at is not None and done.started_at <= done.event_at
    assert done.enqueued_at == message.message_timestamp / 1000
    assert harness.writer.statuses(message.message_id) == [Status.PENDING, Status.ACTIVE, Status.COMPLETED]


def test_success_emits_completed_with_the_result(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> dict[str, Any]:
        return {"title": payload["title"], "modules": 3}

    message = build_course.send(owner_payload(title="Rust"))
    harness.run()

    done = harness.store.last(message.message_id)
    assert done.status is Status.COMPLETED
    assert done.attempt == 1
    assert done.result == {"title": "Rust", "modules": 3}
    # The SQL function sets progress 100 on completion; the event never carries a lower value.
    assert done.progress in (None, 100)
    assert done.error_type is None and done.error_message is None and done.next_retry_at is None
    [active] = [e for e in harness.writer.submitted_for(message.message_id) if e.status is Status.ACTIVE]
    assert done.started_at == active.started_at
    assert done.enqueued_at == message.message_timestamp / 1000
    assert done.event_at >= done.started_at
    assert _pairs(harness, message.message_id) == [
        (Status.PENDING, 0),
        (Status.ACTIVE, 1),
        (Status.COMPLETED, 1),
    ]


def test_exception_with_retries_left_emits_retrying_with_the_retry_copys_eta(harness: Harness) -> None:
    calls: list[int] = []

    @harness.actor(min_backoff=100, max_backoff=100)  # a delay of 50..100 ms
    def build_course(payload: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("upstream refused postgresql://svc:hunter2@db.internal/app")
        return "ok"

    message = build_course.send(owner_payload())
    harness.run()

    job_id = message.message_id
    [retrying] = [e for e in harness.writer.submitted_for(job_id) if e.status is Status.RETRYING]
    assert retrying.attempt == 1
    assert retrying.error_type == "RuntimeError"
    assert "upstream refused" in retrying.error_message
    assert "hunter2" not in retrying.error_message
    # next_retry_at is the eta (epoch ms) Retries put on the copy it re-enqueued, in seconds.
    [(copy, delay)] = _retry_copies(harness, job_id)
    assert delay is not None and 50 <= delay <= 100
    assert retrying.next_retry_at == copy.options["eta"] / 1000
    assert retrying.event_at < retrying.next_retry_at <= retrying.event_at + delay / 1000
    [second] = [
        e for e in harness.writer.submitted_for(job_id) if e.status is Status.ACTIVE and e.attempt == 2
    ]
    assert second.started_at >= retrying.next_retry_at - 0.001
    assert harness.store.last(job_id).status is Status.COMPLETED


def test_exhausted_retries_emit_failed(harness: Harness) -> None:
    @harness.actor(max_retries=1)
    def build_course(payload: dict[str, Any]) -> None:
        raise RuntimeError("model unavailable")

    message = build_course.send(owner_payload())
    harness.run()

    job_id = message.message_id
    assert _pairs(harness, job_id) == [
        (Status.PENDING, 0),
        (Status.ACTIVE, 1),
        (Status.RETRYING, 1),
        (Status.ACTIVE, 2),
        (Status.FAILED, 2),
    ]
    failed = harness.store.last(job_id)
    assert failed.status is Status.FAILED
    assert failed.attempt == 2
    assert failed.error_type == "RuntimeError"
    assert failed.error_message == "model unavailable"
    assert failed.next_retry_at is None


def test_exception_listed_in_throws_fails_at_once_without_retrying(harness: Harness) -> None:
    calls: list[int] = []

    @harness.actor(throws=(ValueError,))
    def build_course(payload: dict[str, Any]) -> None:
        calls.append(1)
        raise ValueError("bad outline")

    message = build_course.send(owner_payload())
    harness.run()

    job_id = message.message_id
    assert calls == [1]
    assert _pairs(harness, job_id) == [(Status.PENDING, 0), (Status.ACTIVE, 1), (Status.FAILED, 1)]
    failed = harness.store.last(job_id)
    assert (failed.status, failed.error_type, failed.error_message) == (
        Status.FAILED,
        "ValueError",
        "bad outline",
    )
    assert _retry_copies(harness, job_id) == []


def test_age_limit_expiry_emits_skipped(harness: Harness) -> None:
    ran: list[int] = []

    @harness.actor(max_age=1)  # milliseconds
    def build_course(payload: dict[str, Any]) -> None:
        ran.append(1)

    message = build_course.send(owner_payload())
    wait_until(lambda: current_millis() - message.message_timestamp >= 5)
    harness.run()

    job_id = message.message_id
    assert ran == []
    skipped = harness.store.last(job_id)
    assert skipped.status is Status.SKIPPED
    assert skipped.attempt == 1
    statuses = harness.writer.statuses(job_id)
    assert statuses[-1] is Status.SKIPPED
    assert Status.COMPLETED not in statuses and Status.FAILED not in statuses


def test_cancel_requested_before_start_skips_the_job_as_cancelled(make_harness: Any) -> None:
    cancelled: set[str] = set()
    harness = make_harness(is_cancel_requested=cancelled.__contains__)
    ran: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        ran.append(1)

    message = build_course.send(owner_payload())
    cancelled.add(message.message_id)
    harness.run()

    assert ran == []
    assert harness.writer.statuses(message.message_id) == [Status.PENDING, Status.CANCELLED]
    assert harness.store.last(message.message_id).status is Status.CANCELLED


def test_failing_twice_then_succeeding_reports_every_attempt(harness: Harness) -> None:
    calls: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError(f"attempt {len(calls)} lost the model connection")
        return "built"

    message = build_course.send(owner_payload())
    harness.run()

    job_id = message.message_id
    assert _pairs(harness, job_id) == [
        (Status.PENDING, 0),
        (Status.ACTIVE, 1),
        (Status.RETRYING, 1),
        (Status.ACTIVE, 2),
        (Status.RETRYING, 2),
        (Status.ACTIVE, 3),
        (Status.COMPLETED, 3),
    ]
    retries = [e for e in harness.writer.submitted_for(job_id) if e.status is Status.RETRYING]
    etas = [copy.options["eta"] / 1000 for copy, _ in _retry_copies(harness, job_id)]
    assert [e.next_retry_at for e in retries] == etas
    for event in retries:
        assert event.next_retry_at is not None and event.next_retry_at >= event.started_at
        assert event.error_type == "ConnectionError"
    assert [e.error_message for e in retries] == [
        "attempt 1 lost the model connection",
        "attempt 2 lost the model connection",
    ]
    final = harness.store.last(job_id)
    assert (final.status, final.attempt, final.result) == (Status.COMPLETED, 3, "built")


def test_retry_copies_are_not_new_pending_events(harness: Harness) -> None:
    calls: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"try {len(calls)}")

    message = build_course.send(owner_payload())
    harness.run()

    assert len(calls) == 3
    assert harness.writer.statuses(message.message_id).count(Status.PENDING) == 1
    assert len(_retry_copies(harness, message.message_id)) == 2


def test_delayed_message_returning_from_the_delay_queue_is_not_a_new_pending(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    message = build_course.send_with_options(args=(owner_payload(),), delay=50)
    harness.run()

    job_id = message.message_id
    assert harness.store.last(job_id).status is Status.COMPLETED
    assert harness.writer.statuses(job_id).count(Status.PENDING) == 1


def test_pending_of_a_delayed_message_names_the_actors_queue(harness: Harness) -> None:
    @harness.actor(queue_name="courses")
    def build_course(payload: dict[str, Any]) -> None:
        return None

    message = build_course.send_with_options(args=(owner_payload(),), delay=50)
    assert harness.writer.flush(timeout=5)

    [pending] = harness.store.for_job(message.message_id)
    assert pending.status is Status.PENDING
    assert pending.queue_name == "courses"  # not Dramatiq's internal delay queue "courses.DQ"


def test_untracked_actor_sends_without_owner_and_produces_no_events(harness: Harness) -> None:
    ran: list[Any] = []

    @harness.actor(track_status=False)
    def housekeeping(limit: int) -> None:
        ran.append(limit)

    housekeeping.send(10)
    harness.run()

    assert ran == [10]
    assert harness.writer.submitted == []
    assert harness.store.events == []


def test_worker_shutdown_flushes_what_is_buffered(make_harness: Any) -> None:
    harness = make_harness(flush_interval=60.0)  # the writer would otherwise wait a minute

    @harness.actor
    def build_course(payload: dict[str, Any]) -> int:
        return 1

    message = build_course.send(owner_payload())
    harness.run(flush=False)
    assert harness.store.events == []
    assert harness.writer.buffered == 1

    harness.stop_worker()  # before_worker_shutdown flushes, after_worker_shutdown closes

    assert harness.store.last(message.message_id).status is Status.COMPLETED
    assert harness.writer.buffered == 0
    assert harness.store.closed == 1


class _NamedBy(type):
    """Classes whose ``__name__`` is their ``_name``: a str with NUL, a number, or a raise."""

    @property
    def __name__(cls) -> Any:  # type: ignore[override]
        name = cls.__dict__["_name"]
        if name is None:
            raise RuntimeError("no name")
        return name


class NulNamed(Exception, metaclass=_NamedBy):
    _name = "Bad\x00Name\ud800"


class NumberNamed(Exception, metaclass=_NamedBy):
    _name = 12345


class Unnamed(Exception, metaclass=_NamedBy):
    _name = None


class ExitOnStr(Exception):
    def __str__(self) -> str:
        raise SystemExit("__str__ refuses")


class SneakyText(str):
    """What a __str__ may return: a str whose methods raise."""

    def replace(self, *args: Any) -> str:
        raise RuntimeError("replace refuses")

    def __getitem__(self, key: Any) -> str:
        raise RuntimeError("slicing refuses")


class SneakyStr(Exception):
    def __str__(self) -> str:
        return SneakyText("sneaky text")


@pytest.mark.parametrize(
    ("exception", "error_type", "error_message"),
    [
        (NulNamed("named badly"), "NulNamed", "named badly"),
        (NumberNamed("named badly"), "NumberNamed", "named badly"),
        (Unnamed("named badly"), "Unnamed", "named badly"),
        (ExitOnStr(), "ExitOnStr", "<unprintable exception>"),
        (SneakyStr(), "SneakyStr", "sneaky text"),
    ],
)
def test_an_exception_that_fights_back_still_ends_the_job_failed(
    harness: Harness, exception: BaseException, error_type: str, error_message: str
) -> None:
    """Its class's real name and what can be read of its text; the worker thread lives on."""

    @harness.actor(max_retries=0)
    def build_course(payload: dict[str, Any]) -> None:
        raise exception

    message = build_course.send(owner_payload())
    harness.run()

    failed = harness.store.last(message.message_id)
    assert (failed.status, failed.error_type, failed.error_message) == (
        Status.FAILED,
        error_type,
        error_message,
    )
    assert harness.worker is not None and all(thread.is_alive() for thread in harness.worker.workers)


class ItemsExit(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise SystemExit("items() refuses")


def test_a_result_whose_own_code_raises_a_base_exception_ends_the_job_completed(harness: Harness) -> None:
    @harness.actor
    def build_course(payload: dict[str, Any]) -> Any:
        return {"inner": ItemsExit(a=1)}

    message = build_course.send(owner_payload())
    harness.run()

    done = harness.store.last(message.message_id)
    assert (done.status, done.result) == (Status.COMPLETED, {"_unstorable": True, "reason": "SystemExit"})


def test_an_event_that_cannot_be_built_is_replaced_by_a_plain_one_of_the_same_outcome(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks while the final event is built, the job's row still says how it ended:
    completed, or retrying (then its next attempt goes on as usual)."""
    import middleware.events
    import middleware.status_sync

    real = middleware.events.storable_json

    def no_memory(value: Any, max_bytes: int) -> str:
        if value == "the result":
            raise MemoryError
        return real(value, max_bytes)

    def broken_error_fields(exception: BaseException) -> dict[str, str]:
        raise RuntimeError("cannot read the error")

    monkeypatch.setattr(middleware.events, "storable_json", no_memory)
    monkeypatch.setattr(middleware.status_sync, "error_fields", broken_error_fields)
    calls: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first attempt fails")
        return "the result"

    message = build_course.send(owner_payload())
    harness.run()

    job_id = message.message_id
    plain = [e for e in harness.writer.submitted_for(job_id) if e.error_type == UNBUILDABLE_TYPE]
    assert [(e.status, e.attempt) for e in plain] == [(Status.RETRYING, 1), (Status.COMPLETED, 2)]
    assert plain[0].next_retry_at is not None
    assert plain[1].result is None and "MemoryError" in (plain[1].error_message or "")
    assert harness.store.last(job_id).status is Status.COMPLETED


def test_a_sent_job_is_noted_with_its_owner_and_writer_for_read_your_writes(harness: Harness) -> None:
    from middleware.sent import SENT

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        return None

    payload = owner_payload()
    message = build_course.send(payload)
    sent = SENT.get(message.message_id)
    assert sent is not None
    assert (sent.owner.tenant_id, sent.owner.user_id) == (payload["tenant_id"], payload["user_id"])
    assert sent.writer is harness.middleware.writer
    assert SENT.get("never-sent") is None


def test_the_sent_jobs_are_bounded_oldest_first() -> None:
    from middleware.events import Owner
    from middleware.sent import SentJobs

    sent = SentJobs(max_jobs=3)
    owner = Owner("t", "u")
    for i in range(5):
        sent.add(f"job-{i}", owner, None)  # type: ignore[arg-type]
    assert len(sent) == 3
    assert [sent.get(f"job-{i}") is not None for i in range(5)] == [False, False, True, True, True]


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(1_780_000_000, id="seconds-not-milliseconds"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(10**30, id="far-future"),
        pytest.param(10**400, id="too-large-for-a-float"),
        pytest.param(-5, id="negative"),
        pytest.param("1780000000000", id="text"),
    ],
)
@pytest.mark.parametrize("announced", [True, False], ids=["sent-here", "foreign-producer"])
def test_a_message_timestamp_a_row_cannot_hold_leaves_enqueued_at_empty(
    harness: Harness, timestamp: Any, announced: bool
) -> None:
    """A hand-made message (a producer in another language, one that writes seconds) whose
    timestamp is no sane time: its events carry no enqueued_at rather than one SQL rejects
    (which would leave the job without a row)."""

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        return "done"

    message = build_course.message(owner_payload()).copy(message_timestamp=timestamp)
    if announced:
        harness.broker.enqueue(message)
    else:  # straight onto the queue, as a producer without the middleware puts it
        harness.broker.queues["default"].put(message.encode())
    harness.run()

    events = harness.writer.submitted_for(message.message_id)
    statuses = [event.status for event in events]
    assert statuses[-1] is Status.COMPLETED and (statuses[0] is Status.PENDING) is announced, statuses
    assert [event.enqueued_at for event in events] == [None] * len(events)
    assert harness.store.last(message.message_id).status is Status.COMPLETED
