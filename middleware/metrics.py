"""Prometheus metrics of status sync. Names are an interface: alert rules and dashboards use them.

Nothing here imports ``prometheus_client`` at import time: it decides on multiprocess mode when
metrics are created, so they are created on first use, after the worker process has booted
(``PROMETHEUS_MULTIPROC_DIR`` is set by then). Labels never carry job, user or tenant ids.
"""

from __future__ import annotations

import threading
from typing import Any

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
            "Batches written to the status store, by outcome (success, failure).",
            ["outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "job_status_sync_failures",
            "Status sync failures by reason (timeout, connection, rejected, hook, ...).",
            ["reason"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "job_status_sync_write_seconds",
            "Time of one batch write to the status store.",
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
            "Status events waiting in the durable outbox.",
            registry=registry,
            multiprocess_mode="max",
        )


_lock = threading.Lock()
_metrics: SyncMetrics | None = None


def get_metrics() -> SyncMetrics:
    """The process's metrics, created on first call."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = SyncMetrics()
    return _metrics
