"""The writer's memory bound (``max_buffer``, ``max_block``) while the database AND the outbox's
Redis are both down.

The real writer, the real PostgreSQL store and the real Redis outbox; both servers sit behind a
:class:`~tests.support.proxy.FaultyProxy` that refuses connections for the outage (as a stopped
server does) and lets them through again. What is pinned:

* nothing held is lost: once either answers, every status is written;
* a status past ``max_buffer`` waits for room at most ``max_block``, and only room made by a
  batch written or spilled ends the wait: while both are down every such status waits its
  bound and is then kept and counted (``overflow``), one count per status; a progress update is
  dropped and counted; the writer says so once, and once when there is room again;
* a status that finds room within its bound (a store came back) is not counted;
* stopping before either comes back loses what is held, and says how much.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox
from middleware.stores.postgres import PostgresStatusStore
from middleware.sync_metrics import SyncMetrics
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.proxy import FaultyProxy

pytestmark = [pytest.mark.integration]

MAX_BUFFER = 20
FAILURES = "job_status_sync_failures_total"


@dataclass
class Outage:
    """Both stores behind proxies, a writer on them, and its own metrics."""

    database_url: str  # straight to the database, to read rows
    database: FaultyProxy
    redis: FaultyProxy
    owner: Owner
    registry: CollectorRegistry
    writer: StatusWriter | None = None

    def start_writer(self, *, max_block: float) -> StatusWriter:
        through = psycopg.conninfo.make_conninfo(self.database_url, port=str(self.database.port))
        client = redis.Redis(
            port=self.redis.port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        metrics = SyncMetrics(self.registry)
        self.writer = StatusWriter(
            lambda: PostgresStatusStore(through, timeout=0.5),
            outbox=RedisOutbox(client, key=f"ob:outage:{uuid.uuid4()}"),
            flush_interval=0.01,
            min_batch=1,
            max_batch=10,
            max_buffer=MAX_BUFFER,
            max_block=max_block,
            retry_attempts=2,
            retry_seconds=0.2,
            probe_interval=0.1,
            drain_interval=0.1,
            close_timeout=20,
            metrics=lambda: metrics,
        )
        self.writer.start()
        return self.writer

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def down(self) -> None:
        self.database.down()
        self.redis.down()

    def up(self) -> None:
        self.database.up()
        self.redis.up()

    def statuses(self, n: int, prefix: str) -> list[StatusEvent]:
        now = time.time()
        return [
            StatusEvent(f"{prefix}-{i}-{uuid.uuid4()}", Status.COMPLETED, 1, self.owner, "a", "q", now)
            for i in range(n)
        ]

    def wait_until_both_failed(self, times: int = 1) -> None:
        """Until the writer has found the store down and failed to spill ``times`` more times."""
        target = self.value(FAILURES, reason="outbox") + times
        wait_for(lambda: self.value(FAILURES, reason="outbox") >= target, timeout=30, interval=0.01,
                 what="the writer to fail on both stores")  # fmt: skip


@pytest.fixture
def outage(database_url: str, redis_url: str) -> Iterator[Outage]:
    database_port = psycopg.conninfo.conninfo_to_dict(database_url).get("port") or 5432
    redis_port = urlsplit(redis_url).port
    assert redis_port is not None
    with FaultyProxy(int(database_port)) as database, FaultyProxy(redis_port) as server:
        outage = Outage(database_url, database, server, create_owner(database_url), CollectorRegistry())
        yield outage
        outage.up()
        if outage.writer is not None:
            outage.writer.close(timeout=20)


def submit_from_threads(writer: StatusWriter, groups: list[list[StatusEvent]]) -> None:
    """Each group submitted by a thread of its own, as worker threads do; all joined."""
    threads = [threading.Thread(target=lambda g=group: [writer.submit(e) for e in g]) for group in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a hook stayed blocked"


def actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "action", None) == action]


def test_past_the_bound_each_status_waits_its_max_block_then_is_kept_and_counted_and_none_is_lost(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="middleware.writer")
    outage.down()
    writer = outage.start_writer(max_block=0.05)
    held = outage.statuses(MAX_BUFFER, "held")
    for event in held:  # up to the bound: no wait, nothing counted
        writer.submit(event)
    outage.wait_until_both_failed()
    assert outage.value(FAILURES, reason="overflow") == 0

    past = [outage.statuses(10, f"past-{t}") for t in range(3)]
    progress = [
        StatusEvent(
            f"progress-{i}-{uuid.uuid4()}", Status.ACTIVE, 1, outage.owner, "a", "q", time.time(), progress=50
        )
        for i in range(5)
    ]
    submit_from_threads(writer, [*past, progress])
    outage.wait_until_both_failed(times=3)  # the writer went round (took, failed, put back) meanwhile

    # Every status past the bound waited its whole max_block (no room came: a batch taken out and
    # put back makes none) and was kept: one overflow each, not fewer.
    assert outage.value(FAILURES, reason="overflow") == 30
    assert outage.value(FAILURES, reason="dropped_progress") == 5
    wait_for(lambda: outage.value("job_status_sync_queue_depth") == MAX_BUFFER + 30, timeout=10,
             what="the held statuses in the queue depth")  # fmt: skip
    assert len(actions(caplog, "sync_buffer_full")) == 1, "said once"
    assert len(actions(caplog, "sync_outbox_down")) == 1, "said once"
    assert outage.value("job_status_sync_lost_events_total") == 0

    outage.up()
    every = [event.job_id for event in held] + [event.job_id for group in past for event in group]
    rows = wait_for(lambda: len(found := fetch_rows(outage.database_url, every)) == len(every) and found,
                    timeout=60, what="every held status written")  # fmt: skip
    assert {row["status"] for row in rows.values()} == {"completed"}
    wait_for(lambda: actions(caplog, "sync_buffer_room"), timeout=10, what="the buffer to have room again")
    [room] = actions(caplog, "sync_buffer_room")
    assert (room.overflow, room.dropped_progress) == (30, 5)  # type: ignore[attr-defined]
    assert len(actions(caplog, "sync_buffer_full")) == 1
    assert writer.close(timeout=20)
    assert outage.value("job_status_sync_lost_events_total") == 0


def test_a_status_that_finds_room_within_its_bound_is_not_counted(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="middleware.writer")
    outage.down()
    writer = outage.start_writer(max_block=120)  # far longer than the outage
    held = outage.statuses(MAX_BUFFER, "held")
    for event in held:
        writer.submit(event)
    [late] = outage.statuses(1, "late")
    hook = threading.Thread(target=writer.submit, args=(late,))
    hook.start()
    outage.wait_until_both_failed(times=3)
    assert hook.is_alive(), "no room while both are down, however often the writer goes round"

    outage.up()
    hook.join(60)
    assert not hook.is_alive()
    every = [event.job_id for event in [*held, late]]
    wait_for(lambda: len(fetch_rows(outage.database_url, every)) == len(every), timeout=60,
             what="every status written")  # fmt: skip
    assert outage.value(FAILURES, reason="overflow") == 0
    assert not actions(caplog, "sync_buffer_full")


def test_stopping_while_both_are_down_counts_and_names_what_is_lost(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="middleware.writer")
    outage.down()
    writer = outage.start_writer(max_block=0)  # 0: a hook never waits
    statuses = outage.statuses(MAX_BUFFER + 5, "lost")
    for event in statuses:
        writer.submit(event)
    outage.wait_until_both_failed()

    assert not writer.close(timeout=20), "close says it did not write everything"
    assert outage.value(FAILURES, reason="overflow") == 5
    assert outage.value("job_status_sync_lost_events_total") == len(statuses)
    named = {job for record in actions(caplog, "sync_lost") for job in record.job_ids}  # type: ignore[attr-defined]
    assert named <= {event.job_id for event in statuses} and named
    outage.up()
    assert not fetch_rows(outage.database_url, [event.job_id for event in statuses])
