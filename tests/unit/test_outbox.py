"""The durable outbox on a real Redis: claims with leases, so that a drain never loses events."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox
from middleware.writer import StatusWriter
from tests.support.db import wait_for

from .conftest import RecordingStore

OWNER = Owner(str(uuid.uuid4()), str(uuid.uuid4()))


def events(n: int, status: Status = Status.COMPLETED) -> list[StatusEvent]:
    return [StatusEvent(f"job-{i}", status, 1, OWNER, "a", "q", 1000.0 + i) for i in range(n)]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def applied(store: RecordingStore) -> list[StatusEvent]:
    return [event for batch in store.batches for event in batch]


def claims(client: redis.Redis, outbox: RedisOutbox) -> int:
    return int(client.zcard(outbox.leases_key))


def test_a_claim_holds_its_events_until_done(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:done")
    outbox.push(events(5))

    claim = outbox.take(3)

    assert [e.job_id for e in claim.events] == ["job-0", "job-1", "job-2"]
    assert outbox.depth() == 2 and claims(client, outbox) == 1
    assert client.llen(claim.key) == 3, "the claimed entries are still in Redis"
    outbox.done(claim)
    assert claims(client, outbox) == 0 and not client.exists(claim.key)
    assert [e.job_id for e in outbox.take(10).events] == ["job-3", "job-4"]
    assert outbox.take(10).key is None, "nothing left: no claim"


def test_put_back_returns_the_entries_to_the_list(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:back")
    outbox.push(events(4))

    claim = outbox.take(4)
    outbox.put_back(claim)

    assert outbox.depth() == 4 and claims(client, outbox) == 0
    assert sorted(e.job_id for e in outbox.take(10).events) == [f"job-{i}" for i in range(4)]


def test_the_claim_of_a_worker_that_died_comes_back_when_its_lease_ends(client: redis.Redis) -> None:
    dead = RedisOutbox(client, key="ob:lease", lease_seconds=0.3)
    dead.push(events(3))
    abandoned = dead.take(10)  # ...and the worker is killed before done() or put_back()
    other = RedisOutbox(client, key="ob:lease")

    assert other.take(10).key is None, "a live lease is respected"
    time.sleep(0.4)
    again = other.take(10)

    assert sorted(e.job_id for e in again.events) == sorted(e.job_id for e in abandoned.events)
    assert not client.exists(abandoned.key)
    other.done(again)
    assert other.depth() == 0 and claims(client, other) == 0


def test_an_undecodable_entry_is_logged_and_goes_away_with_its_claim(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = RedisOutbox(client, key="ob:junk")
    client.rpush(outbox.key, b"{not json")
    outbox.push(events(1))

    claim = outbox.take(10)
    outbox.put_back(claim)

    assert [e.job_id for e in claim.events] == ["job-0"]
    assert [r.__dict__.get("action") for r in caplog.records if r.levelno == logging.ERROR] == ["outbox_drop"]
    assert outbox.depth() == 1, "only the decodable entry went back"


def test_a_writer_drains_what_a_killed_worker_had_claimed(client: redis.Redis) -> None:
    key = f"ob:writer:{uuid.uuid4()}"
    RedisOutbox(client, key=key).push(events(20))
    RedisOutbox(client, key=key, lease_seconds=0.2).take(15)  # claimed by a worker now dead
    store = RecordingStore()
    writer = StatusWriter(
        lambda: store, outbox=RedisOutbox(client, key=key), flush_interval=0.01, drain_interval=0.05
    )
    writer.start()
    try:
        wait_for(lambda: len(applied(store)) == 20, timeout=10, what="all 20 events in the store")
    finally:
        writer.close(timeout=5)
    assert sorted(e.job_id for e in applied(store)) == sorted(f"job-{i}" for i in range(20))
    assert client.llen(key) == 0 and client.zcard(f"{key}:leases") == 0


def test_a_claim_larger_than_luas_unpack_limit_is_taken_whole(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:big")
    outbox.push(events(9000))

    claim = outbox.take(9000)

    assert len(claim) == 9000 and client.llen(claim.key) == 9000
    outbox.put_back(claim)
    assert outbox.depth() == 9000 and claims(client, outbox) == 0


def test_the_writer_thread_outlives_an_outbox_that_raises_anything(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis's client raises ValueError on a socket closed under it, not a RedisError: the
    writer must log it and go on writing batches."""
    broken = RedisOutbox(client, key="ob:broken")
    calls: list[int] = []

    def take(count: int) -> None:
        calls.append(count)
        raise ValueError("I/O operation on closed file.")

    broken.take = take  # type: ignore[method-assign]
    store = RecordingStore()
    writer = StatusWriter(lambda: store, outbox=broken, flush_interval=0.01, drain_interval=0.01)
    try:
        writer.submit(events(1)[0])
        wait_for(lambda: len(calls) >= 2, timeout=5, what="the writer to try the outbox twice")
        writer.submit(events(2)[1])
        assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)
    assert sorted(e.job_id for e in applied(store)) == ["job-0", "job-1"]
    assert any(r.__dict__.get("action") == "sync_error" for r in caplog.records)
