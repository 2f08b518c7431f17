"""Status sync's metrics and logs in one process: what the writer counts, samples and logs, how
WorkerPrometheus boots, cleans its directory and keeps Dramatiq's gauge right, and how
producers expose their metrics. The fleet-wide view is tests/e2e/test_metrics_endpoint.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Middleware, MiddlewareError, Retries

# prometheus_client decides on multiprocess mode when first imported: import it now, while
# PROMETHEUS_MULTIPROC_DIR is unset, before any test here sets it.
from prometheus_client import CollectorRegistry

from coursegen.app import build_app
from coursegen.settings import Settings
from middleware.errors import TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.metrics_endpoint import (
    DEFAULT_DIR,
    WorkerPrometheus,
    clean_multiproc_dir,
    exposition_registry,
    metrics_wsgi_app,
    multiproc_dir,
    serve_worker_metrics,
    start_metrics_server,
)
from middleware.outbox import RedisOutbox
from middleware.status_sync import JobStatusMiddleware
from middleware.stores.base import APPLIED, Outcome
from middleware.sync_metrics import SyncMetrics, observe_many
from middleware.writer import StatusWriter
from tests.support.db import wait_for
from tests.support.processes import free_port

OWNER = Owner(str(uuid.uuid4()), str(uuid.uuid4()))
SECRET = "hunter2-Zq9"


def event(job_id: str, status: Status = Status.PENDING) -> StatusEvent:
    return StatusEvent(job_id, status, 0, OWNER, "task", "default", time.time())


class Store:
    """A status store that fails ``fail`` times, then applies; it can block and call back."""

    def __init__(self, *, fail: int = 0, reason: str = "connection") -> None:
        self.fail = fail
        self.reason = reason
        self.applied: list[StatusEvent] = []
        self.calls = 0
        self.fail_after = 0.0  # seconds a failing call takes, as a timeout would
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.on_apply: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        with self._lock:
            if self.fail > 0:
                self.fail -= 1
                threading.Event().wait(self.fail_after)
                raise TransientStoreError(
                    f"cannot reach postgresql://app:{SECRET}@db.internal/app (password={SECRET})",
                    reason=self.reason,
                )
            self.applied.extend(events)
        if self.on_apply is not None:
            self.on_apply()
        return [Outcome(e.job_id, APPLIED) for e in events]

    def close(self) -> None:
        return None


class Metrics:
    """A private registry with the sync metrics, so that tests do not share counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sync = SyncMetrics(self.registry)

    def __call__(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def make_writer(metrics: Metrics) -> Iterator[Callable[..., StatusWriter]]:
    made: list[StatusWriter] = []

    def make(store: Store, **options: Any) -> StatusWriter:
        options = {"flush_interval": 0.01, "sleep": lambda _s: None, "close_timeout": 5.0} | options
        writer = StatusWriter(lambda: store, metrics=lambda: metrics.sync, **options)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout=5)


@pytest.fixture
def outbox(redis_url: str) -> Iterator[RedisOutbox]:
    client = redis.Redis.from_url(redis_url)
    yield RedisOutbox(client, key=f"job_status:outbox:test:{uuid.uuid4()}")
    client.close()


# -- the writer: logs and metrics ------------------------------------------------------------


LAGS = [0.0, 0.01, 0.0100001, 0.024, 0.3, 0.3, 7.0, 299.0, 301.0, 1e9]


def exposition(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_exposes_what_one_observe_per_value_does() -> None:
    one_by_one, many = Metrics(), Metrics()
    for lag in LAGS:
        one_by_one.sync.lag_seconds.observe(lag)
    observe_many(many.sync.lag_seconds, LAGS)
    observe_many(many.sync.lag_seconds, [])
    assert exposition(many.registry) == exposition(one_by_one.registry)
    assert many("job_status_sync_lag_seconds_bucket", le="0.01") == 2  # a bound is inclusive
    assert many("job_status_sync_lag_seconds_bucket", le="+Inf") == len(LAGS)


def test_observe_many_falls_back_to_observe_without_the_histogram_internals() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, value: float) -> None:
            seen.append(value)

    observe_many(Plain(), LAGS)
    assert seen == LAGS


def test_the_writer_observes_the_lag_of_every_applied_event(
    metrics: Metrics, make_writer: Callable[..., StatusWriter]
) -> None:
    writer = make_writer(Store())
    for i in range(30):
        writer.submit(event(f"lag-{i}"))
    assert writer.flush(timeout=5)
    assert metrics("job_status_sync_lag_seconds_count") == 30
    assert metrics("job_status_sync_lag_seconds_bucket", le="+Inf") == 30
    assert 0 <= metrics("job_status_sync_lag_seconds_sum") < 30 * 5


def test_every_failed_write_attempt_is_one_structured_log_line_without_secrets(
    make_writer: Callable[..., StatusWriter], metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(Store(fail=2), retry_attempts=3)
    with caplog.at_level(logging.INFO, logger="middleware.writer"):
        writer.submit(event("job-1"))
        writer.submit(event("job-2"))
        assert writer.flush(timeout=5)

    failures = [r for r in caplog.records if getattr(r, "action", None) == "sync_write_failed"]
    assert [(r.reason, r.attempt, r.job_ids, r.events) for r in failures] == [  # type: ignore[attr-defined]
        ("connection", 1, ["job-1", "job-2"], 2),
        ("connection", 2, ["job-1", "job-2"], 2),
    ]
    assert all(r.levelno == logging.WARNING for r in failures)
    for record in caplog.records:
        assert SECRET not in record.getMessage() and SECRET not in repr(vars(record))
    assert len(caplog.records) == 2, "one line per failure, nothing else (tenacity logs nothing)"

    assert metrics("job_status_sync_writes_total", outcome="failure") == 2
    assert metrics("job_status_sync_writes_total", outcome="success") == 1
    assert metrics("job_status_sync_failures_total", reason="connection") == 2
    assert metrics("job_status_sync_events_total", status="pending") == 2
    assert metrics("job_status_sync_write_seconds_count") == 1
    assert metrics("job_status_sync_lag_seconds_count") == 2


def test_the_queue_depth_counts_the_batch_in_flight(
    make_writer: Callable[..., StatusWriter], metrics: Metrics
) -> None:
    store = Store()
    store.gate = threading.Event()
    writer = make_writer(store)
    for n in range(5):
        writer.submit(event(f"job-{n}"))
    wait_for(store.entered.is_set, timeout=5, interval=0.005, what="the write to start")
    assert metrics("job_status_sync_queue_depth") == 5  # set before the write, not only when idle
    store.gate.set()
    assert writer.flush(timeout=5)
    wait_for(lambda: metrics("job_status_sync_queue_depth") == 0, timeout=5, interval=0.005, what="0")


@pytest.mark.integration
def test_the_outbox_depth_is_sampled_while_the_store_is_down_and_the_drain_is_summed_up(
    make_writer: Callable[..., StatusWriter],
    metrics: Metrics,
    outbox: RedisOutbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(fail=10**6)
    store.fail_after = 0.2
    writer = make_writer(store, outbox=outbox, retry_attempts=1, probe_interval=0.1, drain_interval=0.02)
    with caplog.at_level(logging.INFO, logger="middleware"):
        for n in range(3):
            writer.submit(event(f"job-{n}"))
        wait_for(lambda: metrics("job_status_sync_outbox_depth") == 3, timeout=5, what="depth 3")
        assert metrics("job_status_sync_failures_total", reason="spilled") == 3
        # the writer probes the store with one event from the outbox now and then: meanwhile the
        # other processes sampling the list never see it empty (the fleet's gauge would drop to 0
        # and reset an alert waiting for 15 minutes of a non-empty outbox)
        seen = []
        probes = store.calls
        wait_for(
            lambda: seen.append(outbox.depth()) or store.calls >= probes + 3,
            timeout=10,
            interval=0.01,
            what="three probes",
        )
        assert min(seen) >= 2, seen
        store.fail = 0
        wait_for(lambda: len(store.applied) == 3, timeout=10, what="the drain")
        wait_for(lambda: metrics("job_status_sync_outbox_depth") == 0, timeout=5, what="depth 0")
        wait_for(
            lambda: [r for r in caplog.records if getattr(r, "action", None) == "outbox_drained"],
            timeout=5,
            what="the summary line",
        )
    [summary] = [r for r in caplog.records if getattr(r, "action", None) == "outbox_drained"]
    assert summary.events == 3 and summary.seconds >= 0  # type: ignore[attr-defined]
    assert "Outbox drained: 3 events" in summary.getMessage()


@pytest.mark.integration
def test_the_outbox_drains_under_steady_load(
    make_writer: Callable[..., StatusWriter], metrics: Metrics, outbox: RedisOutbox
) -> None:
    """Every write brings a new event, so the writer never idles: it must drain between batches
    (min_batch=1: a batch is due as soon as flush_interval has passed, as for a busy process)."""
    outbox.push([event(f"spilled-{n}") for n in range(50)])
    store = Store()
    writer = make_writer(store, outbox=outbox, max_batch=20, min_batch=1, drain_interval=0.05)
    fed = iter(range(10**6))
    feeding = threading.Event()
    feeding.set()

    def more_load() -> None:  # from the writer thread, while it writes
        if feeding.is_set():
            writer.submit(event(f"live-{next(fed)}"))

    store.on_apply = more_load
    writer.submit(event("live-start"))
    wait_for(lambda: outbox.depth() == 0, timeout=10, interval=0.02, what="the outbox to drain under load")
    feeding.clear()
    assert writer.flush(timeout=5)
    assert sum(e.job_id.startswith("spilled-") for e in store.applied) == 50
    assert sum(e.job_id.startswith("live-") for e in store.applied) > 5


# -- WorkerPrometheus ------------------------------------------------------------------------


def test_the_directory_is_dramatiq_prom_db_else_prometheus_multiproc_dir() -> None:
    assert multiproc_dir({"dramatiq_prom_db": "/a", "PROMETHEUS_MULTIPROC_DIR": "/b"}) == "/a"
    assert multiproc_dir({"PROMETHEUS_MULTIPROC_DIR": "/b"}) == "/b"
    assert multiproc_dir({}) == DEFAULT_DIR


def test_a_producer_never_boots_it() -> None:
    """A process that only sends (no dramatiq CLI, no process_boot) is left alone."""
    middleware = WorkerPrometheus()
    broker = StubBroker(middleware=[middleware])
    actor = dramatiq.actor(lambda: None, actor_name="task", broker=broker)
    actor.send()
    actor.send_with_options(delay=1000)
    assert middleware._prometheus is None and middleware.directory is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert middleware.forks == [serve_worker_metrics]
    broker.close()


@pytest.fixture
def booted_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Undo what booting a worker process does to this process's environment."""
    from dramatiq.middleware import prometheus as dramatiq_prometheus

    directory = tmp_path / "prometheus"
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "dramatiq_prom_db"):
        monkeypatch.setenv(name, str(directory))
    monkeypatch.setattr(dramatiq_prometheus, "DB_PATH", dramatiq_prometheus.DB_PATH)
    return directory


def _sample(metric: Any, **labels: str) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels == labels and not sample.name.endswith("_created"):
                return float(sample.value)
    return 0.0


class RefuseSome(Middleware):
    """Fails a message before it runs, as a payload check would (MiddlewareError propagates)."""

    def __init__(self) -> None:
        self.refused: set[str] = set()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        if message.message_id in self.refused:
            message.fail()
            raise MiddlewareError("refused before running")


def test_skipped_and_refused_messages_leave_the_in_progress_gauge_at_zero(booted_env: Path) -> None:
    """The status middleware (first) skips a cancelled job and another middleware refuses one
    before WorkerPrometheus saw them start; AgeLimit (after it) skips an expired one: Dramatiq's
    in-progress gauge must stay at 0, and all four count as processed."""
    store = Store()
    sync_metrics = Metrics().sync
    writer = StatusWriter(lambda: store, flush_interval=0.01, metrics=lambda: sync_metrics)
    cancelled: set[str] = set()
    status = JobStatusMiddleware(writer, is_cancel_requested=cancelled.__contains__)
    prometheus, refuse = WorkerPrometheus(), RefuseSome()
    broker = StubBroker(
        middleware=[status, refuse, prometheus, AgeLimit(), Retries(max_retries=0), CurrentMessage()]
    )
    prometheus.after_process_boot(broker)
    assert prometheus.directory == str(booted_env)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == os.environ["dramatiq_prom_db"] == str(booted_env)

    actor = dramatiq.actor(lambda payload: None, actor_name="task", broker=broker, track_status=True)
    payload = {"tenant_id": OWNER.tenant_id, "user_id": OWNER.user_id}
    actor.send(payload)
    cancelled.add(actor.send(payload).message_id)
    refuse.refused.add(actor.send(payload).message_id)
    expired = actor.message_with_options(args=(payload,), max_age=1)
    broker.enqueue(expired.copy(message_timestamp=expired.message_timestamp - 60_000))

    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join(actor.queue_name, fail_fast=False, timeout=10_000)
        worker.join()
        inner = prometheus._prometheus
        labels = {"queue_name": actor.queue_name, "actor_name": "task"}
        wait_for(lambda: _sample(inner.total_messages, **labels) == 4, timeout=5, what="4 messages counted")
        assert _sample(inner.inprogress_messages, **labels) == 0
        assert inner.message_start_times == {}
    finally:
        worker.stop()
        writer.close(timeout=5)
        broker.close()
    assert {e.status for e in store.applied} >= {
        Status.COMPLETED,
        Status.CANCELLED,
        Status.SKIPPED,
        Status.FAILED,
    }


def _process_files(directory: Path, pids: dict[str, int]) -> None:
    for kind, pid in pids.items():
        (directory / f"{kind}_{pid}.db").write_bytes(b"")


def test_cleaning_removes_every_file_but_the_running_siblings(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead = int(gone.stdout)
    sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        _process_files(tmp_path, {"counter": dead, "gauge_livesum": dead})  # an earlier run
        _process_files(tmp_path, {"histogram": os.getpid()})  # this very process: not written yet
        _process_files(tmp_path, {"gauge_all": os.getppid()})  # running, but not of this fleet
        _process_files(tmp_path, {"counter": sibling.pid, "gauge_livemostrecent": sibling.pid})
        (tmp_path / "notes.txt").write_text("not a metric file")

        # as if this process were the dramatiq CLI and `sibling` one of its workers
        removed = clean_multiproc_dir(str(tmp_path), parent_pid=os.getpid())
    finally:
        sibling.communicate(b"", timeout=10)
    assert sorted(removed) == sorted(
        [
            f"counter_{dead}.db",
            f"gauge_livesum_{dead}.db",
            f"histogram_{os.getpid()}.db",
            f"gauge_all_{os.getppid()}.db",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{sibling.pid}.db", f"gauge_livemostrecent_{sibling.pid}.db", "notes.txt"]
    )
    assert clean_multiproc_dir(str(tmp_path / "new" / "dir")) == []
    assert (tmp_path / "new" / "dir").is_dir()


# -- producers ----------------------------------------------------------------------------

_PRODUCER_METRICS = """
from middleware.sync_metrics import get_metrics
get_metrics().events.labels("pending").inc(3)
print(type(get_metrics()).__name__)
"""


def test_a_producer_serves_its_metrics_over_http() -> None:
    server, thread = start_metrics_server(0, "127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    assert "# TYPE job_status_sync_events_total counter" in text
    assert "job_status_sync_write_seconds_count" in text
    assert "job_status_sync_outbox_depth" in text


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["postgres", "supabase"])
def test_a_web_app_s_metrics_endpoint_serves_the_sync_metrics_and_no_secret(
    redis_url: str, kind: str
) -> None:
    """README, Monitoring: a web app mounts ``metrics_wsgi_app()`` at /metrics. A producer whose
    settings hold a database password and a service key sends a job while its store is down
    (the writer fails, spills to the outbox): its endpoint, served by a real WSGI server,
    answers 200 with the job_status_sync_* families, and neither secret is in it."""
    password, key = f"pw-{uuid.uuid4().hex}", f"sb_secret_{uuid.uuid4().hex}"
    down = free_port()  # nothing listens there
    settings = Settings(
        redis_url=redis_url,
        database_url=f"postgresql://app:{password}@127.0.0.1:{down}/app",
        supabase_url=f"http://127.0.0.1:{down}" if kind == "supabase" else None,
        supabase_service_role_key=key,
        flush_interval=0.01,
        retry_attempts=1,
        retry_seconds=0.5,
        store_timeout=0.5,
        metrics=False,
    )
    assert settings.status_store() == kind
    app = build_app(settings)
    try:
        job = dramatiq.actor(lambda payload: None, actor_name="metered", broker=app.broker, track_status=True)
        job.send({"tenant_id": OWNER.tenant_id, "user_id": OWNER.user_id})
        assert app.flush(timeout=30)  # spilled to the outbox
        server = make_server("127.0.0.1", 0, metrics_wsgi_app(), handler_class=_Quiet)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.server_port}/metrics", timeout=10
            ) as response:
                status, content_type, body = (
                    response.status,
                    response.headers["Content-Type"],
                    response.read(),
                )
        finally:
            server.shutdown()
            serving.join(10)
            server.server_close()
    finally:
        app.close()
    text = body.decode()
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    for family in ("events", "writes", "failures", "outbox_depth", "write_seconds", "queue_depth"):
        assert f"# TYPE job_status_sync_{family}" in text, family
    assert 'job_status_sync_events_total{status="pending"}' in text
    assert "job_status_sync_failures_total{" in text, "the store being down was counted"
    for secret in (password, key, password[3:12], key[10:20]):
        assert secret not in text, "a secret reached the metrics"


def test_a_producer_with_a_multiprocess_directory_serves_the_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two producer processes (gunicorn workers, say)
        done = subprocess.run(
            [sys.executable, "-c", _PRODUCER_METRICS], env=env, capture_output=True, text=True
        )
        assert done.stdout.strip() == "SyncMetrics", done.stderr
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert exposition_registry().get_sample_value("job_status_sync_events_total", {"status": "pending"}) == 6


def test_a_producer_whose_multiprocess_directory_is_missing_goes_on_without_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-c", _PRODUCER_METRICS], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DisabledMetrics"
    assert "Cannot create the status sync metrics (FileNotFoundError" in done.stderr
