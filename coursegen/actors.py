"""Broker, middleware and actors: what ``dramatiq coursegen.actors`` loads.

Importing this module reads the settings (it is the workers' entry point) but opens no
connection: the Redis client connects on first use and the status store is built by the
writer thread, after the worker process has forked.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    MiddlewareError,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from middleware import JobStatusMiddleware, PayloadValidation, RedisCancelFlags, StatusWriter, progress
from middleware.events import DEFAULT_MAX_RESULT_BYTES
from middleware.outbox import OutboxStore, RedisOutbox
from middleware.prometheus import WorkerPrometheus
from middleware.stores.base import StatusStore

from .course import CourseGenerationError, CourseRequest, ProgressCallback, build_course, course_result
from .settings import NO_STORE_MESSAGE, ConfigurationError, Settings, load_settings

logger = logging.getLogger(__name__)

QUEUE = "course-generation"


class StoreNotConfigured(ConfigurationError, MiddlewareError):
    """A worker must have a status store (Supabase or PostgreSQL), not just Redis."""


class RequireStatusStore(Middleware):
    """Refuses to start a worker that could only spill statuses to the outbox."""

    def __init__(self, store_kind: str) -> None:
        self.store_kind = store_kind

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.store_kind == "outbox":
            raise StoreNotConfigured(NO_STORE_MESSAGE)


class TrackStatusOption(Middleware):
    """Stands in for the status middleware when sync is off (COURSEGEN_STATUS_SYNC=0)."""

    @property
    def actor_options(self) -> set[str]:
        return {"track_status"}


def make_store_factory(settings: Settings, outbox: RedisOutbox) -> Any:
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


def build_broker(settings: Settings) -> tuple[RedisBroker, JobStatusMiddleware]:
    """The Redis broker with the status middleware first in its list."""
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
    outbox = RedisOutbox(broker.client)
    kind = settings.status_store()
    writer = StatusWriter(
        make_store_factory(settings, outbox),
        # a producer without store credentials pushes to the outbox; it never drains it
        outbox=None if kind == "outbox" else outbox,
        flush_interval=settings.flush_interval,
        max_batch=settings.max_batch,
        max_buffer=settings.max_buffer,
        retry_attempts=settings.retry_attempts,
        retry_seconds=settings.retry_seconds,
    )
    # a job whose cancellation was requested (coursegen.jobs.cancel) is skipped when picked up,
    # or stopped at its next progress checkpoint
    status = JobStatusMiddleware(writer, is_cancel_requested=RedisCancelFlags(broker.client).is_requested)
    if settings.status_sync:
        broker.add_middleware(status, before=AgeLimit)
        broker.add_middleware(RequireStatusStore(kind))
    else:  # actors still declare track_status=True; only the option is known, no hooks run
        broker.add_middleware(TrackStatusOption())
    # payloads checked against the actor's payload_model at send() and again before running;
    # after the status middleware, which must see a message first to record its failure
    broker.add_middleware(PayloadValidation(), before=AgeLimit)
    if settings.metrics:  # right after the status middleware: it must stay first
        broker.add_middleware(WorkerPrometheus(), before=AgeLimit)
    return broker, status


settings = load_settings()
broker, status_middleware = build_broker(settings)
dramatiq.set_broker(broker)


#: a course larger than this (encoded JSON) is stored as its outline, saying so
MAX_RESULT_BYTES = DEFAULT_MAX_RESULT_BYTES


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


@dramatiq.actor(
    queue_name=QUEUE,
    track_status=True,
    payload_model=CourseRequest,
    throws=(CourseGenerationError,),
)
def generate_course(payload: dict[str, Any]) -> dict[str, Any]:
    """Build a course from a :class:`~coursegen.course.CourseRequest` payload.

    The course (JSON) is the job's result; above ``MAX_RESULT_BYTES`` its outline, marked
    ``"truncated": true``. Material too thin for a course fails without retries.
    """
    request = CourseRequest.model_validate(payload)
    course = build_course(request, progress=_reporter(settings.demo_pace))
    return course_result(course, MAX_RESULT_BYTES)
