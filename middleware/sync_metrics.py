"""Prometheus metrics of status sync. Names are an interface: alert rules and dashboards use them.

Nothing here imports ``prometheus_client`` at import time: it decides on multiprocess mode when
it is first imported (``PROMETHEUS_MULTIPROC_DIR`` set or not), so the metrics are created on
first use, by the writer thread, which a worker starts after its process has booted (see
:mod:`middleware.metrics_endpoint`). Labels never carry job, user or tenant ids.

Gauges in multiprocess mode: the queue depth is each process's own buffer, so the fleet's is the
sum over live processes (``livesum``); the outbox is one Redis list every process samples, so the
fleet's depth is the latest sample of any live process (``livemostrecent``), not a sum. So is
the retention lag: one process of the fleet reads it at a time (the cancel poller's lease holder,
at most once a minute), so the latest value set by any live process is the fleet's; a dead
process's value leaves the endpoint with its files (``mostrecent`` would keep it). Each host's
endpoint has its own latest value, and the hosts read in turns: the fleet's lag is the value of
the host with the latest read, which ``job_status_retention_lag_read_timestamp_seconds`` tells
(the alert JobStatusRetentionBehind picks it).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class SyncMetrics:
    """The metric objects; one instance per process (see :func:`get_metrics`)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry or REGISTRY
        self.events = Counter(
            "job_status_sync_events",
            "Status events produced by the hooks, by status.",
            ["status"],
            registry=registry,
        )
        self.writes = Counter(
            "job_status_sync_writes",
            "Batch write attempts to the status store, by outcome (success, failure).",
            ["outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "job_status_sync_failures",
            "Status sync failures by reason: failed write attempts (timeout, connection, ...), "
            "rejected and spilled events, hook errors, ...",
            ["reason"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "job_status_sync_write_seconds",
            "Time of one successful batch write to the status store.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "job_status_sync_lag_seconds",
            "Time from a status event to its row being persisted.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "job_status_sync_queue_depth",
            "Status events buffered in memory, waiting for the writer.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.outbox_depth = Gauge(
            "job_status_sync_outbox_depth",
            "Status events waiting in the durable outbox (one list shared by all processes).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.dead_letters = Counter(
            "job_status_sync_dead_letters",
            "Outbox entries moved to the dead letters, by reason (not_json, invalid, too_large, "
            "not_an_event, rejected, failing).",
            ["reason"],
            registry=registry,
        )
        self.dead_letter_depth = Gauge(
            "job_status_sync_dead_letter_depth",
            "Entries in the outbox's dead letters (one list shared by all processes).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.cancel_polls = Counter(
            "job_status_sync_cancel_polls",
            "Turns of the fleet's cancel poller in this process that read the store (polled: this "
            "process held the lease) or failed; the fleet's sum of polled is its database queries.",
            ["outcome"],
            registry=registry,
        )
        self.cancel_requests_copied = Counter(
            "job_status_sync_cancel_requests_copied",
            "Cancellation requests found in the database (cancel_job, a plain UPDATE) and "
            "flagged for the workers.",
            registry=registry,
        )
        self.retention_lag = Gauge(
            "job_status_retention_lag_seconds",
            "How far behind retention is: seconds past its time of the finished row the purge "
            "would delete next or of the quiet row the expiry would end next, whichever is more "
            "(0: nothing overdue). Read from the database by one process of the fleet at most once "
            "a minute.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.retention_lag_read_at = Gauge(
            "job_status_retention_lag_read_timestamp_seconds",
            "When job_status_retention_lag_seconds was last read (Unix time): the host with the "
            "latest read has the fleet's lag.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.retention_lag_reads = Counter(
            "job_status_retention_lag_reads",
            "Reads of the retention lag in this process, by outcome (read, failed).",
            ["outcome"],
            registry=registry,
        )
        self.lost = Counter(
            "job_status_sync_lost_events",
            "Status events neither written nor kept: the store and the outbox were both down "
            "while the writer stopped. Zero unless both failed at once.",
            registry=registry,
        )


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each value, at the cost of one update per bucket touched.

    In multiprocess mode every ``observe`` takes a lock and writes two memory-mapped values:
    for the writer's per-event lag, hundreds per batch, that was a measurable share of a
    worker's CPU. This counts the values into buckets first, then adds each bucket's count and
    the sum once. It relies on prometheus_client's Histogram internals (``_upper_bounds``,
    ``_buckets``, ``_sum``, unchanged since 0.4) and falls back to ``observe`` without them;
    a unit test checks both give the same exposition.
    """
    if not values:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket with value <= bound
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    total.inc(sum(values))


class _Disabled:
    """Stands in for every metric when they cannot be created: counts nothing, never raises."""

    def labels(self, *_args: Any, **_kwargs: Any) -> _Disabled:
        return self

    def inc(self, _amount: float = 1) -> None:
        return None

    def observe(self, _amount: float) -> None:
        return None

    def set(self, _value: float) -> None:
        return None


class DisabledMetrics(SyncMetrics):
    """What :func:`get_metrics` returns when prometheus_client cannot create the metrics."""

    def __init__(self) -> None:
        self.events = self.writes = self.failures = self.dead_letters = self.lost = _Disabled()
        self.cancel_polls = self.cancel_requests_copied = _Disabled()
        self.retention_lag = self.retention_lag_read_at = self.retention_lag_reads = _Disabled()
        self.write_seconds = self.lag_seconds = _Disabled()
        self.queue_depth = self.outbox_depth = self.dead_letter_depth = _Disabled()


_lock = threading.Lock()
_metrics: SyncMetrics | None = None


def get_metrics() -> SyncMetrics:
    """The process's metrics, created on first call.

    Status sync goes on without metrics when they cannot be created, typically a producer whose
    environment names a ``PROMETHEUS_MULTIPROC_DIR`` that does not exist there.
    """
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                try:
                    _metrics = SyncMetrics()
                except OSError as exc:
                    logger.error(
                        "Cannot create the status sync metrics (%s: %s); going on without them.",
                        type(exc).__name__,
                        exc,
                        extra={"action": "metrics_disabled"},
                    )
                    _metrics = DisabledMetrics()
    return _metrics
