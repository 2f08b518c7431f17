"""install(): every middleware of the status system, each in its place on a broker.

Dramatiq runs before-hooks in list order and after-hooks in reverse. The status middleware must
see every message before another middleware can skip or fail it, and every outcome after
``Retries`` has decided whether it is retried, so it goes first; this function is the one place
that puts it there. The list it makes::

    0  JobStatusMiddleware            (TrackStatusOption when sync is off)
    1  WorkerPrometheus               (metrics=True)
    2  PayloadValidation              after the status middleware: a payload failing at run
                                      time is seen as active, then failed
    .. the broker's own               AgeLimit, TimeLimit, ..., Retries
    .. CurrentMessage                 added when missing: progress.report reads it
    .. ProducerOnly                   (producer_only=...): a worker refuses to boot

Call it once per broker, before declaring actors: an actor declared with ``track_status`` or
``payload_model`` on a broker without these middleware is refused by Dramatiq.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.middleware import CurrentMessage

from .errors import InstallError, ProducerOnlyError
from .metrics_endpoint import WorkerPrometheus
from .status_sync import JobStatusMiddleware
from .validation import PayloadValidation


class TrackStatusOption(Middleware):
    """Stands in for the status middleware when sync is off: actors still declare
    ``track_status=True``, only the option is known, no hook runs."""

    @property
    def actor_options(self) -> set[str]:
        return {"track_status"}


class ProducerOnly(Middleware):
    """Refuses to boot a worker: this configuration may send jobs, not run them (its statuses
    could only go to the outbox, for workers elsewhere to write). ``reason`` says what to fix."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        raise ProducerOnlyError(self.reason)


_OURS = (JobStatusMiddleware, TrackStatusOption, WorkerPrometheus, PayloadValidation, ProducerOnly)


def install(
    broker: Broker,
    status: JobStatusMiddleware | None,
    *,
    metrics: bool = False,
    producer_only: str | None = None,
) -> None:
    """Add the status system's middleware to ``broker``, in the order the module describes.

    ``status``: the process's status middleware, or None to leave status sync out (the
    ``track_status`` option stays valid). ``metrics``: add :class:`WorkerPrometheus` (Dramatiq's
    and status sync's metrics, booted in worker processes only). ``producer_only``: a worker
    booting on this broker refuses with :class:`~middleware.errors.ProducerOnlyError` and this
    reason. Raises :class:`~middleware.errors.InstallError` when the broker already has one of
    these middleware.
    """
    present = [type(m).__name__ for m in broker.middleware if isinstance(m, _OURS)]
    if present:
        raise InstallError(f"the broker already has {', '.join(present)}: install() once per broker")
    front: list[Middleware] = [status if status is not None else TrackStatusOption()]
    if metrics:
        front.append(WorkerPrometheus())
    front.append(PayloadValidation())
    for position, middleware in enumerate(front):
        if position > 0:
            broker.add_middleware(middleware, after=type(front[position - 1]))
        elif broker.middleware:  # add_middleware places by class; the first one's is at index 0
            broker.add_middleware(middleware, before=type(broker.middleware[0]))
        else:
            broker.add_middleware(middleware)
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    if producer_only is not None:
        broker.add_middleware(ProducerOnly(producer_only))


def status_middleware(broker: Broker) -> JobStatusMiddleware | None:
    """The broker's status middleware (None when status sync is off or not installed)."""
    for middleware in broker.middleware:
        if isinstance(middleware, JobStatusMiddleware):
            return middleware
    return None


__all__ = ["ProducerOnly", "TrackStatusOption", "install", "status_middleware"]
