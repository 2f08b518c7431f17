"""A pytest kit for the actors of an application that uses this package.

Registered as a pytest plugin (the ``pytest11`` entry point ``middleware.testing``): installing
the package makes the fixtures below available to every test suite, and they do nothing unless a
test asks for one. ``pytest_plugins = ["middleware.testing"]`` in a conftest says the same.

* ``status_broker``: a fresh :class:`~dramatiq.brokers.stub.StubBroker` wired as production is,
  through :func:`middleware.install`, and Dramatiq's global broker for the test (so
  ``@dramatiq.actor`` and :mod:`middleware.progress` find it);
* ``status_worker``: a :class:`StatusWorker` running on it; ``status_worker.join()`` returns once
  everything sent has run, its after-hooks have finished and the writer has written its events;
* ``status_store``: a :class:`RecordingStore`, every event of every job in the order the status
  middleware produced it (statuses, progress, result, error), for assertions;
* ``status_cancel_flags``: :class:`InMemoryCancelFlags`, to cancel a job as a producer would;
* ``status_backend``: the store behind ``status_store``; None (record only) unless a test module
  or conftest overrides it, for instance with ``coursegen.testing``'s real PostgreSQL;
* ``status_broker_options``: what ``status_broker`` is made with (:func:`make_status_broker`);
  override it to give the broker your production broker's own middleware list.

Actors declared at import on the application's own broker move onto ``status_broker`` for a
test with :func:`use_broker`. The fakes record; none decides whether a transition is allowed
(that is the SQL's job, tested on a real database).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
from dramatiq import Actor, Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import default_middleware
from dramatiq.middleware.retries import Retries

from .events import JobStart, Status, StatusEvent, active_event
from .status_sync import JobStatusMiddleware
from .stores.base import APPLIED, Outcome, StatusStore
from .wiring import install, status_middleware
from .writer import StatusWriter

__all__ = [
    "InMemoryCancelFlags",
    "RecordingStore",
    "RecordingWriter",
    "StatusWorker",
    "make_status_broker",
    "use_broker",
]


class RecordingStore:
    """A :class:`~middleware.stores.base.StatusStore` for tests that records, in order, every
    event the status middleware produced (:meth:`events`) and every event the writer delivered
    (:meth:`written`: coalesced, as a row receives them). Answers ``applied``, or hands the batch
    to ``backend`` (a real store) and returns its answer."""

    def __init__(self, backend: StatusStore | None = None) -> None:
        self.backend = backend
        self._events: list[StatusEvent] = []
        self._written: list[tuple[StatusEvent, Outcome]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecordingStore(events={len(self._events)}, backend={self.backend!r})"

    # -- the hooks' and the writer's side --------------------------------------------------

    def record(self, event: StatusEvent) -> None:
        """An event as the status middleware handed it over (see :class:`RecordingWriter`)."""
        with self._lock:
            self._events.append(event)

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        if self.backend is None:
            outcomes = [Outcome(event.job_id, APPLIED) for event in events]
        else:
            outcomes = self.backend.apply(events)
        with self._lock:
            self._written.extend(zip(events, outcomes, strict=True))
        return outcomes

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()

    # -- assertions --------------------------------------------------------------------------

    def events(self, job_id: str | None = None) -> list[StatusEvent]:
        """Every event produced (of one job), in order; a job that started has its ``active``
        event, with no progress, even when it ended before the writer would have written it."""
        with self._lock:
            return [e for e in self._events if job_id is None or e.job_id == job_id]

    def statuses(self, job_id: str) -> list[Status]:
        return [event.status for event in self.events(job_id)]

    def progress(self, job_id: str) -> list[tuple[int, str | None]]:
        """The progress the job reported, in order: (percent, message)."""
        return [
            (e.progress, e.progress_message)
            for e in self.events(job_id)
            if e.status is Status.ACTIVE and e.progress is not None
        ]

    def last(self, job_id: str) -> StatusEvent:
        """The job's latest event (its final status once it has ended)."""
        events = self.events(job_id)
        if not events:
            raise AssertionError(f"no status event for job {job_id}; jobs seen: {self.job_ids()}")
        return events[-1]

    def job_ids(self) -> list[str]:
        """The jobs seen, in the order of their first event."""
        return list(dict.fromkeys(event.job_id for event in self.events()))

    def written(self, job_id: str | None = None) -> list[StatusEvent]:
        """The events the writer delivered (of one job), in order."""
        with self._lock:
            return [e for e, _ in self._written if job_id is None or e.job_id == job_id]

    def outcomes(self, job_id: str | None = None) -> list[Outcome]:
        """What the store answered for each event delivered (of one job)."""
        with self._lock:
            return [o for e, o in self._written if job_id is None or e.job_id == job_id]


class RecordingWriter(StatusWriter):
    """The real :class:`StatusWriter`, writing to ``store``, which also hands every event to
    ``store.record`` as the hooks submit it (before the buffer coalesces it)."""

    def __init__(self, store: RecordingStore, **options: Any) -> None:
        super().__init__(lambda: store, **options)
        self.store = store

    def submit(self, event: StatusEvent) -> None:
        self.store.record(event)
        super().submit(event)

    def started(self, start: JobStart) -> None:
        self.store.record(active_event(start))
        super().started(start)


class InMemoryCancelFlags:
    """Cancellation requests in memory, with the API of :class:`~middleware.cancel.RedisCancelFlags`."""

    def __init__(self) -> None:
        self._requested: set[str] = set()

    def request(self, job_id: str) -> None:
        self._requested.add(job_id)

    def is_requested(self, job_id: str) -> bool:
        return job_id in self._requested


def make_status_broker(
    store: RecordingStore,
    *,
    middleware: list[Middleware] | None = None,
    cancel_flags: InMemoryCancelFlags | None = None,
    flush_interval: float = 0.01,
    **status_options: Any,
) -> StubBroker:
    """A StubBroker with the status system installed by :func:`middleware.install`, writing
    to ``store``.

    ``middleware``: the broker's own list, as your production broker has it (default:
    Dramatiq's, with retries 1-10 ms apart). ``status_options`` go to
    :class:`JobStatusMiddleware` (``owner_of``, ``track_all``, ...); progress is recorded at
    every change and the cancellation flag read at every checkpoint unless they say otherwise.
    """
    writer = RecordingWriter(store, flush_interval=flush_interval, close_timeout=5.0)
    status_options.setdefault("progress_interval", 0.0)
    status_options.setdefault("cancel_check_interval", 0.0)
    if cancel_flags is not None:
        status_options.setdefault("is_cancel_requested", cancel_flags.is_requested)
    if middleware is None:
        middleware = [
            Retries(min_backoff=1, max_backoff=10) if m is Retries else m() for m in default_middleware
        ]
    broker = StubBroker(middleware=middleware)
    install(broker, JobStatusMiddleware(writer, **status_options))
    broker.emit_after("process_boot")
    return broker


@contextlib.contextmanager
def use_broker(broker: dramatiq.Broker, *actors: Actor[Any, Any]) -> Iterator[dramatiq.Broker]:
    """Move actors declared on another broker (the application's, at import) onto ``broker``
    for the duration of the block; their ``send()`` enqueues there."""
    moved: list[tuple[Actor[Any, Any], dramatiq.Broker]] = []
    try:
        for actor in actors:
            if actor.broker is broker:
                continue
            unknown = sorted(set(actor.options) - broker.actor_options)
            if unknown:
                raise ValueError(
                    f"{actor.actor_name} has options {unknown} that no middleware of {broker!r} "
                    "declares: give make_status_broker your broker's list (middleware=[...], "
                    "for the fixtures through status_broker_options)"
                )
            moved.append((actor, actor.broker))
            actor.broker = broker
            broker.declare_actor(actor)
        yield broker
    finally:
        for actor, home in reversed(moved):
            broker.actors.pop(actor.actor_name, None)
            actor.broker = home


class StatusWorker:
    """A Dramatiq worker on a broker wired through :func:`middleware.install`."""

    def __init__(self, broker: StubBroker, *, worker_threads: int = 8) -> None:
        self.broker = broker
        self.worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=worker_threads)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def join(self, *, timeout: float = 30.0, fail_fast: bool = False) -> None:
        """Wait until every message sent so far (and every retry, every message they sent) has
        run, its after-hooks have finished (``StubBroker.join`` returns before them) and the
        writer has written the events. ``fail_fast``: raise the error of a message that failed
        (by default its failure is recorded, for the test to assert on)."""
        deadline = time.monotonic() + timeout
        queues = self.broker.queues
        while True:
            for name in [n for n in list(queues) if n not in self.broker.delay_queues]:
                left = max(1, int((deadline - time.monotonic()) * 1000))
                self.broker.join(name, timeout=left, fail_fast=fail_fast)
            self.worker.join()
            if not any(queue.unfinished_tasks for queue in list(queues.values())):
                break
        status = status_middleware(self.broker)
        if status is not None and not status.writer.flush(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"the status writer did not write its events within {timeout}s")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def status_backend() -> StatusStore | None:
    """The store ``status_store`` writes through: None records only. Override it to write
    real rows (``coursegen.testing``'s ``status_database.store()``)."""
    return None


@pytest.fixture
def status_store(status_backend: StatusStore | None) -> RecordingStore:
    """Every status event of every job, in order (a :class:`RecordingStore`)."""
    return RecordingStore(status_backend)


@pytest.fixture
def status_cancel_flags() -> InMemoryCancelFlags:
    """``status_cancel_flags.request(job_id)`` cancels a job, as a producer would."""
    return InMemoryCancelFlags()


@pytest.fixture
def status_broker_options() -> dict[str, Any]:
    """Keyword arguments of :func:`make_status_broker` for ``status_broker``: override it to
    give your broker's own middleware (``middleware=[...]``) or the status middleware's
    options (``owner_of=...``)."""
    return {}


@pytest.fixture
def status_broker(
    status_store: RecordingStore,
    status_cancel_flags: InMemoryCancelFlags,
    status_broker_options: dict[str, Any],
) -> Iterator[StubBroker]:
    """A StubBroker wired through :func:`middleware.install`, Dramatiq's global broker for the
    test; its writer writes to ``status_store``."""
    broker = make_status_broker(status_store, cancel_flags=status_cancel_flags, **status_broker_options)
    previous = dramatiq.broker.global_broker
    dramatiq.set_broker(broker)
    try:
        yield broker
    finally:
        dramatiq.broker.global_broker = previous
        broker.flush_all()
        broker.close()
        status = status_middleware(broker)
        if status is not None:
            status.writer.close(timeout=5.0)


@pytest.fixture
def status_worker(status_broker: StubBroker) -> Iterator[StatusWorker]:
    """A worker on ``status_broker``; ``status_worker.join()`` runs everything sent so far."""
    worker = StatusWorker(status_broker)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
