"""StatusWriter on its own: coalescing, batching, flushing, closing.

Writers here use a long flush interval, so nothing is written until the test calls ``flush()``
or ``close()``: whatever was submitted before that lands in one buffer.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from middleware.errors import BatchTooLargeError
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import Outcome
from middleware.writer import StatusWriter

from .conftest import WRITER_THREAD, RecordingStore, make_event, wait_until

WriterFactory = Callable[..., StatusWriter]

#: event times are epoch seconds in the sane range (middleware.storable): offsets from here
T0 = 1_800_000_000.0


@pytest.fixture
def make_writer() -> Iterator[WriterFactory]:
    made: list[StatusWriter] = []

    def make(store: RecordingStore, **options: Any) -> StatusWriter:
        settings: dict[str, Any] = {"flush_interval": 60.0, "sleep": lambda _s: None, "close_timeout": 5.0}
        settings.update(options)
        writer = StatusWriter(lambda: store, **settings)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout=5)


def test_active_then_completed_of_one_job_is_one_write(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    active = make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 100.0, started_at=T0 + 100.0)
    completed = make_event(
        "job-1", Status.COMPLETED, 1, event_at=T0 + 101.0, started_at=T0 + 100.0, result={"ok": 1}
    )

    writer.submit(active)
    writer.submit(completed)
    assert writer.flush(timeout=5)

    assert len(store.batches) == 1
    [sent] = store.batches[0]
    assert sent is completed


def _start(job_id: str, attempt: int = 1, started_at: float = T0 + 100.0) -> tuple[Any, int, float]:
    return ((job_id, Owner("t", "u"), "an_actor", "default", 90.0), attempt, started_at)


@pytest.mark.parametrize("start_first", [True, False], ids=["start-then-end", "late-start-after-end"])
def test_a_start_never_outlives_the_final_event_of_its_attempt(
    make_writer: WriterFactory, start_first: bool
) -> None:
    # start-then-end: a job that ends before the flush is written once, as its final status;
    # late-start-after-end: a redelivered copy's start does not replace the newer news
    store = RecordingStore()
    writer = make_writer(store)
    completed = make_event("job-1", Status.COMPLETED, 1, event_at=T0 + 101.0, started_at=T0 + 100.0)

    if start_first:
        writer.started(_start("job-1"))
    writer.submit(completed)
    if not start_first:
        writer.started(_start("job-1"))
    assert writer.flush(timeout=5)

    assert store.batches == [[completed]]


def test_a_job_still_running_at_the_flush_gets_its_active_event_stamped_at_the_start(
    make_writer: WriterFactory,
) -> None:
    store = RecordingStore()
    writer = make_writer(store)

    writer.started(_start("job-1", attempt=2, started_at=T0 + 100.5))
    assert writer.buffered == 1
    assert writer.flush(timeout=5)

    [[active]] = store.batches
    assert (active.job_id, active.status, active.attempt) == ("job-1", Status.ACTIVE, 2)
    assert active.started_at == active.event_at == T0 + 100.5
    assert active.enqueued_at == 90.0
    assert (active.tenant_id, active.user_id, active.actor_name, active.queue_name) == (
        "t",
        "u",
        "an_actor",
        "default",
    )

    # made once: the next flush has nothing of it, and its end is a second write
    completed = make_event("job-1", Status.COMPLETED, 2, event_at=T0 + 101.0, started_at=T0 + 100.5)
    writer.submit(completed)
    assert writer.flush(timeout=5)
    assert store.batches[1:] == [[completed]]


def test_a_new_attempt_starting_replaces_the_retrying_of_the_previous_one(
    make_writer: WriterFactory,
) -> None:
    store = RecordingStore()
    writer = make_writer(store)

    writer.submit(make_event("job-1", Status.RETRYING, 1, event_at=T0 + 100.0))
    writer.started(_start("job-1", attempt=2, started_at=T0 + 101.0))
    assert writer.flush(timeout=5)

    [[event]] = store.batches
    assert (event.status, event.attempt) == (Status.ACTIVE, 2)


def test_close_writes_the_active_event_of_a_running_job(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)

    writer.started(_start("job-1"))
    assert writer.close(timeout=5)

    assert [(e.job_id, e.status) for e in store.events] == [("job-1", Status.ACTIVE)]


def test_events_of_different_jobs_are_not_coalesced(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    events = [make_event(f"job-{i}", Status.PENDING, 0) for i in range(5)]
    for event in events:
        writer.submit(event)
    assert writer.flush(timeout=5)

    assert store.batches == [events]


@pytest.mark.parametrize(
    ("newer", "stale"),
    [
        pytest.param(
            make_event("job-1", Status.COMPLETED, 1, event_at=T0 + 200.0),
            make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 100.0),
            id="active-after-completed",
        ),
        pytest.param(
            make_event("job-1", Status.ACTIVE, 2, event_at=T0 + 200.0),
            make_event("job-1", Status.RETRYING, 1, event_at=T0 + 300.0),
            id="retrying-of-an-older-attempt",
        ),
        pytest.param(
            make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 200.0),
            make_event("job-1", Status.PENDING, 0, event_at=T0 + 300.0),
            id="pending-after-active",
        ),
        pytest.param(
            make_event("job-1", Status.FAILED, 1, event_at=T0 + 200.0),
            make_event("job-1", Status.COMPLETED, 1, event_at=T0 + 300.0),
            id="a-later-terminal-event",
        ),
    ],
)
def test_a_stale_event_submitted_after_a_newer_one_is_dropped(
    make_writer: WriterFactory, newer: StatusEvent, stale: StatusEvent
) -> None:
    store = RecordingStore()
    writer = make_writer(store)

    writer.submit(newer)
    writer.submit(stale)
    assert writer.flush(timeout=5)

    assert store.events == [newer]


def test_progress_events_of_one_attempt_keep_the_highest_progress(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    p60 = make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 100.0, progress=60, progress_message="lessons")
    p30 = make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 101.0, progress=30, progress_message="outline")
    p80 = make_event("job-2", Status.ACTIVE, 1, event_at=T0 + 100.0, progress=80)
    p90 = make_event("job-2", Status.ACTIVE, 1, event_at=T0 + 101.0, progress=90)

    for event in (p60, p30, p80, p90):
        writer.submit(event)
    assert writer.flush(timeout=5)

    assert {event.job_id: event for event in store.events} == {"job-1": p60, "job-2": p90}


def test_a_new_attempt_replaces_the_progress_of_the_previous_one(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    writer.submit(make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 100.0, progress=90))
    second = make_event("job-1", Status.ACTIVE, 2, event_at=T0 + 101.0, started_at=T0 + 101.0)
    writer.submit(second)
    assert writer.flush(timeout=5)

    assert store.events == [second]


def test_completed_supersedes_progress_without_inheriting_it(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    writer.submit(
        make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 100.0, progress=60, progress_message="half")
    )
    completed = make_event("job-1", Status.COMPLETED, 1, event_at=T0 + 101.0, result=[1, 2])
    writer.submit(completed)
    assert writer.flush(timeout=5)

    [sent] = store.events
    assert sent is completed
    assert sent.progress in (None, 100)
    assert sent.progress_message is None


def test_a_coalesced_event_keeps_the_enqueue_time_it_lacks(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    writer.submit(make_event("job-1", Status.PENDING, 0, event_at=T0 + 100.0, enqueued_at=T0 + 99.5))
    writer.submit(make_event("job-1", Status.ACTIVE, 1, event_at=T0 + 101.0, started_at=T0 + 101.0))
    assert writer.flush(timeout=5)

    [sent] = store.events
    assert (sent.status, sent.enqueued_at, sent.started_at) == (Status.ACTIVE, T0 + 99.5, T0 + 101.0)


def test_close_flushes_everything_and_closes_the_store(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)  # a minute between flushes: only close() can write these
    events = [make_event(f"job-{i}", Status.PENDING, 0) for i in range(3)]
    for event in events:
        writer.submit(event)

    assert writer.close(timeout=5) is True

    assert store.events == events
    assert store.closed == 1
    assert writer.buffered == 0


def test_writer_restarts_on_submit_after_close(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store)
    writer.submit(make_event("job-1", Status.PENDING, 0))
    assert writer.close(timeout=5)

    later = make_event("job-2", Status.PENDING, 0)
    writer.submit(later)
    assert writer.flush(timeout=5)

    assert store.events[-1] is later


class GatedStore(RecordingStore):
    """Blocks in its first apply() until released, so events pile up behind a batch in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(timeout=10)
        return super().apply(events)


def test_a_batch_larger_than_max_batch_is_split(make_writer: WriterFactory) -> None:
    store = GatedStore()
    writer = make_writer(store, max_batch=3, flush_interval=0.01)
    writer.submit(make_event("job-0", Status.PENDING, 0))
    assert store.entered.wait(timeout=5)

    # The writer thread is stuck in the store: submit() must still return, without any I/O.
    for i in range(1, 8):
        writer.submit(make_event(f"job-{i}", Status.PENDING, 0))
    assert writer.buffered == 7
    store.release.set()
    assert writer.flush(timeout=5)

    assert [len(batch) for batch in store.batches] == [1, 3, 3, 1]
    assert [event.job_id for event in store.events] == [f"job-{i}" for i in range(8)]
    assert set(store.threads) == {WRITER_THREAD}


def test_news_of_fewer_jobs_than_min_batch_waits_for_more(make_writer: WriterFactory) -> None:
    # min_batch is reached long before max_wait: the first three jobs wait for the other two
    store = RecordingStore()
    writer = make_writer(store, flush_interval=0.01, min_batch=5, max_wait=120.0)
    for i in range(3):
        writer.submit(make_event(f"job-{i}", Status.PENDING, 0))
    looks = writer_looks(writer)
    wait_until(lambda: looks() >= 5)  # the thread saw the three, and more than one interval passed
    for i in range(3, 5):
        writer.submit(make_event(f"job-{i}", Status.PENDING, 0))
    wait_until(lambda: store.batches)

    assert [len(batch) for batch in store.batches] == [5]


def test_news_of_fewer_jobs_than_min_batch_goes_after_max_wait(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store, flush_interval=0.01, min_batch=1_000, max_wait=0.05)
    event = make_event("job-1", Status.PENDING, 0)
    writer.submit(event)
    wait_until(lambda: store.batches)  # no flush(): max_wait alone sends it

    assert store.batches == [[event]]


def test_with_min_batch_1_every_batch_goes_after_flush_interval(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store, flush_interval=0.01, min_batch=1, max_wait=120.0)
    first, second = make_event("job-1", Status.PENDING, 0), make_event("job-2", Status.PENDING, 0)
    writer.submit(first)
    wait_until(lambda: store.batches)
    writer.submit(second)
    wait_until(lambda: len(store.batches) == 2)

    assert store.batches == [[first], [second]]


def test_an_idle_writer_never_builds_nor_calls_its_store() -> None:
    built: list[RecordingStore] = []

    def factory() -> RecordingStore:
        built.append(RecordingStore())
        return built[-1]

    writer = StatusWriter(factory, flush_interval=0.01, close_timeout=5.0)
    writer.start()
    try:
        looks = writer_looks(writer)
        wait_until(lambda: looks() >= 20)
        assert built == []
    finally:
        assert writer.close(timeout=5)
    assert built == []


def writer_looks(writer: StatusWriter) -> Callable[[], int]:
    """A counter of the writer thread's looks at its buffer (from now on)."""
    count = 0
    due = writer._due_locked

    def counting() -> bool:
        nonlocal count
        count += 1
        return due()

    writer._due_locked = counting  # type: ignore[method-assign]
    return lambda: count


def test_writer_writes_while_deprecation_warnings_are_errors(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    writer = make_writer(store, flush_interval=0.01)
    event = make_event("job-1", Status.PENDING, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        writer.submit(event)
        flushed = writer.flush(timeout=1)
    assert flushed
    assert store.events == [event]


def test_a_batch_over_the_byte_bound_goes_in_several_round_trips(make_writer: WriterFactory) -> None:
    """Rows and bytes are both bounded: PostgREST and the database never get an oversized body."""
    store = RecordingStore()
    writer = make_writer(store, max_batch=100, max_batch_bytes=4_000)
    events = [make_event(f"big-{i}", Status.COMPLETED, 1, result={"text": "x" * 900}) for i in range(10)]
    for event in events:
        writer.submit(event)
    assert writer.flush(timeout=5)

    sizes = [sum(len(e.to_json()) + 1 for e in batch) for batch in store.batches]
    assert len(store.batches) >= 3
    assert all(size <= 4_000 for size in sizes)
    assert sorted(e.job_id for batch in store.batches for e in batch) == sorted(e.job_id for e in events)


def test_prepare_builds_and_warms_the_store_once_in_the_calling_thread(make_writer: WriterFactory) -> None:
    store = RecordingStore()
    built: list[str] = []
    warmed: list[str] = []
    store.prepare = lambda: warmed.append(threading.current_thread().name)  # type: ignore[attr-defined]

    def factory() -> RecordingStore:
        built.append(threading.current_thread().name)
        return store

    writer = StatusWriter(factory, flush_interval=60.0, close_timeout=5.0)
    try:
        writer.prepare()
        writer.prepare()
        writer.submit(make_event("job-1", Status.PENDING, 0))
        assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)
    me = threading.current_thread().name
    assert (built, warmed) == ([me], [me])
    assert store.threads == [WRITER_THREAD]
    assert len(store.batches) == 1


def test_a_store_that_cannot_be_prepared_is_built_again_by_the_writer_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RecordingStore()
    attempts: list[str] = []

    def factory() -> RecordingStore:
        attempts.append(threading.current_thread().name)
        if len(attempts) == 1:
            raise RuntimeError("no driver yet")
        return store

    writer = StatusWriter(factory, flush_interval=60.0, close_timeout=5.0)
    try:
        writer.prepare()  # logged, not raised: a boot never fails on it
        writer.submit(make_event("job-1", Status.PENDING, 0))
        assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)
    assert attempts == [threading.current_thread().name, WRITER_THREAD]
    assert len(store.batches) == 1
    assert any(r.__dict__.get("action") == "sync_prepare_failed" for r in caplog.records)


class _SizeLimitedStore(RecordingStore):
    """Refuses any batch of more than ``limit`` events as too large, as a gateway's 413 or a
    truncated answer make the Supabase store do."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused: list[int] = []

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        if len(events) > self.limit:
            self.refused.append(len(events))
            raise BatchTooLargeError("too large (test)", events=len(events))
        return super().apply(events)


def test_a_batch_too_large_is_sent_in_halves_until_it_passes(make_writer: WriterFactory) -> None:
    store = _SizeLimitedStore(limit=2)
    writer = make_writer(store)
    events = [make_event(f"job-{i}", Status.COMPLETED, 1, event_at=100.0 + i) for i in range(7)]
    for event in events:
        writer.submit(event)
    assert writer.flush(timeout=5)

    assert sorted(e.job_id for e in store.events) == sorted(e.job_id for e in events)
    assert all(len(batch) <= 2 for batch in store.batches)
    assert store.refused == [7, 3, 4]  # 7 -> 3 + 4; 3 -> 1 + 2; 4 -> 2 + 2
    assert not writer.degraded


def test_an_event_too_large_on_its_own_is_rejected_and_replaced(make_writer: WriterFactory) -> None:
    """One event over the gateway's limit cannot hold up the others, nor stay unwritten: it is
    rejected, and a plain event of the same status (no result) says why."""

    class RefusesResults(_SizeLimitedStore):
        def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
            if any(event.result is not None for event in events):
                self.refused.append(len(events))
                raise BatchTooLargeError("413 (test)", events=len(events))
            return super().apply(events)

    store = RefusesResults(limit=100)
    writer = make_writer(store)
    big = make_event("job-big", Status.COMPLETED, 1, event_at=100.0, result={"text": "x" * 1000})
    small = [make_event(f"job-{i}", Status.COMPLETED, 1, event_at=101.0 + i) for i in range(3)]
    for event in [small[0], big, *small[1:]]:
        writer.submit(event)
    assert writer.flush(timeout=5)

    written = {event.job_id: event for event in store.events}
    assert sorted(written) == sorted(["job-big"] + [e.job_id for e in small])
    replacement = written["job-big"]
    assert (replacement.status, replacement.result) == (Status.COMPLETED, None)
    assert "payload_too_large" in (replacement.error_message or "")
    assert not writer.degraded
