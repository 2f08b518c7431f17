"""coursegen.app: the broker and its actors as a function of the settings; no I/O to build them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import dramatiq
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from coursegen.app import QUEUE, App, build_app
from coursegen.course import CourseRequest
from coursegen.settings import NO_STORE_MESSAGE, Settings
from middleware import JobStatusMiddleware, PayloadValidation
from middleware.metrics_endpoint import WorkerPrometheus
from middleware.wiring import ProducerOnly, TrackStatusOption

DRAMATIQ = [AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries, CurrentMessage]
UNREACHABLE_DB = "postgresql://app@127.0.0.1:9/nowhere"


def kinds(app: App) -> list[type[Any]]:
    return [type(m) for m in app.broker.middleware]


def test_a_worker_app_has_the_status_system_first_and_its_actor() -> None:
    app = build_app(Settings(redis_url="redis://127.0.0.1:9/3", database_url=UNREACHABLE_DB, max_retries=7))
    try:
        assert kinds(app) == [JobStatusMiddleware, WorkerPrometheus, PayloadValidation, *DRAMATIQ]
        assert app.broker.middleware[0] is app.status
        retries = next(m for m in app.broker.middleware if isinstance(m, Retries))
        assert retries.max_retries == 7  # the settings reach the broker's own middleware
        assert app.broker.get_actor("generate_course") is app.generate_course
        assert app.generate_course.queue_name == QUEUE
        assert app.generate_course.options["track_status"] is True
        assert app.generate_course.options["payload_model"] is CourseRequest
        assert app.broker.client.connection_pool.connection_kwargs["db"] == 3
    finally:
        app.close()


def test_the_buffer_knobs_reach_the_writer(monkeypatch: Any) -> None:
    monkeypatch.setenv("COURSEGEN_MAX_BUFFER", "300")
    monkeypatch.setenv("COURSEGEN_MAX_BLOCK", "0")
    app = build_app(Settings(redis_url="redis://127.0.0.1:9/0", database_url=UNREACHABLE_DB, metrics=False))
    try:
        assert app.status is not None
        assert (app.status.writer.max_buffer, app.status.writer.max_block) == (300, 0.0)
    finally:
        app.close()


def test_redis_alone_makes_a_producer_that_refuses_to_boot_a_worker() -> None:
    app = build_app(Settings(redis_url="redis://127.0.0.1:9/0", metrics=False))
    try:
        assert kinds(app) == [JobStatusMiddleware, PayloadValidation, *DRAMATIQ, ProducerOnly]
        assert app.broker.middleware[-1].reason == NO_STORE_MESSAGE
    finally:
        app.close()


def test_sync_off_leaves_the_status_middleware_out_but_declares_the_actor() -> None:
    app = build_app(Settings(redis_url="redis://127.0.0.1:9/0", status_sync=False))
    try:
        assert app.status is None
        assert kinds(app) == [TrackStatusOption, WorkerPrometheus, PayloadValidation, *DRAMATIQ]
        assert app.generate_course.options["track_status"] is True
        assert app.flush(timeout=1)
    finally:
        app.close()


def test_two_apps_are_two_brokers_and_neither_is_global() -> None:
    before = dramatiq.broker.global_broker
    one = build_app(Settings(redis_url="redis://127.0.0.1:9/1", database_url=UNREACHABLE_DB))
    two = build_app(Settings(redis_url="redis://127.0.0.1:9/2", database_url=UNREACHABLE_DB))
    try:
        assert one.broker is not two.broker
        assert one.generate_course is not two.generate_course
        assert one.generate_course.broker is one.broker and two.generate_course.broker is two.broker
        assert dramatiq.broker.global_broker is before
    finally:
        one.close()
        two.close()


# Imports the workers' module with every socket connection refused, as `dramatiq coursegen.actors`
# would import it, and reports what it built.
_IMPORT = textwrap.dedent(
    """
    import json, socket

    attempts = []
    def refuse(self, address, *args):
        attempts.append(repr(address))
        raise OSError("no I/O at import")
    socket.socket.connect = refuse
    socket.create_connection = lambda address, *a, **k: refuse(None, address)

    import dramatiq
    import coursegen.actors as actors

    print(json.dumps({
        "attempts": attempts,
        "global": dramatiq.get_broker() is actors.broker,
        "middleware": [type(m).__name__ for m in actors.broker.middleware],
        "actors": sorted(actors.broker.actors),
    }))
    """
)


def test_importing_the_workers_module_builds_the_app_and_connects_to_nothing() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:9/0", "DATABASE_URL": UNREACHABLE_DB, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["global"] is True
    assert report["middleware"][:3] == ["JobStatusMiddleware", "WorkerPrometheus", "PayloadValidation"]
    assert report["actors"] == ["generate_course"]
