"""Every move of entries between the outbox's lists (claim, settle, requeue, drop) keeps each entry
in exactly one of them: whatever the connection does, however often the client runs a command
again, and with two operators at once.

The faults are real: the real Redis behind :class:`~tests.support.proxy.FaultyProxy` cuts the
connection before a command reaches it or once it has run and before its answer is read, and
``CLIENT KILL`` drops connections in the middle of a requeue. redis-py runs a command again after
a connection error (its default), so a command whose answer was lost runs twice: the moves must
be idempotent, not only atomic.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from middleware.errors import TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox, entry_with_tries, parse_entry
from tests.support.db import wait_for
from tests.support.proxy import FaultyProxy

OWNER = Owner(str(uuid.uuid4()), str(uuid.uuid4()))
NOW = 1_800_000_000.0
SCRIPT = b"EVALSHA"  # how redis-py runs a registered script


def events(n: int, prefix: str = "job") -> list[StatusEvent]:
    return [StatusEvent(f"{prefix}-{i}", Status.COMPLETED, 1, OWNER, "a", "q", NOW + i) for i in range(n)]


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    """A client straight to Redis, to look at the lists."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultyProxy]:
    port = urlsplit(redis_url).port
    assert port is not None
    with FaultyProxy(port) as proxy:
        yield proxy


def through(proxy: FaultyProxy, *, retries: bool) -> redis.Redis:
    """A client through the proxy: redis-py's default retries, or none."""
    if retries:
        return redis.Redis(port=proxy.port, socket_timeout=10)
    return redis.Redis(port=proxy.port, socket_timeout=10, retry=Retry(NoBackoff(), 0))


def key() -> str:
    return f"ob:moves:{uuid.uuid4()}"


def bury(outbox: RedisOutbox, batch: list[StatusEvent], *, tries: int = 0) -> None:
    outbox.bury(
        [(entry_with_tries(event, tries) if tries else event.to_json(), "rejected: x") for event in batch]
    )


def job_ids(raw: list[bytes]) -> list[str]:
    return [parse_entry(item)[0].job_id for item in raw]


def where(
    direct: redis.Redis, outbox: RedisOutbox
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """How many times each job is in the outbox's list, and in its dead letters."""
    letters = RedisOutbox(direct, key=outbox.key).dead_letters(0, 100_000)
    waiting = collections.Counter(job_ids(direct.lrange(outbox.key, 0, -1)))
    dead = collections.Counter(parse_entry(letter.entry)[0].job_id for letter in letters)
    return waiting, dead


def assert_each_once(direct: redis.Redis, outbox: RedisOutbox, jobs: list[str]) -> tuple[set[str], set[str]]:
    """Every job in exactly one of the two lists, once; the jobs of each."""
    waiting, dead = where(direct, outbox)
    assert max([*waiting.values(), *dead.values()], default=1) == 1, "an entry is in a list twice"
    assert not set(waiting) & set(dead), "an entry is in both lists"
    assert set(waiting) | set(dead) == set(jobs), "an entry is in neither list: lost"
    return set(waiting), set(dead)


# -- requeue and drop ------------------------------------------------------------------------------


def test_requeue_and_drop_take_the_oldest_n_all_or_a_jobs_letters(direct: redis.Redis) -> None:
    outbox = RedisOutbox(direct, key=key())
    batch = events(6)
    bury(outbox, batch, tries=2)
    outbox.bury([("{not json", "not_json: JSONDecodeError")])
    direct.rpush(outbox.dead_key, b"\xff not a letter")

    assert outbox.requeue_dead(2) == 2
    assert direct.lrange(outbox.key, 0, -1) == [e.to_json().encode() for e in batch[:2]], "without _tries"
    assert outbox.requeue_dead(5, jobs=["job-4", "nobody"]) == 1
    assert [letter.entry for letter in outbox.dead_letters(0, 10, jobs=["job-5", "job-3"])] == [
        entry_with_tries(batch[3], 2),
        entry_with_tries(batch[5], 2),
    ]
    assert outbox.drop_dead(jobs=["job-5"]) == 1
    assert outbox.drop_dead(1) == 1  # job-2, the oldest
    assert [letter.reason for letter in outbox.dead_letters(0, 10)] == [
        "rejected: x",
        "not_json: JSONDecodeError",
        "unreadable dead letter",
    ]
    assert outbox.requeue_dead() == 3, "all"
    assert job_ids(direct.lrange(outbox.key, 0, 3)) == ["job-0", "job-1", "job-4", "job-3"]
    assert direct.lrange(outbox.key, 4, -1) == [b"{not json", "\ufffd not a letter".encode()], "as they were"
    assert outbox.dead_depth() == 0 and outbox.requeue_dead() == 0 and outbox.drop_dead() == 0


@pytest.mark.parametrize("retries", [True, False], ids=["client-retries", "no-retries"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("action", ["requeue", "drop"])
def test_a_connection_cut_at_any_step_of_a_move_loses_and_doubles_nothing(
    direct: redis.Redis, proxy: FaultyProxy, action: str, when: str, retries: bool
) -> None:
    """The connection is cut at the first request of a move, then, afresh, at the second, and so
    on until a move runs out of requests first: before a request reaches Redis (a process killed
    there) or once Redis ran it and before the answer is read. Each letter is then in the dead
    letters or in the outbox (dropped: gone), once; a client that runs the command again is told
    what the first run moved. (Requeue used to LPOP, then RPUSH: a cut after the LPOP lost the
    letter, and a client running the LPOP again popped, and lost, the next one too.)"""
    cut_at = proxy.cut_before if when == "before" else proxy.cut_after
    for step in itertools.count():
        outbox = RedisOutbox(through(proxy, retries=retries), key=key())
        batch = events(5)
        bury(RedisOutbox(direct, key=outbox.key), batch)
        cut = cut_at(b"", skip=step)  # b"": any request
        move = outbox.requeue_dead if action == "requeue" else outbox.drop_dead
        try:
            moved: int | None = move(3)
        except TransientStoreError:
            moved = None
        proxy.disarm()
        outbox.client.close()
        if not cut.is_set():  # the move was over before this step: every step was cut once
            break
        oldest, rest = {"job-0", "job-1", "job-2"}, {"job-3", "job-4"}
        if action == "requeue":
            waiting, _dead = assert_each_once(direct, outbox, [event.job_id for event in batch])
            assert waiting <= oldest, step
            if retries:
                assert (moved, waiting) == (3, oldest), step
        else:
            counted_waiting, counted_dead = where(direct, outbox)
            assert not counted_waiting and max(counted_dead.values()) == 1, step
            assert rest <= set(counted_dead), f"step {step}: dropped one it was not asked to"
            if retries:
                assert (moved, set(counted_dead)) == (3, rest), step
        assert moved is None or retries, "a cut connection is an error without retries"
    assert step >= 2, "a move takes a few requests: each was cut"


def test_two_operators_requeueing_at_once_move_each_letter_once(direct: redis.Redis, redis_url: str) -> None:
    name = key()
    batch = events(3000)
    bury(RedisOutbox(direct, key=name), batch)
    start = threading.Barrier(2)
    counts: list[int] = []

    def requeue() -> None:
        outbox = RedisOutbox(redis.Redis.from_url(redis_url), key=name)
        start.wait()
        counts.append(outbox.requeue_dead())

    operators = [threading.Thread(target=requeue) for _ in range(2)]
    for operator in operators:
        operator.start()
    for operator in operators:
        operator.join(60)

    outbox = RedisOutbox(direct, key=name)
    waiting, dead = assert_each_once(direct, outbox, [event.job_id for event in batch])
    assert len(waiting) == 3000 and not dead
    assert sum(counts) == 3000, counts


def test_a_requeue_and_a_drop_at_once_share_the_letters(direct: redis.Redis, redis_url: str) -> None:
    name = key()
    batch = events(3000)
    bury(RedisOutbox(direct, key=name), batch)
    start = threading.Barrier(2)
    counts: dict[str, int] = {}

    def act(action: str) -> None:
        outbox = RedisOutbox(redis.Redis.from_url(redis_url), key=name)
        start.wait()
        counts[action] = outbox.requeue_dead() if action == "requeue" else outbox.drop_dead()

    operators = [threading.Thread(target=act, args=(action,)) for action in ("requeue", "drop")]
    for operator in operators:
        operator.start()
    for operator in operators:
        operator.join(60)

    outbox = RedisOutbox(direct, key=name)
    waiting, dead = where(direct, outbox)
    assert not dead and max(waiting.values(), default=1) == 1
    assert len(waiting) == counts["requeue"] and counts["requeue"] + counts["drop"] == 3000, counts


# -- a drain's claim -------------------------------------------------------------------------------


def test_a_claim_whose_answer_is_lost_is_the_same_claim_when_run_again(
    direct: redis.Redis, proxy: FaultyProxy
) -> None:
    """(It used to take a second batch into the same claim, which the worker then settled
    without knowing of the first: the first batch was lost.)"""
    outbox = RedisOutbox(through(proxy, retries=True), key=key())
    batch = events(10)
    outbox.push(batch)
    outbox.settle(outbox.take(1), put_back=[])  # job-0 written; the script is loaded

    cut = proxy.cut_after(SCRIPT)
    claim = outbox.take(3)
    assert cut.is_set()

    assert job_ids(claim.raw) == ["job-1", "job-2", "job-3"]
    assert direct.lrange(claim.key, 0, -1) == claim.raw, "the claim holds what the worker was told"
    outbox.settle(claim)
    assert job_ids(direct.lrange(outbox.key, 0, -1)) == [f"job-{i}" for i in range(4, 10)]


def test_a_settle_whose_answer_is_lost_settles_once(direct: redis.Redis, proxy: FaultyProxy) -> None:
    outbox = RedisOutbox(through(proxy, retries=True), key=key())
    outbox.push(events(4))
    outbox.settle(outbox.take(1))  # the scripts are loaded
    claim = outbox.take(3)

    cut = proxy.cut_after(SCRIPT)
    outbox.settle(claim, put_back=claim.raw[:1], dead=[(claim.raw[1], "rejected: x")])
    assert cut.is_set()

    waiting, dead = assert_each_once(direct, outbox, ["job-1", "job-2"])
    assert (waiting, dead) == ({"job-1"}, {"job-2"})
    assert direct.zcard(outbox.leases_key) == 0 and not direct.exists(claim.key)


def test_a_claim_settled_after_its_lease_ran_out_is_left_to_its_new_holder(direct: redis.Redis) -> None:
    """A drain slower than the lease: another worker took the entries back. The late settle must
    neither bury nor return them a second time."""
    slow = RedisOutbox(direct, key=key(), lease_seconds=0.2)
    outbox = RedisOutbox(direct, key=slow.key)
    outbox.push(events(3))
    late = slow.take(3)
    wait_for(lambda: direct.zscore(slow.leases_key, late.key) < time.time() * 1000, timeout=5,
             what="the lease to end")  # fmt: skip
    again = outbox.take(3)
    assert job_ids(again.raw) == job_ids(late.raw)

    slow.settle(late, put_back=late.raw[:1], dead=[(late.raw[1], "rejected: x")])

    assert outbox.depth() == 0 and outbox.dead_depth() == 0, "the late settle did nothing"
    assert direct.lrange(again.key, 0, -1) == again.raw
    outbox.settle(again, put_back=again.raw[:1], dead=[(again.raw[1], "rejected: x")])
    assert assert_each_once(direct, outbox, ["job-0", "job-1"]) == ({"job-0"}, {"job-1"})
