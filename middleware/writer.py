"""StatusWriter: the one background thread per process that moves status events to the store.

Hooks call :meth:`StatusWriter.submit` and :meth:`StatusWriter.started`, which only touch the
in-memory :class:`~middleware.buffer.EventBuffer`. The thread takes a batch when one is due and
hands it to :class:`~middleware.delivery.Delivery` (retries, isolation of bad events,
replacements). When a batch is due follows the process's load, so that a fleet of processes
costs the database transactions in proportion to its work, not to its size:

* a busy process writes every ``flush_interval`` seconds (0.2 in production), or sooner when a
  batch is full (``max_batch``);
* a process with little to write lets its batch grow: news of fewer than ``min_batch`` jobs
  waits for more, up to ``max_wait`` seconds (0.8) after the first of it came in. A hundred
  processes each handling a trickle then write about ``1 / max_wait`` batches a second each,
  not ``1 / flush_interval``; one busy process writes as before;
* an idle process writes nothing; of the database it asks at most its turn of the fleet's cancel
  poll (below), one process at a time.

Also:

* when the store cannot take the batch, it is spilled to the durable outbox, and the writer
  stops calling the store except for a probe now and then (degraded); bad data never does this,
  only a store that cannot be reached or refuses every batch;
* between batches it drains the outbox (:class:`~middleware.drain.OutboxDrainer`), so that
  what was spilled, and what producers without a store pushed, reaches the store;
* in a worker process it also takes its turns in the fleet's cancel poll
  (:class:`~middleware.cancel_poll.CancelPoll`): cancellations requested in the database
  reach the Redis flags every worker reads;
* the buffer is flushed on :meth:`close` (worker shutdown) and at interpreter exit.

When the store and the outbox are both down, events wait in memory: hooks keep handing them
over without I/O until ``max_buffer`` jobs are held; past that a status waits up to
``max_block`` seconds for room and is then kept anyway (``job_status_sync_failures_total
{reason="overflow"}``), and a progress update is dropped (``reason="dropped_progress"``); the
writer says so once (``sync_buffer_full``) and once when there is room again
(``sync_buffer_room``). Nothing held is lost unless the process stops before either store
answers (``job_status_sync_lost_events_total``, ``sync_lost``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from .buffer import DROPPED_PROGRESS, OVERFLOW, EventBuffer
from .cancel_poll import CancelPoll
from .delivery import Delivery, StoreUnavailable, job_ids
from .drain import Drained, OutboxDrainer, log_drained
from .errors import TransientStoreError
from .events import JobStart, StatusEvent
from .outbox import RedisOutbox
from .stores.base import StatusStore
from .sync_metrics import SyncMetrics, get_metrics

logger = logging.getLogger(__name__)


class StatusWriter:
    """Coalesces, batches and writes status events from a background thread.

    Parameters:
      store_factory: builds the store, called once in the writer thread (so after any fork).
      outbox: where batches go when the store stays down, and where producers' events wait.
      flush_interval: the shortest time between two batches (unless one fills ``max_batch``).
      min_batch: jobs with news that make a batch worth a transaction at once; fewer wait.
      max_wait: seconds the news of fewer than ``min_batch`` jobs waits for more after the first
        of it came in (never less than ``flush_interval``). With ``min_batch=1`` every batch
        goes after ``flush_interval``, whatever its size.
      max_batch: events per batch.
      max_batch_bytes: encoded size of one store round trip; a larger batch is split.
      max_buffer: jobs held in memory (buffered, or taken and not yet written or spilled)
        before backpressure starts (see :mod:`middleware.buffer`).
      retry_attempts, retry_seconds: bounds of the tenacity retries of one batch.
      probe_interval: while degraded, seconds between attempts to reach the store again.
      drain_interval: seconds between looks at the outbox while it is empty.
      max_block: seconds a submitting thread waits for room in a full buffer, at most, per
        status; then the status is kept anyway and counted as an overflow (0: never waits).
      close_timeout: seconds :meth:`close` waits for the last batches.
      cancel_poll: the fleet's cancel poll, taken part in once :meth:`start` was called (a
        worker booting); producers start the thread lazily and never poll.
      sleep: how tenacity sleeps (tests inject a fake).
    """

    def __init__(
        self,
        store_factory: Callable[[], StatusStore],
        *,
        outbox: RedisOutbox | None = None,
        flush_interval: float = 0.2,
        min_batch: int = 50,
        max_wait: float = 0.8,
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
        cancel_poll: CancelPoll | None = None,
    ) -> None:
        self._store_factory = store_factory
        self.cancel_poll = cancel_poll
        self.outbox = outbox
        self.flush_interval = flush_interval
        self.min_batch = min_batch
        self.max_wait = max_wait
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
        self._buffer = EventBuffer(
            max_batch=self.max_batch, max_buffer=self.max_buffer, max_block=self.max_block
        )
        self._lock, self._cond = self._buffer.lock, self._buffer.cond
        self._delivery = Delivery(
            self._store_factory,
            max_batch_bytes=self.max_batch_bytes,
            retry_attempts=self.retry_attempts,
            retry_seconds=self.retry_seconds,
            stopping=lambda: self._stopping,
            sleep=self._sleep,
        )
        self._drainer = None if self.outbox is None else OutboxDrainer(self.outbox, self._delivery)
        self._flush_requested = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._degraded = False
        self._next_probe = 0.0
        self._next_drain = 0.0
        self._drained = 0
        self._drain_started = 0.0
        self._next_depth_check = 0.0
        self._atexit_registered = False
        self._polling = False  # a worker's writer takes its turns in the cancel poll
        self._outbox_down = False  # said once (sync_outbox_down) until a write or spill succeeds
        self._lost = 0  # events lost by the current close()
        # since when the buffer has been full (None: it is not), and what it cost since
        self._full_since: float | None = None
        self._overflowed = 0
        self._dropped = 0
        # the thread's clock (time.monotonic()): when it last looked at the buffer; the look
        # after which the news now buffered began to come in (None: nothing buffered); and the
        # earliest time the next batch may go unless it is full (flush_interval after the last)
        self._looked_at = 0.0
        self._waiting_since: float | None = None
        self._next_batch = 0.0

    def __repr__(self) -> str:
        return f"StatusWriter(buffered={len(self._buffer)}, degraded={self._degraded})"

    # -- the hooks' side ------------------------------------------------------------------

    def submit(self, event: StatusEvent) -> None:
        """Hand an event over. Microseconds, no I/O; waits only under heavy backpressure."""
        with self._lock:  # the condition's lock; entered directly, this is the hot path
            if self._thread is None:
                self._start()
            self._buffer.add_locked(event)

    def started(self, start: JobStart) -> None:
        """Note that a job began running (its ``active`` event, made lazily).

        The next flush makes the event (stamped with the start time) unless an event of the
        job was submitted in between: a job that ends within a flush interval is written once.
        """
        with self._lock:
            if self._thread is None:
                self._start()
            self._buffer.start_locked(start)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything buffered so far; True when it was written (or spilled)."""
        with self._cond:
            if self._thread is None:
                return not len(self._buffer)
            self._flush_requested = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._buffer.empty, timeout=timeout)
            self._flush_requested = False
            return done

    def close(self, timeout: float | None = None) -> bool:
        """Flush, stop the thread and close the store; True when everything was written or
        spilled (False: events left unwritten, or lost with the store and Redis both down).
        The writer restarts on the next submit."""
        timeout = self.close_timeout if timeout is None else timeout
        with self._cond:
            thread = self._thread
            if thread is None:
                return True
            self._stopping = True
            self._lost = 0
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            left = len(self._buffer) + self._buffer.inflight
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
        return left == 0 and not self._lost

    def prepare(self) -> None:
        """Build the store now, in the calling thread, and let it warm up (see the stores'
        ``prepare``). A worker calls this at boot, before its threads take messages: importing
        a database client holds the GIL for hundreds of milliseconds, which the first jobs
        would otherwise wait out. No network round trip; a failure is logged, and the writer
        thread builds the store at its first batch as usual."""
        with self._lock:
            if self._delivery.store is not None:
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
            self._delivery.store = store

    def start(self) -> None:
        """Start the thread now rather than at the first event (a worker must drain the
        outbox even before it processes anything), and take part in the cancel poll."""
        with self._cond:
            self._polling = self.cancel_poll is not None
            if self._thread is None:
                self._start()

    @property
    def buffered(self) -> int:
        """Events waiting for the thread (a running job's pending ``active`` counts)."""
        return len(self._buffer)

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
        if self._thread is not None and not self._buffer.empty:
            self.close()

    def _run(self) -> None:
        metrics = self._metrics_factory()
        buffer = self._buffer
        self._looked_at = time.monotonic()
        self._next_batch = self._looked_at + self.flush_interval
        while True:
            with self._cond:
                if not self._due_locked():
                    self._cond.wait(self._timeout_locked())
                batch = self._take_locked() if self._due_locked() else []
                stopping = self._stopping
                counts = buffer.take_counts_locked()
                waiting = len(buffer) + buffer.inflight
                held = buffer.held
            _count_events(metrics, counts)
            self._note_buffer(counts, held)
            metrics.queue_depth.set(waiting)
            if batch:
                try:
                    self._write(metrics, batch)
                except Exception:  # a bug here must not end the thread nor lose the batch
                    logger.exception(
                        "Status writer failed on a batch.",
                        extra={"action": "sync_error", "reason": "error", **job_ids(batch)},
                    )
                    metrics.failures.labels("error").inc()
                    self._spill(metrics, batch)
                finally:
                    buffer.done(len(batch))
                # the next batch: at once if the buffer is full, else flush_interval from now
                self._next_batch = time.monotonic() + self.flush_interval
            elif stopping:
                break
            if not stopping:  # also between batches: under steady load the outbox must drain too
                try:
                    self._maybe_drain(metrics)
                    self._update_outbox_depth(metrics)
                    if self._polling and not self._degraded and self.cancel_poll is not None:
                        self.cancel_poll.maybe_poll(self._delivery.get_store, metrics)
                except Exception:  # the thread must outlive any outbox surprise; a claim taken
                    # here and not settled comes back when its lease ends
                    logger.exception("Status writer failed on the outbox.", extra={"action": "sync_error"})
                    metrics.failures.labels("error").inc()
                    self._next_drain = self._next_depth_check = time.monotonic() + self.drain_interval
        metrics.queue_depth.set(0)
        self._delivery.close()

    def _due_locked(self) -> bool:
        """Whether a batch is due (see the module docstring). Lock held; writer thread only.

        News does not wake the thread (only a full batch does), so the time it came in is not
        known: it is taken to be the previous look, the earliest it can be. A batch never
        waits longer than ``max_wait``, only sometimes a little less.
        """
        if self._stopping or self._flush_requested or len(self._buffer.events) >= self.max_batch:
            return True
        now = time.monotonic()
        looked, self._looked_at = self._looked_at, now
        waiting = len(self._buffer)
        if not waiting:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = looked
        if now < self._next_batch:
            return False
        return waiting >= self.min_batch or now >= self._waiting_since + self.max_wait

    def _timeout_locked(self) -> float:
        """Seconds until the next look: when the next batch may go, or may have grown to
        ``min_batch``; one ``flush_interval`` from now once that time has passed; never after
        the batch's ``max_wait`` is up."""
        now = time.monotonic()
        look = self._next_batch if self._next_batch > now else now + self.flush_interval
        if self._waiting_since is not None:
            look = min(look, max(self._next_batch, self._waiting_since + self.max_wait))
        return max(look - now, 0.0)

    def _note_buffer(self, counts: collections.Counter[str], held: int) -> None:
        """Say once that the buffer is full (hooks now wait, statuses go past the bound,
        progress is dropped), and once that it has room again, with what it cost."""
        overflowed, dropped = counts.get(OVERFLOW, 0), counts.get(DROPPED_PROGRESS, 0)
        if overflowed or dropped:
            if self._full_since is None:
                self._full_since = time.monotonic()
                logger.warning(
                    "Status buffer full (%d jobs held, max_buffer %d): each further status "
                    "waits up to %.2fs for room, then is kept anyway; progress updates are dropped.",
                    held,
                    self.max_buffer,
                    self.max_block,
                    extra={"action": "sync_buffer_full", "held": held, "max_buffer": self.max_buffer},
                )
            self._overflowed += overflowed
            self._dropped += dropped
        elif self._full_since is not None and held < self.max_buffer:
            seconds = time.monotonic() - self._full_since
            logger.info(
                "Status buffer has room again after %.1fs: %d statuses were kept past max_buffer, "
                "%d progress updates dropped.",
                seconds,
                self._overflowed,
                self._dropped,
                extra={
                    "action": "sync_buffer_room",
                    "seconds": round(seconds, 3),
                    "overflow": self._overflowed,
                    "dropped_progress": self._dropped,
                },
            )
            self._full_since = None
            self._overflowed = self._dropped = 0

    def _take_locked(self) -> list[StatusEvent]:
        batch = self._buffer.take_locked()
        if not len(self._buffer):
            self._waiting_since = None
        return batch

    def _write(self, metrics: SyncMetrics, batch: list[StatusEvent]) -> None:
        if self._degraded and time.monotonic() < self._next_probe and self.outbox is not None:
            self._spill(metrics, batch)
            return
        try:
            outcomes = self._delivery.deliver(metrics, batch, retry=not self._degraded)
        except StoreUnavailable as exc:
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
        self._outbox_down = False
        if self._degraded:
            logger.info("Status store reachable again.", extra={"action": "sync_recovered"})
            self._degraded = False
            self._next_drain = 0.0
        rejected = [
            (e.to_json(), f"rejected: {o.reason}") for e, o in zip(batch, outcomes, strict=True) if o.rejected
        ]
        if rejected:
            self._bury(metrics, rejected)

    def _bury(self, metrics: SyncMetrics, letters: list[tuple[str, str]]) -> None:
        """Keep what the store rejected and nothing could replace, for an operator to see (the
        rejection was logged and counted already)."""
        if self.outbox is None:
            return
        try:
            self.outbox.bury(letters)
            metrics.dead_letters.labels("rejected").inc(len(letters))
        except TransientStoreError:
            logger.warning(
                "Could not keep %d rejected status events in the dead letters (Redis down).",
                len(letters),
                extra={"action": "sync_bury_failed", "reason": "outbox"},
            )

    def _spill(self, metrics: SyncMetrics, events: list[StatusEvent]) -> None:
        """To the outbox; else back into the buffer (or, when stopping, counted as lost)."""
        if self.outbox is not None:
            try:
                self.outbox.push(events)  # every event encodes: see middleware.storable
                metrics.failures.labels("spilled").inc(len(events))
                self._outbox_down = False
                return
            except TransientStoreError as exc:
                metrics.failures.labels(exc.reason).inc()
                if not self._outbox_down:  # once, not at every batch while both stay down
                    self._outbox_down = True
                    logger.error(
                        "Outbox unavailable too; keeping %d events in memory.",
                        len(events),
                        extra={"action": "sync_outbox_down", "reason": exc.reason} | job_ids(events),
                    )
        if self._stopping:
            metrics.lost.inc(len(events))
            self._lost += len(events)
            logger.error(
                "Stopping with the store and the outbox down: %d status events are lost.",
                len(events),
                extra={"action": "sync_lost", "reason": "lost"} | job_ids(events),
            )
            return
        self._buffer.requeue(events)
        self._sleep(min(self.probe_interval, 0.5))  # do not spin while everything is down

    def _maybe_drain(self, metrics: SyncMetrics) -> None:
        now = time.monotonic()
        if self._drainer is None or now < self._next_drain or (self._degraded and now < self._next_probe):
            return
        # while degraded this is a probe: one entry, so that the outbox (and its depth gauge)
        # does not look empty for the time the store takes to fail again
        result = self._drainer.drain_once(metrics, 1 if self._degraded else self.max_batch)
        if result.state is Drained.OUTBOX_DOWN:
            self._next_drain = now + self.drain_interval
        elif result.state is Drained.EMPTY:
            self._next_drain = now + self.drain_interval
            self._next_depth_check = 0.0  # show the empty outbox now
            if self._drained:
                log_drained(self._drained, self._drain_started)
                self._drained = 0
        elif result.state is Drained.STORE_DOWN:
            if not self._degraded:  # found down by the drain: said once, as a failed write says it
                logger.warning(
                    "Status store unavailable (%s); spilling to the outbox until it answers.",
                    result.reason,
                    extra={"action": "sync_spill", "reason": result.reason},
                )
            self._degraded = True
            self._next_probe = time.monotonic() + self.probe_interval
        else:
            if not self._drained:
                self._drain_started = now
            if result.delivered:  # the store answered
                self._degraded = False
            self._drained += result.entries
            full = result.entries == self.max_batch
            self._next_drain = now if full else now + min(self.drain_interval, 0.1)

    def _update_outbox_depth(self, metrics: SyncMetrics) -> None:
        """Sample the outbox's lengths every ``drain_interval`` seconds, while Redis answers."""
        now = time.monotonic()
        if self.outbox is None or now < self._next_depth_check:
            return
        self._next_depth_check = now + self.drain_interval
        depth = self.outbox.depth()
        if depth >= 0:
            metrics.outbox_depth.set(depth)
        dead = self.outbox.dead_depth()
        if dead >= 0:
            metrics.dead_letter_depth.set(dead)


def _count_events(metrics: SyncMetrics, counts: collections.Counter[str]) -> None:
    for name, n in counts.items():
        if name == DROPPED_PROGRESS:
            metrics.failures.labels("dropped_progress").inc(n)
        elif name == OVERFLOW:
            metrics.failures.labels("overflow").inc(n)
        else:
            metrics.events.labels(name).inc(n)


__all__ = ["StatusWriter"]
