"""Delivery: one batch of status events into the store, whatever it holds.

The writer's flush and the outbox drainer both hand their batches here. A batch goes in
round trips of at most ``max_batch_bytes`` (encoded), each retried with tenacity on transient
errors. What happens next depends on why the store said no:

* it cannot be reached, or refuses every batch (:class:`TransientStoreError`, a plain
  :class:`PermanentStoreError`): :class:`StoreUnavailable` is raised and the caller keeps the
  events (outbox), since nothing in them is wrong;
* it refused the batch for what it holds (:class:`RejectedBatchError`), or raised something
  unexpected: the batch is split in halves until the bad events stand alone; the others are
  written at once;
* it rejected an event (alone, or as the store's per-event answer): the rejection is logged and
  counted, and a job is never left without news of how it ended: a rejected event is replaced
  by a plain one of the same status that says it was rejected and why (no result, texts or
  progress message of its own), and if that is refused too, a terminal event by a bare
  ``failed`` one. A job whose owner is unknown, or whose event claims another job's identity,
  gets no replacement: there is no row of its own to write.

An unexpected error is blamed on the data only when the store took other events of the same
delivery; when it took none, the store is broken: :class:`StoreUnavailable` keeps the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from .errors import PermanentStoreError, RejectedBatchError, StoreError, TransientStoreError
from .events import Status, StatusEvent
from .redaction import redact
from .stores.base import REJECTED, REPLACED, Outcome, StatusStore
from .sync_metrics import SyncMetrics, observe_many

logger = logging.getLogger(__name__)

#: job ids named in one log record, at most
LOGGED_JOB_IDS = 20
#: error_type of an event written in place of a rejected one
REJECTED_TYPE = "StatusEventRejected"
#: rejection reasons a replacement cannot help: the job has no row of its own to write
NO_REPLACEMENT = ("unknown_tenant", "unknown_user", "identity_mismatch")


class StoreUnavailable(Exception):
    """The store cannot take the batch now; nothing in the batch is to blame."""

    def __init__(self, cause: StoreError) -> None:
        self.cause = cause
        self.reason = cause.reason
        super().__init__(str(cause))


class _Unexpected(StoreError):
    """The store raised something that is not a StoreError (a bug, or data it chokes on)."""

    reason = "error"


class _Trips:
    """What the round trips of one delivery came to."""

    __slots__ = ("ok", "unexpected")

    def __init__(self) -> None:
        self.ok = 0
        self.unexpected = 0


class Delivery:
    """Applies batches to the store built by ``store_factory`` (see the module docstring).

    Parameters:
      max_batch_bytes: encoded size of one round trip; a larger batch goes in several.
      retry_attempts, retry_seconds: bounds of the tenacity retries of one round trip.
      stopping: true once the writer stops (retries end early then).
      sleep: how tenacity sleeps (tests inject a fake).
    """

    def __init__(
        self,
        store_factory: Callable[[], StatusStore],
        *,
        max_batch_bytes: int = 1_000_000,
        retry_attempts: int = 5,
        retry_seconds: float = 5.0,
        stopping: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store_factory = store_factory
        self.store: StatusStore | None = None
        self.max_batch_bytes = max_batch_bytes
        self.retry_attempts = retry_attempts
        self.retry_seconds = retry_seconds
        self._stopping = stopping
        self._sleep = sleep

    def get_store(self) -> StatusStore:
        """The store, built on first use (in the writer thread, so after any fork)."""
        if self.store is None:
            self.store = self._store_factory()
        return self.store

    def deliver(self, metrics: SyncMetrics, events: Sequence[StatusEvent], *, retry: bool) -> list[Outcome]:
        """One :class:`Outcome` per event, in order; rejections logged, counted and replaced.

        Raises :class:`StoreUnavailable` (after the retries when ``retry``): the caller keeps
        the events. Round trips that succeeded before it are written (events are idempotent).
        """
        return self._deliver(metrics, events, retry, replacing=False)

    def _deliver(
        self, metrics: SyncMetrics, events: Sequence[StatusEvent], retry: bool, *, replacing: bool
    ) -> list[Outcome]:
        trips = _Trips()
        try:
            outcomes: list[Outcome] = []
            for chunk in self._chunks(events):
                outcomes += self._isolate(metrics, chunk, retry, trips)
        except (TransientStoreError, PermanentStoreError) as exc:  # RejectedBatchError never gets here
            raise StoreUnavailable(exc) from exc
        if trips.unexpected and not trips.ok and not replacing:
            # the store took none of these events: it is broken, not the events (a replacement
            # is only tried once the store took other events, so this does not apply to it)
            raise StoreUnavailable(TransientStoreError("the store raised on every event", reason="error"))
        self._settle(metrics, events, outcomes, retry)
        return outcomes

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                logger.exception("Closing the status store failed.", extra={"action": "sync_close_failed"})

    # -- round trips -------------------------------------------------------------------------

    def _chunks(self, events: Sequence[StatusEvent]) -> list[Sequence[StatusEvent]]:
        chunks: list[Sequence[StatusEvent]] = []
        start, size = 0, 0
        for i, event in enumerate(events):
            weight = event.size_bound() + 1  # an upper bound of its JSON, without encoding it
            if i > start and size + weight > self.max_batch_bytes:
                chunks.append(events[start:i])
                start, size = i, 0
            size += weight
        if start < len(events):
            chunks.append(events[start:])
        return chunks

    def _isolate(
        self, metrics: SyncMetrics, events: Sequence[StatusEvent], retry: bool, trips: _Trips
    ) -> list[Outcome]:
        """Outcomes of ``events``, halving the batch while the store refuses it for its data."""
        try:
            outcomes = self._round_trip(metrics, events, retry)
        except (RejectedBatchError, _Unexpected) as exc:
            if isinstance(exc, _Unexpected):
                trips.unexpected += 1
            if len(events) == 1:
                reason = exc.reason if isinstance(exc, RejectedBatchError) else "store_error"
                return [Outcome(events[0].job_id, REJECTED, f"{reason}: {_detail(exc)}")]
            half = len(events) // 2
            first = self._isolate(metrics, events[:half], retry, trips)
            return first + self._isolate(metrics, events[half:], retry, trips)
        trips.ok += 1
        return outcomes

    def _round_trip(self, metrics: SyncMetrics, events: Sequence[StatusEvent], retry: bool) -> list[Outcome]:
        tries = 0

        def attempt() -> list[Outcome]:
            nonlocal tries
            tries += 1
            started = time.perf_counter()
            try:
                outcomes = self.get_store().apply(events)
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
                    | job_ids(events),
                )
                raise
            except Exception as exc:  # a store bug, or data it chokes on: isolated like bad data
                metrics.writes.labels("failure").inc()
                metrics.failures.labels("error").inc()
                logger.exception(
                    "Status store raised unexpectedly (attempt %d).",
                    tries,
                    extra={"action": "sync_error", "reason": "error", "attempt": tries} | job_ids(events),
                )
                raise _Unexpected(f"{type(exc).__name__}") from exc
            metrics.write_seconds.observe(time.perf_counter() - started)
            metrics.writes.labels("success").inc()
            if len(outcomes) != len(events):  # a store must answer for every event
                raise _Unexpected(f"{len(outcomes)} outcomes for {len(events)} events")
            return outcomes

        retrying = Retrying(
            stop=(
                stop_after_attempt(self.retry_attempts if retry else 1)
                | stop_after_delay(self.retry_seconds)
                | (lambda _state: self._stopping())
            ),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            retry=retry_if_exception_type(TransientStoreError),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(attempt)

    # -- rejections --------------------------------------------------------------------------

    def _settle(
        self, metrics: SyncMetrics, events: Sequence[StatusEvent], outcomes: list[Outcome], retry: bool
    ) -> None:
        """Log, count and replace the rejected events; observe the lag of the written ones."""
        now = time.time()
        lags = []
        replacements: list[tuple[int, StatusEvent]] = []
        for i, (event, outcome) in enumerate(zip(events, outcomes, strict=True)):
            if not outcome.rejected:
                lags.append(now - event.event_at if now > event.event_at else 0.0)
                continue
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
            replacement = replacement_for(event, outcome.reason or "rejected")
            if replacement is not None:
                replacements.append((i, replacement))
        # a producer's clock ahead of ours would make a negative lag: counted as zero
        observe_many(metrics.lag_seconds, lags)
        if not replacements:
            return
        answers = self._deliver(metrics, [event for _i, event in replacements], retry, replacing=True)
        for (i, replacement), answer in zip(replacements, answers, strict=True):
            if answer.outcome != REJECTED:
                outcomes[i] = Outcome(outcomes[i].job_id, REPLACED, outcomes[i].reason)
                metrics.failures.labels("replaced").inc()
                logger.warning(
                    "A rejected status event was replaced by a %s event that says why.",
                    replacement.status.value,
                    extra={"action": "sync_replaced", "job_id": replacement.job_id,
                           "status": replacement.status.value},
                )  # fmt: skip


def replacement_for(event: StatusEvent, reason: str) -> StatusEvent | None:
    """What to write in place of a rejected ``event`` (see the module docstring), or None."""
    if reason.split(":", 1)[0] in NO_REPLACEMENT:
        return None
    message = f"the status event was rejected by the store: {reason}"
    if event.error_type == REJECTED_TYPE:  # a replacement refused in turn
        if not event.status.terminal or (event.status is Status.FAILED and event.progress is None):
            return None
        status, progress = Status.FAILED, None  # the barest terminal event there is
    else:
        status, progress = event.status, event.progress
    return StatusEvent.of(
        event.identity,
        status,
        event.attempt,
        event.event_at,
        started_at=event.started_at,
        progress=progress,
        next_retry_at=event.next_retry_at if status is Status.RETRYING else None,
        error_type=REJECTED_TYPE,
        error_message=message,
    )


def job_ids(events: Sequence[StatusEvent]) -> dict[str, object]:
    """Log ``extra`` naming a batch's jobs (ids only: never owners, payloads or results)."""
    return {"events": len(events), "job_ids": [event.job_id for event in events[:LOGGED_JOB_IDS]]}


def _detail(exc: BaseException) -> str:
    return redact(str(exc))[:200]


__all__ = ["NO_REPLACEMENT", "REJECTED_TYPE", "Delivery", "StoreUnavailable", "job_ids", "replacement_for"]
