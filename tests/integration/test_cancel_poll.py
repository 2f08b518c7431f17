"""The fleet's cancel poller (middleware/cancel_poll.py) on real Redis and both stores: a
cancellation stamped in the database reaches the flags the workers read; one process of the
fleet asks the database at a time; only live jobs are flagged; the watermark moves on, reading
again a window behind it; jobs flagged before their row existed get stamped once it does; a
failing store never stops the writer; only a worker's writer polls."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import redis

from coursegen.app import build_app
from coursegen.settings import load_settings
from middleware import RedisCancelFlags
from middleware.cancel_poll import CancelPoll, PollResult
from middleware.errors import TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import APPLIED, CancelRequest, Outcome, StatusStore
from middleware.stores.postgres import PostgresStatusStore
from middleware.sync_metrics import SyncMetrics
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.stores import STORE_KINDS, open_store

pytestmark = [pytest.mark.integration]


class Counting:
    """A store that forwards to a real one and counts the poller's calls."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads: list[tuple[dt.datetime, str, int]] = []
        self.stamps: list[list[str]] = []  # job ids asked

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        return list(self.store.apply(events))

    def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
        self.reads.append((since, after_job_id, limit))
        return list(self.store.cancel_requests(since, after_job_id, limit))

    def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
        self.stamps.append([job_id for job_id, _ in requests])
        return list(self.store.stamp_cancels(requests))

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[Counting]:
    with open_store(request.param, database_url) as real:
        yield Counting(real)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def jobs_of(database_url: str, owner: Owner, *statuses: Status) -> list[str]:
    ids = [f"{status.value}-{uuid.uuid4()}" for status in statuses]
    events = [
        StatusEvent(job_id, status, 0 if status is Status.PENDING else 1, owner, "a", "q", time.time())
        for job_id, status in zip(ids, statuses, strict=True)
    ]
    write(database_url, events)
    return ids


def write(database_url: str, events: list[StatusEvent]) -> None:
    writer = PostgresStatusStore(database_url)
    try:
        assert {o.outcome for o in writer.apply(events)} == {"applied"}
    finally:
        writer.close()


def stamp(database_url: str, job_ids: list[str], *, ago: float = 0.0) -> None:
    """What a plain UPDATE in Supabase Studio does."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set cancel_requested_at = now() - make_interval(secs => %s)"
            " where job_id = any(%s)",
            (ago, job_ids),
        )


def next_turn(poll: CancelPoll, store: Counting) -> PollResult:
    """The next poll that holds the lease (the previous turn's lease expires first)."""

    def turn() -> PollResult | None:
        result = poll.poll(store)
        return result if result.polled else None

    result: PollResult = wait_for(turn, timeout=5, interval=0.02, what="the lease to expire")
    return result


def metrics() -> SyncMetrics:
    from prometheus_client import CollectorRegistry

    return SyncMetrics(CollectorRegistry())


def test_a_stamp_made_in_the_database_is_flagged_by_one_process_of_the_fleet(
    database_url: str, client: redis.Redis, store: Counting
) -> None:
    owner = create_owner(database_url)
    running, queued = jobs_of(database_url, owner, Status.ACTIVE, Status.PENDING)
    stamp(database_url, [running, queued])
    flags = RedisCancelFlags(client, refresh=0)
    first, second = CancelPoll(flags, interval=30), CancelPoll(flags, interval=30)

    taken = first.poll(store)
    assert (taken.polled, taken.read, taken.copied) == (True, 2, 2)
    assert flags.is_requested(running) and flags.is_requested(queued)
    assert second.poll(store).polled is False  # the lease is the first one's: nobody else asks
    assert len(store.reads) == 1
    assert client.pttl("job_status:cancel_poll") > 0


def test_only_live_jobs_are_flagged_and_the_watermark_moves_on(
    database_url: str, client: redis.Redis, store: Counting
) -> None:
    owner = create_owner(database_url)
    live, done = jobs_of(database_url, owner, Status.ACTIVE, Status.COMPLETED)
    stamp(database_url, [live, done])
    flags = RedisCancelFlags(client, refresh=0)
    poll = CancelPoll(flags, interval=0.01)

    result = poll.poll(store)
    assert (result.read, result.copied) == (2, 1)
    assert flags.is_requested(live) and not flags.is_requested(done)
    newest = max(row["cancel_requested_at"] for row in fetch_rows(database_url, [live, done]).values())
    watermark = int(client.get("job_status:cancel_poll:watermark") or 0)
    assert watermark == (newest - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)

    # the next poll reads from `overlap` before the watermark: the same stamps, nothing new to flag
    again = next_turn(poll, store)
    assert (again.read, again.copied) == (2, 0)
    assert store.reads[-1][0] == newest - dt.timedelta(seconds=poll.overlap)


def test_a_stamp_that_commits_behind_the_watermark_is_still_read(
    database_url: str, client: redis.Redis, store: Counting
) -> None:
    """A stamp is its transaction's start time: it may become visible after a later one."""
    owner = create_owner(database_url)
    early, late = jobs_of(database_url, owner, Status.ACTIVE, Status.ACTIVE)
    stamp(database_url, [early])
    flags = RedisCancelFlags(client, refresh=0)
    poll = CancelPoll(flags, interval=0.01, overlap=10)
    assert poll.poll(store).copied == 1
    stamp(database_url, [late], ago=5)  # "committed" now, stamped five seconds ago
    result = next_turn(poll, store)
    assert result.copied == 1 and flags.is_requested(late)


def test_many_stamps_are_read_in_pages(database_url: str, client: redis.Redis, store: Counting) -> None:
    owner = create_owner(database_url)
    ids = jobs_of(database_url, owner, *[Status.ACTIVE] * 5)
    stamp(database_url, ids)
    flags = RedisCancelFlags(client, refresh=0)
    result = CancelPoll(flags, interval=30, page=2).poll(store)
    assert (result.read, result.copied) == (5, 5)
    assert [limit for _, _, limit in store.reads] == [2, 2, 2]
    assert all(flags.is_requested(job_id) for job_id in ids)
    # each page starts after the last row of the one before
    assert [after for _, after, _ in store.reads][1:] == sorted(ids)[1:4:2]


def test_a_job_flagged_before_its_row_existed_is_stamped_once_it_does(
    database_url: str, client: redis.Redis, store: Counting
) -> None:
    owner = create_owner(database_url)
    job_id = f"early-{uuid.uuid4()}"
    skipped = f"skipped-{uuid.uuid4()}"
    flags = RedisCancelFlags(client, refresh=0)
    asked = time.time()
    flags.request(job_id, row_missing=True)
    flags.request(skipped, row_missing=True)
    poll = CancelPoll(flags, interval=0.01)
    assert poll.poll(store).stamped == 0  # no rows yet: kept for later
    assert client.zcard(flags.unstamped_key) == 2

    # one job's pending row arrives; the other's first row is already its end (a worker skipped it)
    write(
        database_url,
        [
            StatusEvent(job_id, Status.PENDING, 0, owner, "a", "q", time.time()),
            StatusEvent(skipped, Status.CANCELLED, 1, owner, "a", "q", time.time()),
        ],
    )
    result = next_turn(poll, store)
    assert result.stamped == 2
    rows = fetch_rows(database_url, [job_id, skipped])
    for row in rows.values():  # stamped with the time of the request, not of the poll
        assert abs(row["cancel_requested_at"].timestamp() - asked) < 1
    assert client.zcard(flags.unstamped_key) == 0
    assert [sorted(ids) for ids in store.stamps] == [sorted([job_id, skipped])] * 2


def test_a_failing_store_is_counted_logged_and_asked_again_later(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    class Down:
        calls = 0

        def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
            raise AssertionError("not used")

        def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
            Down.calls += 1
            raise TransientStoreError("the database is down", reason="connection")

        def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
            raise AssertionError("not reached")

        def close(self) -> None:
            return None

    counted = metrics()
    poll = CancelPoll(RedisCancelFlags(client), interval=0.01)
    assert poll.maybe_poll(Down, counted) is None
    assert poll.maybe_poll(Down, counted) is None  # backing off: not asked again at once
    assert Down.calls == 1
    assert counted.cancel_polls.labels("failed")._value.get() == 1
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "cancel_poll_failed"]
    assert "the database is down" in record.getMessage() and not record.exc_info
    client.delete("job_status:cancel_poll")
    wait_for(lambda: poll.maybe_poll(Down, counted) is None and Down.calls == 2, timeout=5, interval=0.01)


def test_a_store_that_cannot_be_asked_is_left_alone(client: redis.Redis) -> None:
    class Plain:
        def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
            return [Outcome(e.job_id, APPLIED) for e in events]

        def close(self) -> None:
            return None

    poll = CancelPoll(RedisCancelFlags(client), interval=0.01)
    assert poll.maybe_poll(Plain, metrics()) is None
    assert client.exists("job_status:cancel_poll") == 0  # no lease taken for nothing


def test_only_a_worker_s_writer_polls(database_url: str, client: redis.Redis) -> None:
    owner = create_owner(database_url)
    [job_id] = jobs_of(database_url, owner, Status.ACTIVE)
    stamp(database_url, [job_id])
    flags = RedisCancelFlags(client, refresh=0)

    def writer() -> StatusWriter:
        store: StatusStore = PostgresStatusStore(database_url)
        return StatusWriter(lambda: store, flush_interval=0.01, cancel_poll=CancelPoll(flags, interval=0.01))

    producer = writer()
    try:
        producer.submit(StatusEvent(f"p-{uuid.uuid4()}", Status.PENDING, 0, owner, "a", "q", time.time()))
        assert producer.flush(timeout=10)
        assert producer.flush(timeout=10)  # its thread went round its loop again
        assert client.exists("job_status:cancel_poll") == 0 and not flags.is_requested(job_id)
    finally:
        producer.close()
    worker = writer()
    try:
        worker.start()  # what a worker does at boot
        wait_for(lambda: flags.is_requested(job_id), timeout=10, interval=0.02, what="the worker's poll")
    finally:
        worker.close()


@pytest.mark.parametrize(("interval", "polls"), [("0", False), ("1", True)], ids=["off", "on"])
def test_cancel_poll_interval_zero_turns_the_fleet_s_poller_off(
    database_url: str,
    redis_url: str,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    interval: str,
    polls: bool,
) -> None:
    """README, Cancellation: COURSEGEN_CANCEL_POLL_INTERVAL=0 turns the poller off. A worker's
    app, its writer started as at boot: with 1 the stamp made in the database is flagged; with
    0 the writer goes round its loop and never takes the lease, reads nor flags anything."""
    owner = create_owner(database_url)
    [job_id] = jobs_of(database_url, owner, Status.ACTIVE)
    stamp(database_url, [job_id])
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COURSEGEN_CANCEL_POLL_INTERVAL", interval)
    app = build_app(load_settings())
    flags = RedisCancelFlags(client, refresh=0)
    try:
        assert app.status is not None
        writer = app.status.writer
        writer.start()  # what a worker does at boot
        if polls:
            wait_for(lambda: flags.is_requested(job_id), timeout=10, interval=0.02, what="the poller's flag")
        else:
            for _ in range(3):  # each batch is taken in a later turn of the loop than the last one
                writer.submit(
                    StatusEvent(f"w-{uuid.uuid4()}", Status.PENDING, 0, owner, "a", "q", time.time())
                )
                assert writer.flush(timeout=10)
            assert not flags.is_requested(job_id)
        lease_or_watermark = client.exists("job_status:cancel_poll", "job_status:cancel_poll:watermark")
        assert (lease_or_watermark > 0) is polls
    finally:
        app.close()
