"""Report progress from inside an actor: ``progress.report(40, "writing lessons")``.

Works through Dramatiq's ``CurrentMessage`` middleware and the broker's
:class:`~middleware.status_sync.JobStatusMiddleware`. Outside a tracked job it does nothing, so
pipeline code can call it unconditionally. Only real changes are recorded, and at most a few
per second per job (the last one before completion is superseded by ``completed`` anyway).
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
    """Record the current job's progress (0..100). True when an event was produced."""
    current = CurrentMessage.get_current_message()
    if current is None:
        return False
    middleware = _status_middleware(dramatiq.get_broker())
    if middleware is None:
        return False
    return middleware.report_progress(current, percent, message)
