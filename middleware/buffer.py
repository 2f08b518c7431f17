"""EventBuffer: the in-memory side of the status writer, one entry per job.

Hooks hand events over on worker threads; the writer thread takes batches. A newer event of a
job replaces the buffered one (the ordering of :meth:`StatusEvent.sort_key`), so a job that
changes many times between two flushes costs one row write. A job that began running is only
noted (:meth:`EventBuffer.started`): its ``active`` event is made when the writer next takes a
batch, if nothing newer came in between, so a short job costs one event, its final status.

Memory is bounded, and so is the time a hook waits. The bound, ``max_buffer``, counts the jobs
whose news is buffered or in flight (taken by the writer, not yet written nor spilled): a batch
taken out and put back because the store and the outbox are both down makes no room, only one
written or spilled does. Past it, a progress-only event is dropped (counted), and a status waits
up to ``max_block`` seconds for room, then is kept anyway (counted as an overflow): a status is
never dropped here. So while nothing can be written, each further job costs its thread up to
``max_block`` once, and the buffer holds at most ``max_buffer`` jobs plus the overflows counted
(plus the ``active`` event of each job running, made from its noted start).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

from .events import JobStart, Status, StatusEvent, active_event

#: counter names of :attr:`EventBuffer.counts` that are not statuses
DROPPED_PROGRESS = "_dropped_progress"
OVERFLOW = "_overflow"


class EventBuffer:
    """Coalesces events per job under one lock; its condition wakes the writer thread."""

    def __init__(self, *, max_batch: int, max_buffer: int, max_block: float) -> None:
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.max_block = max_block
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.events: dict[str, StatusEvent] = {}
        self.starts: dict[str, JobStart] = {}  # running jobs whose active event is not made yet
        #: events handed over since the writer last looked, by status (and the two above)
        self.counts: collections.Counter[str] = collections.Counter()
        #: events taken and not yet written (or spilled)
        self.inflight = 0

    def __len__(self) -> int:
        return len(self.events) + len(self.starts)

    @property
    def held(self) -> int:
        """Jobs counted against ``max_buffer``: buffered, and taken but not yet written."""
        return len(self.events) + self.inflight

    @property
    def empty(self) -> bool:
        """Nothing buffered, noted or in flight (lock held by the caller)."""
        return not self.events and not self.starts and not self.inflight

    # -- worker threads (lock held by the caller: StatusWriter enters it on the hot path) --------

    def add_locked(self, event: StatusEvent) -> None:
        self.counts[event.status] += 1  # a StrEnum: its label is its value
        old = self.events.get(event.job_id)
        if old is None and self.held >= self.max_buffer and not self._make_room(event):
            return  # progress dropped; the job's noted start still makes its active event
        if self.starts:
            self.starts.pop(event.job_id, None)  # this event says more than the start
        if old is not None:
            self.merge_locked(event, old)
            return
        # the lock was let go while waiting for room: the writer may have put one back since
        self.merge_locked(event, self.events.get(event.job_id))
        if len(self.events) >= self.max_batch:
            self.cond.notify_all()

    def start_locked(self, start: JobStart) -> None:
        self.counts[Status.ACTIVE] += 1
        self.starts[start[0][0]] = start

    def merge_locked(self, event: StatusEvent, old: StatusEvent | None) -> None:
        """Buffer ``event`` unless ``old``, the job's buffered event, is newer news."""
        if old is None:
            self.events[event.job_id] = event
        elif event.supersedes(old):
            if event.enqueued_at is None:
                event.enqueued_at = old.enqueued_at
            self.events[event.job_id] = event

    def _make_room(self, event: StatusEvent) -> bool:
        """The buffer is full. False: drop the event (progress only); else wait up to
        ``max_block`` for a batch to be written or spilled, and keep the event either way."""
        if event.status is Status.ACTIVE and event.progress is not None:
            self.counts[DROPPED_PROGRESS] += 1
            return False
        self.cond.notify_all()
        if not self.cond.wait_for(lambda: self.held < self.max_buffer, timeout=self.max_block):
            self.counts[OVERFLOW] += 1  # kept anyway: a status is never dropped here
        return True

    # -- the writer thread ------------------------------------------------------------------------

    def take_locked(self) -> list[StatusEvent]:
        """Up to ``max_batch`` events, the noted starts made into ``active`` events first."""
        if self.starts:  # jobs still running since the last batch: now their active events
            starts, self.starts = self.starts, {}
            for job_id, start in starts.items():
                self.merge_locked(active_event(start), self.events.get(job_id))
        if not self.events:
            return []
        if len(self.events) <= self.max_batch:
            batch = list(self.events.values())
            self.events = {}
        else:
            keys = list(self.events)[: self.max_batch]
            batch = [self.events.pop(key) for key in keys]
        self.inflight += len(batch)  # still counted against max_buffer until done()
        return batch

    def done(self, count: int) -> None:
        """``count`` taken events were written, spilled or given up on (or put back first,
        :meth:`requeue`): room for the hooks waiting in :meth:`_make_room`."""
        with self.cond:
            self.inflight -= count
            self.cond.notify_all()

    def requeue(self, events: Iterable[StatusEvent]) -> None:
        """Put events back, under newer news for the same job."""
        with self.cond:
            for event in events:
                self.merge_locked(event, self.events.get(event.job_id))

    def take_counts_locked(self) -> collections.Counter[str]:
        counts, self.counts = self.counts, collections.Counter()
        return counts


__all__ = ["DROPPED_PROGRESS", "OVERFLOW", "EventBuffer"]
