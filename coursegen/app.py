"""The application as a function of its settings: the broker, status sync and the actors.

:func:`build_app` builds a Redis broker with the status system installed
(:func:`middleware.install`) and declares the actors on it. It reads nothing from the
environment and opens no connection: the Redis client connects on first use and the status
store is built by the writer thread (after a worker process has forked). ``coursegen.actors``
builds the workers' app from the environment; :class:`coursegen.jobs.Jobs` builds its own from
the settings it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from middleware import JobStatusMiddleware, RedisCancelFlags, StatusWriter, install, progress
from middleware.cancel_poll import CancelPoll
from middleware.events import DEFAULT_MAX_RESULT_BYTES
from middleware.outbox import OutboxStore, RedisOutbox
from middleware.stores.base import StatusStore

from .course import CourseGenerationError, CourseRequest, ProgressCallback, build_course, course_result
from .settings import NO_STORE_MESSAGE, Settings

logger = logging.getLogger(__name__)

QUEUE = "course-generation"

#: a course larger than this (encoded JSON) is stored as its outline, saying so
MAX_RESULT_BYTES = DEFAULT_MAX_RESULT_BYTES


def make_store_factory(settings: Settings, outbox: RedisOutbox) -> Callable[[], StatusStore]:
    """A function building the configured store; called in the writer thread, after fork."""
    kind = settings.status_store()

    def build() -> StatusStore:
        if kind == "postgres":
            from middleware.stores.postgres import PostgresStatusStore

            return PostgresStatusStore(settings.require_database_url(), timeout=settings.store_timeout)
        if kind == "supabase":
            from middleware.stores.supabase import SupabaseStatusStore

            assert settings.supabase_url is not None and settings.supabase_service_role_key is not None
            return SupabaseStatusStore(
                settings.supabase_url, settings.supabase_service_role_key, timeout=settings.supabase_timeout
            )
        return OutboxStore(outbox)

    return build


def build_broker(settings: Settings) -> tuple[RedisBroker, JobStatusMiddleware | None]:
    """The Redis broker with the status system installed; its status middleware (None when
    ``settings.status_sync`` is off)."""
    broker = RedisBroker(
        url=settings.redis_url.get_secret_value(),
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=[
            AgeLimit(max_age=settings.max_age_ms),
            TimeLimit(time_limit=settings.time_limit_ms),
            ShutdownNotifications(),
            Callbacks(),
            Pipelines(),
            Retries(
                max_retries=settings.max_retries,
                min_backoff=settings.min_backoff_ms,
                max_backoff=settings.max_backoff_ms,
            ),
            CurrentMessage(),
        ],
    )
    kind = settings.status_store()
    status = None
    if settings.status_sync:
        outbox = RedisOutbox(broker.client)
        flags = RedisCancelFlags(broker.client)
        # workers copy cancellations requested in the database into the flags, one at a time
        poll_database = kind != "outbox" and settings.cancel_poll_interval > 0
        writer = StatusWriter(
            make_store_factory(settings, outbox),
            # a producer without store credentials pushes to the outbox; it never drains it
            outbox=None if kind == "outbox" else outbox,
            flush_interval=settings.flush_interval,
            min_batch=settings.flush_min_batch,
            max_wait=settings.flush_max_wait,
            max_batch=settings.max_batch,
            max_buffer=settings.max_buffer,
            max_block=settings.max_block,
            retry_attempts=settings.retry_attempts,
            retry_seconds=settings.retry_seconds,
            cancel_poll=CancelPoll(
                flags,
                interval=settings.cancel_poll_interval,
                lag_interval=settings.retention_lag_interval,
            )
            if poll_database
            else None,
        )
        # a job whose cancellation was requested (coursegen.jobs.cancel, or in the database) is
        # skipped when picked up, or stopped at its next progress checkpoint
        status = JobStatusMiddleware(writer, is_cancel_requested=flags.is_requested)
    install(
        broker,
        status,
        metrics=settings.metrics,
        # a worker must write rows; only producers may run with REDIS_URL alone
        producer_only=NO_STORE_MESSAGE if status is not None and kind == "outbox" else None,
    )
    return broker, status


def _reporter(pace: float) -> ProgressCallback:
    """Progress of the pipeline -> ``progress.report`` (each report is also a cancellation
    checkpoint). With a demo pace, each of the five stages lingers ``pace`` seconds when it
    starts, checking for cancellation as it waits."""
    stages: list[str] = []

    def report(stage: str, percent: int, message: str) -> None:
        progress.report(percent, f"{stage}: {message}")
        if pace <= 0 or stage in stages:
            return
        stages.append(stage)
        deadline = time.monotonic() + pace
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            progress.checkpoint()

    return report


def declare_generate_course(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Actor[Any, Any]:
    """Declare the ``generate_course`` actor on ``broker`` (which must have the status system
    installed: the actor is tracked and validates its payload)."""

    def generate_course(payload: dict[str, Any]) -> dict[str, Any]:
        """Build a course from a :class:`~coursegen.course.CourseRequest` payload.

        The course (JSON) is the job's result; above ``MAX_RESULT_BYTES`` its outline, marked
        ``"truncated": true``. Material too thin for a course fails without retries.
        """
        request = CourseRequest.model_validate(payload)
        course = build_course(request, progress=_reporter(settings.demo_pace))
        return course_result(course, MAX_RESULT_BYTES)

    return dramatiq.actor(
        generate_course,
        broker=broker,
        queue_name=QUEUE,
        track_status=True,
        payload_model=CourseRequest,
        throws=(CourseGenerationError,),
    )


@dataclass(frozen=True)
class App:
    """A broker with the status system installed and coursegen's actors declared on it."""

    settings: Settings
    broker: RedisBroker
    #: None when status sync is off
    status: JobStatusMiddleware | None
    generate_course: dramatiq.Actor[Any, Any]

    def flush(self, timeout: float) -> bool:
        """Write the status events sent so far (``pending`` rows); True when done in time."""
        return self.status is None or self.status.writer.flush(timeout=timeout)

    def close(self) -> None:
        """Flush and stop the status writer, close the broker's connections."""
        if self.status is not None:
            self.status.writer.close()
        self.broker.close()


def build_app(settings: Settings) -> App:
    broker, status = build_broker(settings)
    return App(settings, broker, status, declare_generate_course(broker, settings))
