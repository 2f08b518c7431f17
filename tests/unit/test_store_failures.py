"""When the store fails: jobs are unaffected, failures are counted, and no event is lost."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from middleware.events import Status, StatusEvent
from middleware.message_fields import owner_from_payload
from middleware.outbox import RedisOutbox, parse_entry
from middleware.storable import MAX_DEPTH
from middleware.stores.base import REJECTED, Outcome, write_arrays
from middleware.writer import StatusWriter

from .conftest import (
    Harness,
    MetricDelta,
    RecordingStore,
    make_event,
    metric,
    owner_payload,
    wait_until,
)

FAILURES = "job_status_sync_failures_total"
WRITES = "job_status_sync_writes_total"
LAG_COUNT = "job_status_sync_lag_seconds_count"
DOWN = 10**9  # fail_times meaning "until told otherwise"


def latest(events: Sequence[StatusEvent]) -> StatusEvent:
    """The event the state machine would keep (the writer's own ordering)."""
    best = events[0]
    for event in events[1:]:
        if event.supersedes(best):
            best = event
    return best


def test_store_down_job_completes_and_events_spill_to_the_outbox(
    make_harness: Any, outbox: RedisOutbox
) -> None:
    store = RecordingStore(fail_times=DOWN)
    harness: Harness = make_harness(store=store, outbox=outbox, probe_interval=60.0)
    delta = (
        MetricDelta()
        .watch(FAILURES, reason="transient")
        .watch(FAILURES, reason="spilled")
        .watch(WRITES, outcome="failure")
        .watch(WRITES, outcome="success")
    )
    ran: list[str] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        ran.append(payload["title"])
        return "done"

    first = build_course.send(owner_payload(title="one"))
    harness.run()  # flush() is true once every event was written or spilled

    assert ran == ["one"]
    # retry_attempts=2 on the first batch, then degraded: later batches go straight to the outbox
    assert store.failures == 2
    assert delta(FAILURES, reason="transient") == 2
    assert delta(WRITES, outcome="failure") == 2
    assert delta(WRITES, outcome="success") == 0
    assert harness.writer.degraded
    assert harness.writer.buffered == 0

    # The worker is fine: it keeps running jobs while the store is down.
    second = build_course.send(owner_payload(title="two"))
    harness.run()
    assert ran == ["one", "two"]

    spilled = [parse_entry(raw)[0] for raw in outbox.take(1000).raw]
    assert delta(FAILURES, reason="spilled") == len(spilled)
    for message in (first, second):
        mine = [event for event in spilled if event.job_id == message.message_id]
        assert mine, "the job's events were lost"
        final = latest(mine)
        assert (final.status, final.attempt, final.result) == (Status.COMPLETED, 1, "done")
    assert store.batches == []


def test_spilled_events_are_drained_into_the_store_once_it_answers(
    make_harness: Any, outbox: RedisOutbox
) -> None:
    store = RecordingStore(fail_times=2)  # the first batch fails both of its attempts
    harness: Harness = make_harness(store=store, outbox=outbox, probe_interval=0.05, drain_interval=0.01)
    spilled = MetricDelta().watch(FAILURES, reason="spilled")

    @harness.actor
    def build_course(payload: dict[str, Any]) -> int:
        return 7

    message = build_course.send(owner_payload())
    assert harness.writer.flush(timeout=5)  # the pending event, spilled
    assert store.failures == 2
    assert spilled(FAILURES, reason="spilled") == 1

    harness.run()
    job_id = message.message_id
    # a drained claim is out of the list while it is applied: wait for what it holds
    wait_until(lambda: outbox.depth() == 0 and Status.COMPLETED in store.statuses(job_id))

    statuses = store.statuses(job_id)
    assert Status.PENDING in statuses
    assert latest(store.for_job(job_id)).result == 7
    assert not harness.writer.degraded


def test_without_outbox_events_stay_buffered_until_the_store_recovers(make_harness: Any) -> None:
    store = RecordingStore(fail_times=DOWN)
    harness: Harness = make_harness(store=store)

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        return "built"

    message = build_course.send(owner_payload())
    harness.run(flush=False)
    job_id = message.message_id

    # The store has refused a batch holding the job's final status, and the writer kept it.
    wait_until(
        lambda: any(
            e.job_id == job_id and e.status is Status.COMPLETED for b in store.failed_batches for e in b
        )
    )
    wait_until(lambda: harness.writer.buffered == 1)
    assert store.batches == []
    assert not harness.writer.flush(timeout=0.05)

    store.fail_times = 0  # the store comes back
    assert harness.writer.flush(timeout=5)

    assert harness.writer.buffered == 0
    final = store.last(job_id)
    assert (final.status, final.result) == (Status.COMPLETED, "built")


def test_a_store_failing_n_times_then_succeeding_loses_no_event(make_harness: Any) -> None:
    store = RecordingStore(fail_times=3)
    harness: Harness = make_harness(store=store)
    delta = MetricDelta().watch(FAILURES, reason="transient").watch(WRITES, outcome="failure")

    @harness.actor
    def build_course(payload: dict[str, Any]) -> str:
        return payload["title"]

    messages = [build_course.send(owner_payload(title=f"course {i}")) for i in range(3)]
    harness.run()

    assert store.failures == 3
    assert delta(FAILURES, reason="transient") == 3
    assert delta(WRITES, outcome="failure") == 3
    for i, message in enumerate(messages):
        final = store.last(message.message_id)
        assert (final.status, final.result) == (Status.COMPLETED, f"course {i}")


class RejectingStore(RecordingStore):
    """Answers ``rejected`` (with a reason) for the listed jobs, ``applied`` for the rest."""

    def __init__(self, rejected: dict[str, str]) -> None:
        super().__init__()
        self.rejected = rejected

    def outcome(self, event: StatusEvent) -> Outcome:
        reason = self.rejected.get(event.job_id)
        if reason is not None:
            return Outcome(event.job_id, REJECTED, reason)
        return super().outcome(event)


def test_a_rejected_event_is_logged_and_counted_and_the_rest_are_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RejectingStore({"job-bad": "unknown_tenant"})
    writer = StatusWriter(lambda: store, flush_interval=60.0, sleep=lambda _s: None)
    delta = (
        MetricDelta()
        .watch(FAILURES, reason="rejected")
        .watch(WRITES, outcome="success")
        .watch(WRITES, outcome="failure")
        .watch(LAG_COUNT)
    )
    events = [make_event(job_id, Status.PENDING, 0) for job_id in ("job-a", "job-bad", "job-b")]
    try:
        with caplog.at_level(logging.INFO, logger="middleware.writer"):
            for event in events:
                writer.submit(event)
            assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)

    assert store.batches == [events]  # one round trip, the bad event did not split the batch
    assert delta(FAILURES, reason="rejected") == 1
    assert delta(WRITES, outcome="success") == 1
    assert delta(WRITES, outcome="failure") == 0
    assert delta(LAG_COUNT) == 2  # the two written events were persisted
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "sync_rejected"]
    assert record.levelno == logging.ERROR
    assert record.job_id == "job-bad"  # type: ignore[attr-defined]
    assert record.reason == "unknown_tenant"  # type: ignore[attr-defined]
    assert "unknown_tenant" in record.getMessage()


def test_the_lag_of_every_written_event_is_observed_and_a_clock_ahead_of_ours_counts_as_zero() -> None:
    store = RecordingStore()
    writer = StatusWriter(lambda: store, flush_interval=60.0, sleep=lambda _s: None)
    delta = MetricDelta().watch(LAG_COUNT).watch("job_status_sync_lag_seconds_sum")
    now = time.time()
    events = [
        make_event("job-late-1", Status.COMPLETED, event_at=now - 2.0),
        make_event("job-late-2", Status.COMPLETED, event_at=now - 2.0),
        make_event("job-ahead", Status.COMPLETED, event_at=now + 100.0),  # a producer's fast clock
    ]
    try:
        for event in events:
            writer.submit(event)
        assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)

    assert store.batches == [events]
    assert delta(LAG_COUNT) == 3
    # 2 s each for the two late ones; the one from the future adds 0, not -100
    assert 4.0 <= delta("job_status_sync_lag_seconds_sum") < 4.0 + 5.0


def test_a_failing_hook_is_logged_and_counted_and_the_job_completes(
    make_harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    broken = threading.Event()

    def owner_of(message: Any) -> Any:
        if broken.is_set():
            raise RuntimeError("owner lookup failed")
        return owner_from_payload(message)

    harness: Harness = make_harness(owner_of=owner_of)
    ran: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        ran.append(1)

    message = build_course.send(owner_payload())
    broken.set()  # from now on every hook fails: before and after process_message
    before = metric(FAILURES, reason="hook")
    with caplog.at_level(logging.ERROR, logger="middleware.status_sync"):
        harness.run()

    assert ran == [1]
    # the owner is read once per message run: one failure, logged once
    assert metric(FAILURES, reason="hook") - before == 1
    records = [r for r in caplog.records if getattr(r, "action", None) == "sync_hook_error"]
    assert [r.args for r in records] == [("before_process_message",)]
    for record in records:
        assert record.job_id == message.message_id  # type: ignore[attr-defined]
        assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert harness.store.statuses(message.message_id) == [Status.PENDING]
    assert harness.broker.dead_letters == []  # the job was acknowledged, not failed


class EncodingStore(RecordingStore):
    """Encodes each batch the way the real stores do (``write_arrays``, as JSON for the Supabase
    store) before recording it."""

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        json.dumps(write_arrays(events), allow_nan=False).encode("utf-8")
        return super().apply(events)


def _too_deep() -> list[Any]:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        child: list[Any] = []
        node.append(child)
        node = child
    return deep


def test_one_unencodable_result_does_not_block_other_jobs(make_harness: Any) -> None:
    harness: Harness = make_harness(store=EncodingStore())
    good = make_event("job-good", Status.COMPLETED, 1, result="fine")
    harness.writer.submit(make_event("job-poison", Status.COMPLETED, 1, result=_too_deep()))
    harness.writer.submit(good)

    harness.writer.flush(timeout=1)

    assert good in harness.store.events


def test_the_writer_thread_survives_an_unencodable_result_while_spilling(
    make_harness: Any, outbox: RedisOutbox
) -> None:
    harness: Harness = make_harness(store=RecordingStore(fail_times=DOWN), outbox=outbox, probe_interval=60.0)
    harness.writer.submit(make_event("job-poison", Status.COMPLETED, 1, result=_too_deep()))
    harness.writer.flush(timeout=1)
    later = make_event("job-later", Status.COMPLETED, 1, result="fine")
    harness.writer.submit(later)

    harness.writer.flush(timeout=1)

    spilled = {event.job_id: event for event in (parse_entry(raw)[0] for raw in outbox.take(100).raw)}
    assert sorted(spilled) == ["job-later", "job-poison"]
    assert json.dumps(spilled["job-poison"].result).count("[") == MAX_DEPTH  # cut, and the status survives
    assert spilled["job-later"].result == "fine"
