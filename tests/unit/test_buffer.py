"""EventBuffer's bound on its own (no thread, no store): what counts against ``max_buffer``, what
a full buffer drops, keeps and counts. The writer under a real double outage:
``tests/integration/test_buffer_outage.py``."""

from __future__ import annotations

import threading

from middleware.buffer import DROPPED_PROGRESS, OVERFLOW, EventBuffer
from middleware.events import Owner, Status, active_event

from .conftest import make_event

T0 = 1_800_000_000.0


def full_buffer(max_buffer: int = 2, *, max_block: float = 0.0) -> EventBuffer:
    buffer = EventBuffer(max_batch=10, max_buffer=max_buffer, max_block=max_block)
    with buffer.lock:
        for i in range(max_buffer):
            buffer.add_locked(make_event(f"job-{i}", Status.COMPLETED))
    return buffer


def test_a_batch_taken_out_makes_no_room_until_it_is_written() -> None:
    buffer = full_buffer()
    with buffer.lock:
        batch = buffer.take_locked()
        assert (len(batch), buffer.held) == (2, 2), "in flight still counts"
        buffer.add_locked(make_event("job-2", Status.COMPLETED))
        assert buffer.take_counts_locked()[OVERFLOW] == 1, "it found no room: kept and counted"
    buffer.requeue(batch)  # the store and the outbox were both down: back it goes
    buffer.done(len(batch))
    assert buffer.held == 3, "kept: nothing dropped"
    with buffer.lock:
        batch = buffer.take_locked()
    buffer.done(len(batch))  # written
    with buffer.lock:
        buffer.add_locked(make_event("job-3", Status.COMPLETED))
        assert buffer.take_counts_locked()[OVERFLOW] == 0, "room once a batch is written"


def test_a_status_waiting_for_room_gets_it_when_a_batch_is_written() -> None:
    buffer = full_buffer(max_block=60.0)
    with buffer.lock:
        batch = buffer.take_locked()
    late = make_event("late", Status.FAILED)

    def hook() -> None:
        with buffer.lock:
            buffer.add_locked(late)

    waiting = threading.Thread(target=hook)
    waiting.start()
    buffer.done(len(batch))  # the batch was written: room
    waiting.join(30)
    assert not waiting.is_alive()
    with buffer.lock:
        assert buffer.take_counts_locked()[OVERFLOW] == 0
        assert buffer.events == {"late": late}


def test_a_dropped_progress_update_leaves_the_jobs_noted_start() -> None:
    """(The start used to be forgotten before the update was dropped: the row stayed pending.)"""
    buffer = full_buffer()
    start = (("running", Owner("t", "u"), "an_actor", "default", None), 1, T0)
    with buffer.lock:
        buffer.start_locked(start)
        buffer.add_locked(make_event("running", Status.ACTIVE, event_at=T0 + 1, progress=40, started_at=T0))
        assert buffer.take_counts_locked()[DROPPED_PROGRESS] == 1
        batch = buffer.take_locked()
    [active] = [event for event in batch if event.job_id == "running"]
    assert active.to_json() == active_event(start).to_json(), "the row still shows the job running"
