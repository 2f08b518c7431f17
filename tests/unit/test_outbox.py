"""The durable outbox on a real Redis: claims with leases, checked entries and dead letters, so
that a drain never loses an event and no entry can hold up the others."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis

from middleware.errors import RejectedBatchError
from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import BadEntry, RedisOutbox, parse_entry
from middleware.stores.base import APPLIED, REJECTED, Outcome
from middleware.writer import StatusWriter
from tests.support.db import wait_for

from .conftest import MetricDelta, RecordingStore

OWNER = Owner(str(uuid.uuid4()), str(uuid.uuid4()))
NOW = 1_800_000_000.0


def events(n: int, status: Status = Status.COMPLETED) -> list[StatusEvent]:
    return [StatusEvent(f"job-{i}", status, 1, OWNER, "a", "q", NOW + i) for i in range(n)]


def ids(raw: Sequence[bytes]) -> list[str]:
    return [parse_entry(item)[0].job_id for item in raw]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def claims(client: redis.Redis, outbox: RedisOutbox) -> int:
    return int(client.zcard(outbox.leases_key))


def test_a_claim_holds_its_entries_until_settled(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:done")
    outbox.push(events(5))

    claim = outbox.take(3)

    assert ids(claim.raw) == ["job-0", "job-1", "job-2"]
    assert outbox.depth() == 2 and claims(client, outbox) == 1
    assert client.llen(claim.key) == 3, "the claimed entries are still in Redis"
    outbox.settle(claim)
    assert claims(client, outbox) == 0 and not client.exists(claim.key)
    assert ids(outbox.take(10).raw) == ["job-3", "job-4"]
    assert outbox.take(10).key is None, "nothing left: no claim"


def test_settle_returns_some_entries_and_buries_others_in_one_go(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:back")
    outbox.push(events(4))

    claim = outbox.take(4)
    outbox.settle(claim, put_back=claim.raw[:2], dead=[(claim.raw[2], "rejected: unknown_tenant")])

    assert outbox.depth() == 2 and claims(client, outbox) == 0
    assert sorted(ids(outbox.take(10).raw)) == ["job-0", "job-1"]
    [letter] = outbox.dead_letters()
    assert letter.reason == "rejected: unknown_tenant"
    assert parse_entry(letter.entry)[0].job_id == "job-2"


def test_the_claim_of_a_worker_that_died_comes_back_when_its_lease_ends(client: redis.Redis) -> None:
    dead = RedisOutbox(client, key="ob:lease", lease_seconds=0.3)
    dead.push(events(3))
    abandoned = dead.take(10)  # ...and the worker is killed before settling
    other = RedisOutbox(client, key="ob:lease")

    assert other.take(10).key is None, "a live lease is respected"
    wait_for(lambda: client.zscore(dead.leases_key, abandoned.key) < time.time() * 1000, timeout=5,
             what="the lease to end")  # fmt: skip
    again = other.take(10)

    assert sorted(ids(again.raw)) == sorted(ids(abandoned.raw))
    assert not client.exists(abandoned.key)
    other.settle(again)
    assert other.depth() == 0 and claims(client, other) == 0


def deep_json(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def poisoned(good: StatusEvent) -> dict[str, bytes]:
    """Entries no drain can write, by the reason each must be buried with."""
    doc = json.loads(good.to_json())
    return {
        "not_json": b"{not json",
        "nested": deep_json(100_000),
        "bad_bytes": b"\xff\xfe{",
        "not_an_event": b"[1, 2, 3]",
        "job_id_type": json.dumps(doc | {"job_id": 42}).encode(),
        "owner_not_uuid": json.dumps(doc | {"tenant_id": "acme"}).encode(),
        "nan_time": json.dumps(doc | {"event_at": float("nan")}).encode(),
        "negative_infinity": json.dumps(doc | {"started_at": float("-inf")}).encode(),
        "year_1970": json.dumps(doc | {"event_at": 1.0}).encode(),
        "status": json.dumps(doc | {"status": "exploded"}).encode(),
        "bool_attempt": json.dumps(doc | {"attempt": True}).encode(),
        "huge": json.dumps(doc | {"result": "x" * (5 * 1024 * 1024)}).encode(),
    }


@pytest.mark.parametrize("kind", list(poisoned(events(1)[0])))
def test_parse_entry_refuses_what_is_not_an_event(kind: str) -> None:
    with pytest.raises(BadEntry) as refused:
        parse_entry(poisoned(events(1)[0])[kind])
    assert refused.value.reason.split(":")[0] in {"not_json", "not_an_event", "invalid", "too_large"}


def test_a_deeply_nested_result_inside_an_entry_is_cut_not_refused() -> None:
    doc = json.loads(events(1)[0].to_json())
    text = json.dumps(doc)[:-1] + ',"result":' + deep_json(500).decode() + "}"
    event, _tries = parse_entry(text)
    assert json.dumps(event.result).count("[") == 64


def test_poisoned_entries_are_buried_and_never_hold_up_the_good_ones(client: redis.Redis) -> None:
    key = f"ob:poison:{uuid.uuid4()}"
    outbox = RedisOutbox(client, key=key)
    good = events(10)
    bad = poisoned(good[0])
    outbox.push(good[:5])
    client.rpush(key, *bad.values())
    outbox.push(good[5:])
    store = RecordingStore()
    delta = MetricDelta().watch("job_status_sync_dead_letters_total", reason="invalid")
    writer = StatusWriter(lambda: store, outbox=outbox, flush_interval=0.01, drain_interval=0.01)
    writer.start()
    try:
        wait_for(
            lambda: outbox.depth() == 0 and claims(client, outbox) == 0, timeout=10, what="the outbox drained"
        )
    finally:
        writer.close(timeout=5)

    assert sorted(event.job_id for event in store.events) == sorted(event.job_id for event in good)
    letters = outbox.dead_letters(0, 100)
    assert len(letters) == len(bad) == outbox.dead_depth()
    assert delta("job_status_sync_dead_letters_total", reason="invalid") >= 7


class RejectingStore(RecordingStore):
    """Rejects every event of one job the way job_status_apply does an unknown tenant."""

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def outcome(self, event: StatusEvent) -> Outcome:
        if event.job_id == self.job_id:
            return Outcome(event.job_id, REJECTED, "unknown_tenant")
        return Outcome(event.job_id, APPLIED)


def test_an_entry_the_store_rejects_is_buried_with_the_reason(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key=f"ob:rejected:{uuid.uuid4()}")
    outbox.push(events(3))
    store = RejectingStore("job-1")
    writer = StatusWriter(lambda: store, outbox=outbox, flush_interval=0.01, drain_interval=0.01)
    writer.start()
    try:
        wait_for(lambda: outbox.dead_depth() == 1 and outbox.depth() == 0, timeout=10, what="one dead letter")
    finally:
        writer.close(timeout=5)
    [letter] = outbox.dead_letters()
    assert letter.reason == "rejected: unknown_tenant"
    assert parse_entry(letter.entry)[0].job_id == "job-1"


class ChokingStore(RecordingStore):
    """Raises something unexpected on any batch holding one job's event (a store bug)."""

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        if any(event.job_id == self.job_id for event in events):
            raise KeyError("a bug in the store")
        return super().apply(events)


def test_an_entry_the_store_chokes_on_is_buried_while_its_batch_mates_land(client: redis.Redis) -> None:
    """The store took the other events of the claim: the one it raises on is to blame."""
    outbox = RedisOutbox(client, key=f"ob:choke:{uuid.uuid4()}")
    outbox.push(events(4))
    store = ChokingStore("job-2")
    writer = StatusWriter(lambda: store, outbox=outbox, flush_interval=0.01, drain_interval=0.01)
    writer.start()
    try:
        wait_for(lambda: outbox.dead_depth() == 1 and outbox.depth() == 0, timeout=10, what="one dead letter")
    finally:
        writer.close(timeout=5)
    assert sorted(event.job_id for event in store.events) == ["job-0", "job-1", "job-3"]
    [letter] = outbox.dead_letters()
    assert letter.reason == "rejected: store_error: KeyError"


def test_an_entry_alone_with_a_store_that_raises_is_buried_after_a_few_drains(client: redis.Redis) -> None:
    """Nothing tells the entry from the store apart: each drain counts a try against it."""
    outbox = RedisOutbox(client, key=f"ob:alone:{uuid.uuid4()}")
    outbox.push(events(3)[2:])
    store = ChokingStore("job-2")
    writer = StatusWriter(
        lambda: store, outbox=outbox, flush_interval=0.01, drain_interval=0.01, probe_interval=0.01
    )
    writer.start()
    try:
        wait_for(lambda: outbox.dead_depth() == 1 and outbox.depth() == 0, timeout=10, what="one dead letter")
    finally:
        writer.close(timeout=5)
    [letter] = outbox.dead_letters()
    assert letter.reason == "failing: error on 3 drains"
    event, tries = parse_entry(letter.entry)
    assert (event.job_id, tries) == ("job-2", 2), "buried as it was last put back"


def test_dead_letters_are_listed_requeued_and_dropped(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key=f"ob:letters:{uuid.uuid4()}")
    outbox.push(events(3))
    claim = outbox.take(3)
    outbox.settle(claim, dead=[(raw, f"rejected: reason {i}") for i, raw in enumerate(claim.raw)])
    assert [letter.reason for letter in outbox.dead_letters(1, 5)] == [
        "rejected: reason 1",
        "rejected: reason 2",
    ]

    assert outbox.requeue_dead(1) == 1
    assert ids(outbox.take(10).raw) == ["job-0"]
    assert outbox.drop_dead(1) == 1
    assert [letter.reason for letter in outbox.dead_letters()] == ["rejected: reason 2"]
    assert outbox.requeue_dead() == 1 and outbox.dead_depth() == 0
    assert outbox.drop_dead() == 0


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
        wait_for(lambda: len(store.events) == 20, timeout=10, what="all 20 events in the store")
    finally:
        writer.close(timeout=5)
    assert sorted(e.job_id for e in store.events) == sorted(f"job-{i}" for i in range(20))
    assert client.llen(key) == 0 and client.zcard(f"{key}:leases") == 0


def test_a_claim_larger_than_luas_unpack_limit_is_taken_whole(client: redis.Redis) -> None:
    outbox = RedisOutbox(client, key="ob:big")
    outbox.push(events(9000))

    claim = outbox.take(9000)

    assert len(claim) == 9000 and client.llen(claim.key) == 9000
    outbox.settle(claim, put_back=claim.raw)
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
    assert sorted(e.job_id for e in store.events) == ["job-0", "job-1"]
    assert any(r.__dict__.get("action") == "sync_error" for r in caplog.records)


def test_a_batch_refused_for_its_data_is_split_until_the_bad_event_stands_alone(client: redis.Redis) -> None:
    """RejectedBatchError (SQLSTATE 22/23, PostgREST 400) is not an outage: nothing spilled."""

    class OneBadEvent(RecordingStore):
        def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
            if any(event.job_id == "job-5" and event.error_type is None for event in events):
                raise RejectedBatchError("22P05: unsupported Unicode escape sequence")
            return super().apply(events)

    outbox = RedisOutbox(client, key=f"ob:split:{uuid.uuid4()}")
    store = OneBadEvent()
    writer = StatusWriter(lambda: store, outbox=outbox, flush_interval=0.01)
    try:
        for event in events(8):
            writer.submit(event)
        assert writer.flush(timeout=5)
        assert not writer.degraded
    finally:
        writer.close(timeout=5)
    written = {event.job_id: event for event in store.events}
    assert sorted(written) == [f"job-{i}" for i in range(8)]
    replaced = written["job-5"]
    assert (replaced.status, replaced.error_type) == (Status.COMPLETED, "StatusEventRejected")
    assert "rejected_batch" in (replaced.error_message or "")
    assert outbox.depth() == 0 and outbox.dead_depth() == 0


def test_a_store_found_down_by_the_drain_is_said_once_and_the_writer_spills(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain may be the first to meet a store that went down (a cancel poll, another drain
    or nothing may have written since): the writer says so, as a failed write does, before it
    spills its own batches without asking the store."""
    key = f"ob:down:{uuid.uuid4()}"
    outbox = RedisOutbox(client, key=key)
    outbox.push(events(3))
    store = RecordingStore(fail_times=1_000)
    writer = StatusWriter(lambda: store, outbox=outbox, flush_interval=0.01, drain_interval=0.05)
    writer.start()
    try:
        wait_for(lambda: writer.degraded, timeout=10, what="the drain to find the store down")
        writer.submit(events(4)[3])
        assert writer.flush(timeout=5)
    finally:
        writer.close(timeout=5)
    spills = [r for r in caplog.records if r.__dict__.get("action") == "sync_spill"]
    assert len(spills) == 1 and "spilling" in spills[0].getMessage()
    assert all(len(batch) <= 3 for batch in store.failed_batches)  # only drains asked the store
    assert sorted(ids(client.lrange(key, 0, -1))) == ["job-0", "job-1", "job-2", "job-3"]
