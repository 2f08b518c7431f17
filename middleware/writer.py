"""StatusWriter: the one background thread per process that moves status events to the store.

Hooks call :meth:`StatusWriter.submit`, which only merges the event into an in-memory buffer
(one entry per job: a newer event replaces an older one), and :meth:`StatusWriter.started` when
a job begins, which only notes it: the ``active`` event is made at the next flush if the job is
still running, so a short job costs one event and one row write, its final status. The thread
flushes the buffer every ``flush_interval`` seconds, or sooner when a batch is full, in one store
round trip per batch:

* transient failures are retried with tenacity (exponential backoff with jitter, bounded in
  attempts and seconds); a rejected event is logged and counted on its own;
* when retries are exhausted the batch is spilled to the durable outbox, the writer stops
  calling the store except for a probe now and then, and drains the outbox once the store
  answers again: a terminal status is never lost;
* memory is bounded: past ``max_buffer`` jobs, progress-only events are dropped and a
  submitting thread waits briefly for room (never long);
* the buffer is flushed on :meth:`close` (worker shutdown) and at interpreter exit.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from .errors import StoreError, TransientStoreError
from .events import JobStart, Status, StatusEvent, active_event
from .metrics import SyncMetrics, get_metrics, observe_many
from .outbox import RedisOutbox
from .redaction import redact
from .stores.base import Outcome, StatusStore

logger = logging.getLogger(__name__)

#: job ids named in one log record, at most
LOGGED_JOB_IDS = 20


class StatusWriter:
    """Coalesces, batches and writes status events from a background thread.

    Parameters:
      store_factory: builds the store, called once in the writer thread (so after any fork).
      outbox: where batches go when the store stays down, and where producers' events wait.
      flush_interval: seconds the thread gathers events before writing a batch.
      max_batch: events per batch.
      max_batch_bytes: encoded size of one store round trip; a larger batch is split.
      max_buffer: jobs held in memory before backpressure starts.
      retry_attempts, retry_seconds: bounds of the tenacity retries of one batch.
      probe_interval: while degraded, seconds between attempts to reach the store again.
      drain_interval: seconds between looks at the outbox while it is empty.
      sleep: how tenacity sleeps (tests inject a fake).
    """

    def __init__(
        self,
        store_factory: Callable[[], StatusStore],
        *,
        outbox: RedisOutbox | None = None,
        flush_interval: float = 0.05,
        max_batch: int = 500,
        max_batch_bytes: int = 1_000_000,
        max_buffer: int = 20_000,
        retry_attempts: int = 5,
        retry_seconds: float = 5.0,
        probe_interval: float = 2.0,
        drain_interval: float = 1.0,
        max_block: float = 0.5,
        close_timeout: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Callable[[], SyncMetrics] = get_metrics,
    ) -> None:
        self._store_factory = store_factory
        self.outbox = outbox
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_buffer = max_buffer
        self.retry_attempts = retry_attempts
        self.retry_seconds = retry_seconds
        self.probe_interval = probe_interval
        self.drain_interval = drain_interval
        self.max_block = max_block
        self.close_timeout = close_timeout
        self._sleep = sleep
        self._metrics_factory = metrics
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (w := ref()) and w._reset())

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child (the parent keeps its events)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buffer: dict[str, StatusEvent] = {}
        self._starts: dict[str, JobStart] = {}  # running jobs whose active event is not made yet
        self._counts: collections.Counter[str] = collections.Counter()
        self._inflight = 0
        self._flush_requested = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._store: StatusStore | None = None
        self._degraded = False
        self._next_probe = 0.0
        self._next_drain = 0.0
        self._drained = 0
        self._drain_started = 0.0
        self._next_depth_check = 0.0
        self._atexit_registered = False

    def __repr__(self) -> str:
        return f"StatusWriter(buffered={len(self._buffer) + len(self._starts)}, degraded={self._degraded})"

    # -- the hooks' side ------------------------------------------------------------------

    def submit(self, event: StatusEvent) -> None:
        """Hand an event over. Microseconds, no I/O; waits only under heavy backpressure."""
        with self._lock:  # the condition's lock; entered directly, this is the hot path
            if self._thread is None:
                self._start()
            self._counts[event.status] += 1  # a StrEnum: its label is its value
            if self._starts:
                self._starts.pop(event.job_id, None)  # this event says more than the start
            old = self._buffer.get(event.job_id)
            if old is not None:
                self._merge_locked(event, old)
                return
            if len(self._buffer) >= self.max_buffer and not self._make_room(event):
                return
            self._buffer[event.job_id] = event
            if len(self._buffer) >= self.max_batch:
                self._cond.notify_all()

    def _merge_locked(self, event: StatusEvent, old: StatusEvent | None) -> None:
        """Buffer ``event`` unless ``old``, the job's buffered event, is newer news (lock held)."""
        if old is None:
            self._buffer[event.job_id] = event
        elif event.supersedes(old):
            if event.enqueued_at is None:
                event.enqueued_at = old.enqueued_at
            self._buffer[event.job_id] = event

    def started(self, start: JobStart) -> None:
        """Note that a job began running (its ``active`` event, made lazily).

        The next flush makes the event (stamped with the start time) unless an event of the
        job was submitted in between: a job that ends within a flush interval is written once.
        """
        with self._lock:
            if self._thread is None:
                self._start()
            self._counts[Status.ACTIVE] += 1
            self._starts[start[0][0]] = start

    def _make_room(self, event: StatusEvent) -> bool:
        """Called with the lock held and the buffer full. False: drop the event."""
        if event.status is Status.ACTIVE and event.progress is not None:
            self._counts["_dropped_progress"] += 1
            return False
        self._cond.notify_all()
        self._cond.wait_for(lambda: len(self._buffer) < self.max_buffer, timeout=self.max_block)
        if len(self._buffer) >= self.max_buffer:
            self._counts["_overflow"] += 1  # accepted anyway: a status is never dropped here
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything buffered so far; True when it was written (or spilled)."""
        with self._cond:
            if self._thread is None:
                return not self._buffer and not self._starts
            self._flush_requested = True
            self._cond.notify_all()
            done = self._cond.wait_for(
                lambda: not self._buffer and not self._starts and not self._inflight, timeout=timeout
            )
            self._flush_requested = False
            return done

    def close(self, timeout: float | None = None) -> bool:
        """Flush, stop the thread and close the store. The writer restarts on the next submit."""
        timeout = self.close_timeout if timeout is None else timeout
        with self._cond:
            thread = self._thread
            if thread is None:
                return True
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            left = len(self._buffer) + len(self._starts) + self._inflight
            if thread.is_alive():
                logger.error(
                    "Status writer did not finish within %.1fs; %d events unwritten.",
                    timeout,
                    left,
                    extra={"action": "writer_close_timeout"},
                )
                return False
            self._thread = None
            self._stopping = False
        return left == 0

    def prepare(self) -> None:
        """Build the store now, in the calling thread, and let it warm up (see the stores'
        ``prepare``). A worker calls this at boot, before its threads take messages: importing
        a database client holds the GIL for hundreds of milliseconds, which the first jobs
        would otherwise wait out. No network round trip; a failure is logged, and the writer
        thread builds the store at its first batch as usual."""
        with self._lock:
            if self._store is not None:
                return
            try:
                store = self._store_factory()
                warm_up = getattr(store, "prepare", None)
                if warm_up is not None:
                    warm_up()
            except Exception:  # never stops a boot: the first batch tries again
                logger.warning(
                    "Could not prepare the status store at boot; the writer will try again.",
                    exc_info=True,
                    extra={"action": "sync_prepare_failed"},
                )
                return
            self._store = store

    def start(self) -> None:
        """Start the thread now rather than at the first event (a worker must drain the
        outbox even before it processes anything)."""
        with self._cond:
            if self._thread is None:
                self._start()

    @property
    def buffered(self) -> int:
        """Events waiting for the thread (a running job's pending ``active`` counts)."""
        return len(self._buffer) + len(self._starts)

    @property
    def degraded(self) -> bool:
        return self._degraded

    # -- the thread's side ----------------------------------------------------------------

    def _start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="job-status-writer", daemon=True)
        self._thread.start()
        if not self._atexit_registered:
            atexit.register(self._at_exit)
            self._atexit_registered = True

    def _at_exit(self) -> None:
        if self._thread is not None and (self._buffer or self._starts or self._inflight):
            self.close()

    def _run(self) -> None:
        metrics = self._metrics_factory()
        while True:
            with self._cond:
                if not (self._stopping or self._flush_requested or len(self._buffer) >= self.max_batch):
                    self._cond.wait(self.flush_interval)
                batch = self._take_locked()
                stopping = self._stopping
                counts, self._counts = self._counts, collections.Counter()
                waiting = len(self._buffer) + len(self._starts) + self._inflight
            self._count_events(metrics, counts)
            metrics.queue_depth.set(waiting)
            if batch:
                try:
                    self._write(metrics, batch)
                except Exception:  # a bug here must not end the thread nor lose the batch
                    logger.exception(
                        "Status writer failed on a batch.",
                        extra={"action": "sync_error", "reason": "error", **_job_ids(batch)},
                    )
                    metrics.failures.labels("error").inc()
                    self._spill_or_drop(metrics, batch)
                finally:
                    with self._cond:
                        self._inflight -= len(batch)
                        self._cond.notify_all()
                # no sleep before looking again: more may be waiting
            elif stopping:
                break
            if not stopping:  # also between batches: under steady load the outbox must drain too
                try:
                    self._maybe_drain(metrics)
                    self._update_outbox_depth(metrics)
                except Exception:  # the thread must outlive any outbox surprise; a claim taken
                    # here and not answered comes back when its lease ends
                    logger.exception("Status writer failed on the outbox.", extra={"action": "sync_error"})
                    metrics.failures.labels("error").inc()
                    self._next_drain = self._next_depth_check = time.monotonic() + self.drain_interval
        metrics.queue_depth.set(0)
        self._close_store()

    def _take_locked(self) -> list[StatusEvent]:
        if self._starts:  # jobs still running since the last flush: now their active events
            starts, self._starts = self._starts, {}
            for job_id, start in starts.items():
                self._merge_locked(active_event(start), self._buffer.get(job_id))
        if not self._buffer:
            return []
        if len(self._buffer) <= self.max_batch:
            batch = list(self._buffer.values())
            self._buffer = {}
        else:
            keys = list(self._buffer)[: self.max_batch]
            batch = [self._buffer.pop(key) for key in keys]
        self._inflight += len(batch)
        self._cond.notify_all()  # room for submitters waiting in _make_room
        return batch

    @staticmethod
    def _count_events(metrics: SyncMetrics, counts: collections.Counter[str]) -> None:
        for name, n in counts.items():
            if name == "_dropped_progress":
                metrics.failures.labels("dropped_progress").inc(n)
            elif name == "_overflow":
                metrics.failures.labels("overflow").inc(n)
            else:
                metrics.events.labels(name).inc(n)

    def _write(self, metrics: SyncMetrics, batch: list[StatusEvent]) -> None:
        now = time.monotonic()
        if self._degraded and now < self._next_probe and self.outbox is not None:
            self._spill(metrics, batch)
            return
        try:
            outcomes = self._apply(metrics, batch, retry=not self._degraded)
        except StoreError as exc:
            self._degraded = True
            self._next_probe = time.monotonic() + self.probe_interval
            logger.warning(
                "Status store unavailable (%s); spilling %d events.",
                exc.reason,
                len(batch),
                extra={"action": "sync_spill", "reason": exc.reason},
            )
            self._spill(metrics, batch)
            return
        if self._degraded:
            logger.info("Status store reachable again.", extra={"action": "sync_recovered"})
            self._degraded = False
            self._next_drain = 0.0
        self._record(metrics, batch, outcomes)

    def _apply(self, metrics: SyncMetrics, events: Sequence[StatusEvent], *, retry: bool) -> list[Outcome]:
        """One batch, with tenacity retries on transient errors when ``retry``.

        A batch larger than ``max_batch_bytes`` (encoded) goes in several round trips, so that
        neither PostgREST nor the database is handed an oversized request.
        """
        outcomes: list[Outcome] = []
        for chunk in self._chunks(events):
            outcomes += self._apply_chunk(metrics, chunk, retry=retry)
        return outcomes

    def _chunks(self, events: Sequence[StatusEvent]) -> list[Sequence[StatusEvent]]:
        chunks: list[Sequence[StatusEvent]] = []
        start, size = 0, 0
        for i, event in enumerate(events):
            # an upper bound of the event's JSON (encoded only when it carries texts of its
            # own; cached then, and the store reuses it)
            weight = event.size_bound() + 1
            if i > start and size + weight > self.max_batch_bytes:
                chunks.append(events[start:i])
                start, size = i, 0
            size += weight
        if start < len(events):
            chunks.append(events[start:])
        return chunks

    def _apply_chunk(
        self, metrics: SyncMetrics, events: Sequence[StatusEvent], *, retry: bool
    ) -> list[Outcome]:
        tries = 0

        def attempt() -> list[Outcome]:
            nonlocal tries
            tries += 1
            started = time.perf_counter()
            try:
                if self._store is None:
                    self._store = self._store_factory()
                outcomes = self._store.apply(events)
            except StoreError as exc:
                metrics.writes.labels("failure").inc()
                metrics.failures.labels(exc.reason).inc()
                # one line per failed attempt (tenacity's before_sleep_log would add a second)
                logger.warning(
                    "Status write of %d events failed (%s, attempt %d): %s",
                    len(events),
                    exc.reason,
                    tries,
                    redact(str(exc)),
                    extra={"action": "sync_write_failed", "reason": exc.reason, "attempt": tries}
                    | _job_ids(events),
                )
                raise
            except Exception as exc:  # a store bug must not kill the thread: count it, retry it
                metrics.writes.labels("failure").inc()
                metrics.failures.labels("error").inc()
                logger.exception(
                    "Status store raised unexpectedly (attempt %d).",
                    tries,
                    extra={"action": "sync_error", "reason": "error", "attempt": tries} | _job_ids(events),
                )
                raise TransientStoreError(type(exc).__name__, reason="error") from exc
            metrics.write_seconds.observe(time.perf_counter() - started)
            metrics.writes.labels("success").inc()
            return outcomes

        retrying = Retrying(
            stop=(
                stop_after_attempt(self.retry_attempts if retry else 1)
                | stop_after_delay(self.retry_seconds)
                | (lambda _state: self._stopping)
            ),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            retry=retry_if_exception_type(TransientStoreError),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _record(
        self, metrics: SyncMetrics, events: Sequence[StatusEvent], outcomes: Sequence[Outcome]
    ) -> None:
        now = time.time()
        written_at = [e.event_at for e, o in zip(events, outcomes, strict=False) if not o.rejected]
        if len(written_at) < len(events):  # something was rejected: say which (rare)
            for event, outcome in zip(events, outcomes, strict=False):
                if outcome.rejected:
                    metrics.failures.labels("rejected").inc()
                    logger.error(
                        "Status event rejected by the store: %s.",
                        outcome.reason,
                        extra={
                            "action": "sync_rejected",
                            "job_id": event.job_id,
                            "status": event.status.value,
                            "reason": outcome.reason,
                        },
                    )
        # a producer's clock ahead of ours would make a negative lag: counted as zero
        observe_many(metrics.lag_seconds, [now - at if now > at else 0.0 for at in written_at])

    def _spill(self, metrics: SyncMetrics, events: list[StatusEvent]) -> None:
        if self.outbox is not None:
            try:
                self.outbox.push(events)
                metrics.failures.labels("spilled").inc(len(events))
                return
            except TransientStoreError as exc:
                metrics.failures.labels(exc.reason).inc()
                logger.error(
                    "Outbox unavailable too; keeping %d events in memory.",
                    len(events),
                    extra={"action": "sync_outbox_down", "reason": exc.reason} | _job_ids(events),
                )
        if self._stopping:
            metrics.failures.labels("lost").inc(len(events))
            logger.error(
                "Stopping with the store and the outbox down: %d status events are lost.",
                len(events),
                extra={"action": "sync_lost", "reason": "lost"} | _job_ids(events),
            )
            return
        self._requeue(events)
        self._sleep(min(self.probe_interval, 0.5))  # do not spin while everything is down

    def _spill_or_drop(self, metrics: SyncMetrics, events: list[StatusEvent]) -> None:
        """Spill after an unexpected error; if even that fails, count and log the loss."""
        try:
            self._spill(metrics, events)
        except Exception:
            metrics.failures.labels("lost").inc(len(events))
            logger.exception(
                "Could not spill %d status events after an error; they are lost.",
                len(events),
                extra={"action": "sync_lost", "reason": "lost"},
            )

    def _requeue(self, events: Iterable[StatusEvent]) -> None:
        """Put events back in the buffer, under newer news for the same job."""
        with self._cond:
            for event in events:
                self._merge_locked(event, self._buffer.get(event.job_id))

    def _maybe_drain(self, metrics: SyncMetrics) -> None:
        outbox = self.outbox
        now = time.monotonic()
        if outbox is None or now < self._next_drain or (self._degraded and now < self._next_probe):
            return
        try:
            # while degraded this is a probe: one event, so that the outbox (and its depth gauge)
            # does not look empty for the time the store takes to fail again
            claim = outbox.take(1 if self._degraded else self.max_batch)
        except TransientStoreError:
            self._next_drain = now + self.drain_interval
            return
        if claim.key is None:
            self._next_drain = now + self.drain_interval
            self._next_depth_check = 0.0  # show the empty outbox now
            if self._drained:
                logger.info(
                    "Outbox drained: %d events in %.1fs.",
                    self._drained,
                    now - self._drain_started,
                    extra={
                        "action": "outbox_drained",
                        "events": self._drained,
                        "seconds": round(now - self._drain_started, 3),
                    },
                )
                self._drained = 0
            return
        if not self._drained:
            self._drain_started = now
        events = claim.events
        try:
            outcomes = self._apply(metrics, events, retry=False) if events else []
        except StoreError:
            try:
                outbox.put_back(claim)
            except TransientStoreError:  # Redis went away in between: keep them in memory too
                logger.warning(
                    "Could not return %d claimed outbox events; kept in memory, and the claim "
                    "comes back when its lease ends.",
                    len(events),
                    extra={"action": "outbox_put_back_failed", "reason": "outbox"},
                )
                self._requeue(events)
            self._degraded = True
            self._next_probe = time.monotonic() + self.probe_interval
            return
        try:
            outbox.done(claim)
        except TransientStoreError:  # applied, but still claimed: re-applied later, harmlessly
            logger.warning(
                "Could not release %d applied outbox events; they are applied again when the lease ends.",
                len(events),
                extra={"action": "outbox_done_failed", "reason": "outbox"},
            )
        self._degraded = False
        self._drained += len(events)
        self._record(metrics, events, outcomes)
        self._next_drain = now if len(claim.raw) == self.max_batch else now + min(self.drain_interval, 0.1)

    def _update_outbox_depth(self, metrics: SyncMetrics) -> None:
        """Sample the outbox's length every ``drain_interval`` seconds, while Redis answers."""
        now = time.monotonic()
        if self.outbox is None or now < self._next_depth_check:
            return
        self._next_depth_check = now + self.drain_interval
        depth = self.outbox.depth()
        if depth >= 0:
            metrics.outbox_depth.set(depth)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                logger.exception("Closing the status store failed.")


def _job_ids(events: Sequence[StatusEvent]) -> dict[str, object]:
    """Log ``extra`` naming a batch's jobs (ids only: never owners, payloads or results)."""
    return {"events": len(events), "job_ids": [event.job_id for event in events[:LOGGED_JOB_IDS]]}


__all__ = ["StatusWriter"]
