"""Two worker processes, one metrics endpoint: `dramatiq coursegen.actors --processes 2`.

Jobs that complete, jobs that fail, jobs whose owner's tenant does not exist (the store rejects
their status events) and a database outage in the middle; then the endpoint the dramatiq CLI
forks is scraped and its counters and histograms must add up, across both processes, to what
happened. A dead process's metric files, left in the directory beforehand, must not count.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from coursegen.embedded import LocalPostgres
from coursegen.migrate import migrate
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import app_env, dramatiq_worker, free_port, send_jobs
from tests.support.scrape import Scrape, scrape

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TEXT = "Tides rise and fall twice a day as the moon and the sun pull on the oceans of the earth. " * 5
TERMINAL = ("completed", "failed", "cancelled", "skipped")
#: every label the endpoint may carry: never a job, user or tenant id
ALLOWED_LABELS = {"status", "outcome", "reason", "le", "queue_name", "actor_name", "pid"}

# A process of an earlier run: 1000 completed events and 7 buffered ones, then it exits.
_STALE_PROCESS = """
from prometheus_client import Counter, Gauge
Counter("job_status_sync_events", "stale", ["status"]).labels("completed").inc(1000)
Gauge("job_status_sync_queue_depth", "stale", multiprocess_mode="livesum").set(7)
"""


def check_histogram(result: Scrape, name: str) -> list[tuple[float, float]]:
    buckets = result.buckets(name)
    assert buckets, f"{name} has no buckets"
    counts = [count for _le, count in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    assert buckets[-1][0] == math.inf
    assert buckets[-1][1] == result.value(f"{name}_count") > 0
    assert result.value(f"{name}_sum") > 0
    return buckets


def per_process_counts(directory: Path, name: str, **labels: str) -> dict[int, float]:
    """``name`` read from each process's counter file separately, by pid."""
    out = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == name and set(labels.items()) <= set(sample.labels.items()):
                    out[pid] = out.get(pid, 0.0) + sample.value
    return out


def test_two_worker_processes_add_up_on_one_endpoint(
    own_postgres: LocalPostgres, redis_url: str, tmp_path: Path
) -> None:
    url = own_postgres.url()
    migrate(url)
    owner = create_owner(url)
    prom_dir, port = tmp_path / "prometheus", free_port()
    prom_dir.mkdir()
    subprocess.run(
        [sys.executable, "-c", _STALE_PROCESS],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)},
        check=True,
        timeout=60,
    )
    stale_files = sorted(p.name for p in prom_dir.iterdir())
    assert len(stale_files) == 2

    worker_env = app_env(
        REDIS_URL=redis_url,
        DATABASE_URL=url,
        dramatiq_prom_db=str(prom_dir),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(port),
        COURSEGEN_DEMO_PACE="0.01",  # 50 ms a job: both processes get work
        COURSEGEN_RETRY_ATTEMPTS="2",
        COURSEGEN_RETRY_SECONDS="0.5",
        COURSEGEN_STORE_TIMEOUT="1",
    )
    producer_env = app_env(REDIS_URL=redis_url)  # `pending` goes through the outbox

    def payload(text: str = TEXT, tenant_id: str = owner.tenant_id) -> dict[str, object]:
        return {
            "tenant_id": tenant_id,
            "user_id": owner.user_id,
            "title": "Tides",
            "sources": [{"text": text}],
        }

    good = [payload() for _ in range(30)]
    thin = [payload(text="too short") for _ in range(4)]
    unknown_tenant = [payload(tenant_id=str(uuid.uuid4())) for _ in range(6)]

    with dramatiq_worker(worker_env, tmp_path / "worker.log", processes=2, threads=2) as worker:
        first = wait_for(lambda: scrape(port), timeout=60, what="the metrics endpoint")
        assert first.value("job_status_sync_queue_depth") == 0, "a dead process's gauge counts"
        assert not set(stale_files) & {p.name for p in prom_dir.iterdir()}, "stale files are left"

        sent = send_jobs(producer_env, good + thin + unknown_tenant)
        ids = [item["job_id"] for item in sent]
        stored = ids[:34]  # the unknown tenant's jobs never get a row

        def terminal_rows(job_ids: list[str]) -> bool:
            rows = fetch_rows(url, job_ids)
            return len(rows) == len(job_ids) and all(r["status"] in TERMINAL for r in rows.values())

        wait_for(lambda: terminal_rows(stored), timeout=60, what="the first jobs' rows")
        wait_for(
            lambda: (
                (s := scrape(port)) and s.value("job_status_sync_failures_total", reason="rejected") >= 12
            ),
            timeout=30,
            what="the unknown tenant's events to be rejected",
        )

        # the database goes away while jobs keep coming
        own_postgres.stop()
        stopped = time.monotonic()
        during = [item["job_id"] for item in send_jobs(producer_env, [payload() for _ in range(10)])]

        def outage_seen() -> Scrape | None:
            # a worker's batch spilled (the producers' pending events fill the outbox too)
            s = scrape(port)
            seen = s is not None and s.value("job_status_sync_failures_total", reason="spilled") > 0
            return s if seen and s.value("job_status_sync_writes_total", outcome="failure") > 0 else None

        during_outage = wait_for(outage_seen, timeout=60, what="failed writes and a batch spilled")
        # down for 2 s at least, however fast the failures were seen: the held-back events must
        # lag by more than a second (asserted on the histogram below)
        time.sleep(max(0.0, stopped + 2.0 - time.monotonic()))
        own_postgres.start()

        wait_for(lambda: terminal_rows(stored + during), timeout=60, interval=0.5, what="every row")

        def settled() -> Scrape | None:
            s = scrape(port)
            if s is None or s.value("dramatiq_messages_total") < 50:
                return None
            idle = (
                s.value("job_status_sync_outbox_depth") == 0 and s.value("job_status_sync_queue_depth") == 0
            )
            done = sum(s.value("job_status_sync_events_total", status=status) for status in TERMINAL) == 50
            return s if idle and done else None

        result = wait_for(settled, timeout=60, interval=0.25, what="the endpoint to settle")
        counted = per_process_counts(prom_dir, "job_status_sync_events_total", status="completed")
        assert worker.stop() == 0
    log = worker.log

    # events by status, summed over both processes: one terminal event per job sent
    assert result.value("job_status_sync_events_total", status="completed") == 30 + 6 + 10
    assert result.value("job_status_sync_events_total", status="failed") == 4
    assert result.value("job_status_sync_events_total", status="active") >= 50
    assert result.value("job_status_sync_events_total", status="pending") == 0  # the producer's
    assert len([pid for pid, n in counted.items() if n > 0]) == 2, f"one process did everything: {counted}"
    assert sum(counted.values()) == 46

    # writes and failures
    assert result.value("job_status_sync_writes_total", outcome="success") > 0
    assert result.value("job_status_sync_writes_total", outcome="failure") > 0
    assert result.value("job_status_sync_failures_total", reason="rejected") >= 12  # pending + own
    outage = sum(result.value("job_status_sync_failures_total", reason=r) for r in ("connection", "timeout"))
    assert outage > 0
    assert result.value("job_status_sync_failures_total", reason="spilled") > 0

    # histograms: cumulative buckets, counts that match what was persisted
    check_histogram(result, "job_status_sync_write_seconds")
    lag = dict(check_histogram(result, "job_status_sync_lag_seconds"))
    assert lag[math.inf] >= 2 * 44  # a terminal event per stored job, and its `pending`
    assert lag[math.inf] - lag[1.0] > 0, "the events held back by the outage lagged by seconds"

    # gauges: present, and they moved
    assert during_outage.value("job_status_sync_outbox_depth") > 0
    assert result.types["job_status_sync_queue_depth"] == "gauge"
    assert result.types["job_status_sync_outbox_depth"] == "gauge"

    # Dramatiq's own metrics come through the same endpoint
    assert result.value("dramatiq_messages_total", actor_name="generate_course") == 50
    assert result.value("dramatiq_message_errors_total") == 4
    assert result.value("dramatiq_messages_inprogress") == 0
    assert result.value("dramatiq_message_duration_milliseconds_count") == 50

    assert {label for (_name, labels) in result.samples for label, _value in labels} <= ALLOWED_LABELS

    # one structured line per failure, and a summary when the outbox drained
    assert "Status event rejected by the store" in log
    assert "failed (connection, attempt" in log or "failed (timeout, attempt" in log
    assert "Outbox drained" in log


def test_a_producer_whose_metrics_directory_is_missing_still_writes_its_rows(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR copied from the workers' environment, missing here: no metrics,
    but `pending` is written all the same."""
    owner = create_owner(database_url)
    env = app_env(
        REDIS_URL=redis_url, DATABASE_URL=database_url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing")
    )
    payload = {
        "tenant_id": owner.tenant_id,
        "user_id": owner.user_id,
        "title": "Tides",
        "sources": [{"text": TEXT}],
    }
    # delayed: no worker takes it, the row can only come from the producer's own writer
    [sent] = send_jobs(env, [payload], delay=60_000)
    rows = wait_for(lambda: fetch_rows(database_url, [sent["job_id"]]), timeout=10, what="the pending row")
    assert rows[sent["job_id"]]["status"] == "pending"
    assert not (tmp_path / "missing").exists()
