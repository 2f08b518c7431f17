"""Fixtures of the unit suite: Dramatiq's StubBroker wired like production (``install()``), a
recording store.

Nothing here talks to a database (the outbox is on the session's real Redis). The store is a
fake that records the batches the writer gives it and answers "applied" (it never decides
whether a transition is allowed: that is SQL's job). The writer is the real
:class:`StatusWriter`; :class:`SpyWriter` only records what the hooks hand to ``submit()`` and
``started()`` before delegating, so a test can see every transition even when the buffer coalesces them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from prometheus_client import REGISTRY

from middleware.errors import TransientStoreError
from middleware.events import JobStart, Owner, Status, StatusEvent, active_event
from middleware.outbox import RedisOutbox
from middleware.status_sync import JobStatusMiddleware
from middleware.stores.base import APPLIED, Outcome
from middleware.sync_metrics import get_metrics
from middleware.wiring import install
from middleware.writer import StatusWriter

WRITER_THREAD = "job-status-writer"


def owner_payload(**extra: Any) -> dict[str, Any]:
    """A job payload naming a (random) owner, as every tracked job must."""
    return {"tenant_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), **extra}


def make_event(
    job_id: str,
    status: Status,
    attempt: int = 1,
    *,
    event_at: float | None = None,
    owner: Owner | None = None,
    **fields: Any,
) -> StatusEvent:
    owner = owner or Owner(str(uuid.uuid4()), str(uuid.uuid4()))
    return StatusEvent(
        job_id,
        status,
        attempt,
        owner,
        "an_actor",
        "default",
        time.time() if event_at is None else event_at,
        **fields,
    )


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def metric(name: str, **labels: str) -> float:
    """Current value of a process-wide sync metric sample (0 when never touched)."""
    get_metrics()  # the metrics exist only once created
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class MetricDelta:
    """Difference of metric samples between construction and :meth:`__call__`."""

    def __init__(self) -> None:
        self._before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return metric(name, **labels) - self._before.setdefault(key, 0.0)

    def watch(self, name: str, **labels: str) -> MetricDelta:
        self._before[(name, tuple(sorted(labels.items())))] = metric(name, **labels)
        return self


class RecordingStore:
    """A fake :class:`StatusStore` that records what it is given and applies nothing.

    ``apply`` records the batch and the name of the calling thread and answers ``applied`` for
    every event (override :meth:`outcome` to answer otherwise). While ``failures < fail_times``
    it raises :class:`TransientStoreError` instead and keeps the refused batch in
    ``failed_batches``: set ``fail_times`` to make the store go down or come back.
    """

    def __init__(self, *, fail_times: int = 0) -> None:
        self.fail_times = fail_times
        self.failures = 0
        self.batches: list[list[StatusEvent]] = []
        self.failed_batches: list[list[StatusEvent]] = []
        self.threads: list[str] = []
        self.factory_threads: list[str] = []
        self.closed = 0
        self._lock = threading.Lock()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        with self._lock:
            self.threads.append(threading.current_thread().name)
            if self.failures < self.fail_times:
                self.failures += 1
                self.failed_batches.append(list(events))
                raise TransientStoreError("store down (test)")
            self.batches.append(list(events))
        return [self.outcome(event) for event in events]

    def outcome(self, event: StatusEvent) -> Outcome:
        return Outcome(event.job_id, APPLIED)

    def close(self) -> None:
        self.closed += 1

    @property
    def events(self) -> list[StatusEvent]:
        with self._lock:
            return [event for batch in self.batches for event in batch]

    def for_job(self, job_id: str) -> list[StatusEvent]:
        return [event for event in self.events if event.job_id == job_id]

    def statuses(self, job_id: str) -> list[Status]:
        return [event.status for event in self.for_job(job_id)]

    def last(self, job_id: str) -> StatusEvent:
        events = self.for_job(job_id)
        assert events, f"the store received nothing for {job_id}"
        return events[-1]


class SpyWriter(StatusWriter):
    """The real writer, plus a record of every event the hooks submit (and from which thread).

    Observes the middleware's output; it does not replace any of the writer's behaviour.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[StatusEvent] = []
        self.submitting_threads: list[str] = []

    def submit(self, event: StatusEvent) -> None:
        self.submitted.append(event)
        self.submitting_threads.append(threading.current_thread().name)
        super().submit(event)

    def started(self, start: JobStart) -> None:
        # recorded as the active event the writer makes of it if the job is still running at
        # the next flush (for a short job it never is: the final event replaces it)
        self.submitted.append(active_event(start))
        self.submitting_threads.append(threading.current_thread().name)
        super().started(start)

    def submitted_for(self, job_id: str) -> list[StatusEvent]:
        return [event for event in self.submitted if event.job_id == job_id]

    def statuses(self, job_id: str) -> list[Status]:
        return [event.status for event in self.submitted_for(job_id)]


class EnqueueSpy(Middleware):
    """Records every ``after_enqueue`` (message options and delay); placed last in the list."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[dramatiq.Message[Any], int | None]] = []

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        self.enqueued.append((message, delay))


@dataclass
class Harness:
    """One StubBroker wired through ``install()``, a SpyWriter and a RecordingStore."""

    broker: StubBroker
    writer: SpyWriter
    store: RecordingStore
    middleware: JobStatusMiddleware
    enqueues: EnqueueSpy
    worker: dramatiq.Worker | None = None
    _closed: bool = field(default=False, repr=False)

    def actor(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare an actor on this harness's broker (tracked unless ``track_status=False``)."""
        options.setdefault("track_status", True)
        if fn is None:
            return lambda f: dramatiq.actor(f, broker=self.broker, **options)
        return dramatiq.actor(fn, broker=self.broker, **options)

    def start_worker(self) -> dramatiq.Worker:
        if self.worker is None:
            self.worker = dramatiq.Worker(self.broker, worker_timeout=100)
            self.worker.start()
        return self.worker

    def run(self, queue_name: str = "default", *, flush: bool = True) -> None:
        """Process everything on the queue, wait for the after-hooks, then flush the writer."""
        worker = self.start_worker()
        self.broker.join(queue_name, fail_fast=False, timeout=10_000)
        worker.join()  # StubBroker.join returns before the after-hooks have run
        if flush:
            assert self.writer.flush(timeout=5), "the writer did not flush within 5s"

    def stop_worker(self) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            worker.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_worker()
        self.broker.flush_all()
        self.writer.close(timeout=5)
        self.broker.close()


def build_harness(
    *,
    store: RecordingStore | None = None,
    outbox: RedisOutbox | None = None,
    max_retries: int = 3,
    owner_of: Callable[[dramatiq.Message[Any]], Owner | None] | None = None,
    is_cancel_requested: Callable[[str], bool] | None = None,
    progress_interval: float | None = None,
    **writer_options: Any,
) -> Harness:
    store = store if store is not None else RecordingStore()
    options: dict[str, Any] = {
        "flush_interval": 0.01,
        "sleep": lambda _seconds: None,
        "retry_attempts": 2,
        "close_timeout": 5.0,
    }
    options.update(writer_options)

    def store_factory() -> RecordingStore:
        store.factory_threads.append(threading.current_thread().name)
        return store

    writer = SpyWriter(store_factory, outbox=outbox, **options)
    middleware_options: dict[str, Any] = {"is_cancel_requested": is_cancel_requested}
    if owner_of is not None:
        middleware_options["owner_of"] = owner_of
    if progress_interval is not None:
        middleware_options["progress_interval"] = progress_interval
    status = JobStatusMiddleware(writer, **middleware_options)
    broker = StubBroker(
        middleware=[
            AgeLimit(),
            TimeLimit(),
            ShutdownNotifications(),
            Callbacks(),
            Pipelines(),
            Retries(min_backoff=1, max_backoff=10, max_retries=max_retries),
            CurrentMessage(),
        ]
    )
    install(broker, status)
    spy = EnqueueSpy()
    broker.add_middleware(spy)  # last: sees what every other middleware let through
    return Harness(broker=broker, writer=writer, store=store, middleware=status, enqueues=spy)


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    """Build harnesses (see :func:`build_harness`); each is stopped and flushed at teardown."""
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        harness = build_harness(**options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def outbox(redis_url: str) -> RedisOutbox:
    """A RedisOutbox on the session's real Redis (emptied for each test). Its client is left to
    the garbage collector: a harness's writer, stopped after this fixture is torn down, may
    still be draining through it."""
    return RedisOutbox(redis.Redis.from_url(redis_url), key=f"job_status:outbox:unit-test:{uuid.uuid4()}")
