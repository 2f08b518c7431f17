"""Report progress from inside an actor: ``progress.report(40, "writing lessons")``.

Works through Dramatiq's ``CurrentMessage`` middleware and the broker's
:class:`~middleware.status_sync.JobStatusMiddleware`. Outside a tracked job it does nothing, so
pipeline code can call it unconditionally. Only real changes are recorded, and at most a few
per second per job (the last one before completion is superseded by ``completed`` anyway).

Every report is also a cancellation checkpoint: when cancellation of the running job was
requested, it raises :class:`~middleware.errors.JobCancelled` (the job ends ``cancelled`` and
is not retried). :func:`checkpoint` checks without reporting. The flag is read at most every
half second per job, so calling these in a tight loop stays cheap.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from .status_sync import JobStatusMiddleware


def _status_middleware(broker: dramatiq.Broker) -> JobStatusMiddleware | None:
    for middleware in broker.middleware:
        if isinstance(middleware, JobStatusMiddleware):
            return middleware
    return None


def report(percent: int, message: str | None = None) -> bool:
    """Record the current job's progress (0..100). True when an event was produced.

    A percent outside 0..100 is clamped; one that is not a finite number (NaN, a word) is
    ignored and logged once per job: progress never fails the job.

    Raises :class:`~middleware.errors.JobCancelled` when the job was cancelled.
    """
    current = CurrentMessage.get_current_message()
    if current is None:
        return False
    middleware = _status_middleware(dramatiq.get_broker())
    if middleware is None:
        return False
    middleware.check_cancelled(current)
    return middleware.report_progress(current, percent, message)


def checkpoint() -> None:
    """Raise :class:`~middleware.errors.JobCancelled` when the current job was cancelled."""
    current = CurrentMessage.get_current_message()
    if current is None:
        return
    middleware = _status_middleware(dramatiq.get_broker())
    if middleware is not None:
        middleware.check_cancelled(current)
