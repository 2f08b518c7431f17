"""How far behind retention is (migration 20261205160000, ``public.job_status_retention_lag``),
and its way to an operator: the fleet's cancel poller reads it through the writer's store, at
most once a minute for the whole fleet, into ``job_status_retention_lag_seconds``.

Rows are made overdue with plain SQL, as tests/integration/test_retention.py ages them; the lag
is then about how long past its time the next row is, and 0 once ``coursegen.retention.run``
did its work. Both stores (psycopg, the real supabase client through the PostgREST stand-in).
The plan check: the function's two queries walk the created_at index, never the table."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import redis

from coursegen import retention
from coursegen.app import build_app
from coursegen.settings import ConfigurationError, load_settings
from middleware import RedisCancelFlags
from middleware.cancel_poll import CancelPoll
from middleware.errors import TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import CancelRequest, Outcome, StatusStore
from middleware.sync_metrics import SyncMetrics, get_metrics
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.stores import STORE_KINDS, open_store

pytestmark = [pytest.mark.integration, pytest.mark.sql]

DAY = 86_400.0
# now() is each statement's transaction's start: two statements a test apart differ by the test's
# own pace, never by a day
SLACK = 60.0


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[StatusStore]:
    with open_store(request.param, database_url) as s:
        yield s


@pytest.fixture
def owner(database_url: str) -> Owner:
    return create_owner(database_url)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def write(store: StatusStore, owner: Owner, status: Status) -> str:
    job_id = f"lag-{uuid.uuid4()}"
    [outcome] = store.apply([StatusEvent(job_id, status, 1, owner, "a", "q", time.time())])
    assert outcome.outcome == "applied"
    return job_id


def finished_overdue(conninfo: str, job_id: str, *, days: float) -> None:
    """A finished row whose purge time (finished_at + 30 days) passed ``days`` ago."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - make_interval(secs => %(c)s),"
            " finished_at = now() - make_interval(secs => %(f)s) where job_id = %(j)s",
            {"c": (31 + days) * DAY, "f": (30 + days) * DAY, "j": job_id},
        )


def quiet_overdue(conninfo: str, job_id: str, *, days: float) -> None:
    """An unfinished row whose expiry (updated_at + 7 days) passed ``days`` ago."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - make_interval(secs => %(c)s),"
            " updated_at = now() - make_interval(secs => %(u)s) where job_id = %(j)s",
            {"c": (8 + days) * DAY, "u": (7 + days) * DAY, "j": job_id},
        )


def lag(conninfo: str) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return float(conn.execute("select public.job_status_retention_lag()").fetchone()[0])  # type: ignore[index]


def test_the_lag_is_how_long_past_its_time_the_next_row_is_and_zero_once_retention_ran(
    database_url: str, store: StatusStore, owner: Owner
) -> None:
    # rows within their horizons: a finished one, a live one, one finished long ago but not due
    write(store, owner, Status.COMPLETED)
    write(store, owner, Status.ACTIVE)
    kept = write(store, owner, Status.COMPLETED)
    finished_overdue(database_url, kept, days=-1)  # due in a day
    assert lag(database_url) == 0.0
    assert store.retention_lag() == 0.0  # type: ignore[attr-defined]

    done = write(store, owner, Status.COMPLETED)
    finished_overdue(database_url, done, days=1)
    assert lag(database_url) == pytest.approx(DAY, abs=SLACK)

    quiet = write(store, owner, Status.ACTIVE)
    quiet_overdue(database_url, quiet, days=2)  # the larger of the two
    assert store.retention_lag() == pytest.approx(2 * DAY, abs=SLACK)  # type: ignore[attr-defined]

    counts, _settings = retention.run(database_url)
    assert (counts.expired, counts.purged) == (1, 1)
    assert lag(database_url) == 0.0
    assert store.retention_lag() == 0.0  # type: ignore[attr-defined]
    assert fetch_rows(database_url, [quiet])[quiet]["error_type"] == "Expired"
    assert kept in fetch_rows(database_url, [kept])


def test_the_lag_follows_the_settings_table(database_url: str, owner: Owner, store: StatusStore) -> None:
    done = write(store, owner, Status.FAILED)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - interval '3 days',"
            " finished_at = now() - interval '3 days' where job_id = %s",
            (done,),
        )
    assert lag(database_url) == 0.0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update public.job_status_retention set keep_finished = '1 day'")
    assert lag(database_url) == pytest.approx(2 * DAY, abs=SLACK)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from public.job_status_retention")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="has no row"):
            conn.execute("select public.job_status_retention_lag()")


# -- the plan ----------------------------------------------------------------------------------

ROWS = 20_000
# 30 days of jobs, one an hour unfinished and quiet for more than expire_after when `behind`;
# finished five minutes after they were created
_FILL = """
insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status,
  attempt, finished_at, event_at, created_at, updated_at)
select 'plan-' || s.g, %(tenant)s, %(user)s, 'a', 'q',
  case when s.live then 'active'::public.job_state else 'completed' end, 1,
  case when s.live then null else now() - s.age + interval '5 minutes' end,
  now() - s.age, now() - s.age, now() - s.age + interval '5 minutes'
from (
  select g, make_interval(secs => %(span)s * g / %(rows)s::float8) as age,
    g %% 100 = 0 and (%(behind)s or g * %(span)s / %(rows)s::float8 < 6 * 86400) as live
  from pg_catalog.generate_series(1, %(rows)s) as g
) as s
"""
_QUERY = re.compile(r"Query Text: (.*?)\n(.*?)(?=\nduration: |\Z)", re.S)


def plans(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The plans of the function's statements, as auto_explain logs them (nested statements,
    with buffers): (a) the purge's query, (b) the expiry's."""
    notes: list[str] = []
    conn.add_notice_handler(lambda diag: notes.append(diag.message_primary or ""))
    conn.execute("load 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_analyze = on",
                    "log_buffers = on", "log_timing = off"):  # fmt: skip
        conn.execute(f"set auto_explain.{setting}")
    conn.execute("set client_min_messages = log")
    conn.execute("select public.job_status_retention_lag()")
    conn.execute("set client_min_messages = notice")
    found = {}
    for note in notes:
        for text, plan in _QUERY.findall(note):
            if "v_purge_before - j.finished_at" in text:
                found["purge"] = plan
            elif "v_expire_before - j.updated_at" in text:
                found["expire"] = plan
    assert set(found) == {"purge", "expire"}, notes
    return found


def buffers(plan: str) -> int:
    first = re.search(r"Buffers: shared(?: hit=(\d+))?(?: read=(\d+))?", plan)
    assert first is not None, plan
    return sum(int(n or 0) for n in first.groups())


@pytest.mark.parametrize("behind", [False, True], ids=["kept-up", "behind"])
def test_the_function_walks_the_created_at_index_never_the_table(
    database_url: str, owner: Owner, behind: bool
) -> None:
    """enable_seqscan left on, the table analyzed; each plan settled (plpgsql plans a statement
    afresh for its first five runs). Kept up: the purge's query reads a few pages; the expiry's
    has no usable index (README, Retention) and reads the rows created before its horizon.
    Behind (two days of rows left unpurged, quiet rows left unexpired): both stop at the first."""
    span = (32 if behind else 30) * DAY
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("alter table public.job_status disable trigger user")  # no broadcast of fixtures
        conn.execute(
            _FILL,
            {"tenant": owner.tenant_id, "user": owner.user_id, "span": span, "rows": ROWS, "behind": behind},
        )
        conn.execute("alter table public.job_status enable trigger user")
        conn.execute("vacuum analyze public.job_status")
        for _ in range(8):
            value = conn.execute("select public.job_status_retention_lag()").fetchone()[0]  # type: ignore[index]
        found = plans(conn)
    for plan in found.values():
        assert "Seq Scan" not in plan, plan
        assert "Index Scan using job_status_created_at_idx on job_status" in plan, plan
    if behind:
        # the oldest quiet row, created 32 days ago, last written 5 minutes later: 25 days past expiry
        assert value == pytest.approx(25 * DAY, abs=SLACK + 3600)
        assert buffers(found["purge"]) < 10 and buffers(found["expire"]) < 10, found
    else:
        assert value == 0.0
        assert buffers(found["purge"]) < 10, found["purge"]
        assert "Rows Removed by Filter" in found["expire"], found["expire"]


# -- the fleet's gauge -------------------------------------------------------------------------


class Lagging:
    """A real store, its retention lag reads counted; ``down``: they fail as an outage would."""

    def __init__(self, store: Any, *, down: bool = False) -> None:
        self.store = store
        self.down = down
        self.lag_reads = 0

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        return list(self.store.apply(events))

    def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
        return list(self.store.cancel_requests(since, after_job_id, limit))

    def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
        return list(self.store.stamp_cancels(requests))

    def retention_lag(self) -> float:
        self.lag_reads += 1
        if self.down:
            raise TransientStoreError("the database is down", reason="connection")
        return float(self.store.retention_lag())

    def close(self) -> None:
        self.store.close()


def fresh_metrics() -> SyncMetrics:
    from prometheus_client import CollectorRegistry

    return SyncMetrics(CollectorRegistry())


def test_the_lease_holder_sets_the_gauge_once_a_minute_for_the_fleet(
    database_url: str, client: redis.Redis, store: StatusStore, owner: Owner
) -> None:
    done = write(store, owner, Status.COMPLETED)
    finished_overdue(database_url, done, days=1)
    lagging = Lagging(store)
    flags = RedisCancelFlags(client, refresh=0)
    first, second = CancelPoll(flags, interval=0.01), CancelPoll(flags, interval=0.01)
    one, other = fresh_metrics(), fresh_metrics()

    result = first.maybe_poll(lambda: lagging, one)
    assert result is not None and result.polled and result.lag == pytest.approx(DAY, abs=SLACK)
    assert one.retention_lag._value.get() == pytest.approx(DAY, abs=SLACK)
    assert one.retention_lag_reads.labels("read")._value.get() == 1
    assert one.retention_lag_read_at._value.get() == pytest.approx(time.time(), abs=SLACK)
    assert client.pttl("job_status:cancel_poll:retention_lag") > 50_000

    # the other process's turns at the cancel poll come, the lag's does not for a minute
    turns = []
    while len(turns) < 3:
        turn = second.maybe_poll(lambda: lagging, other)
        if turn is not None and turn.polled:
            turns.append(turn)
    assert [t.lag for t in turns] == [None] * 3 and lagging.lag_reads == 1
    assert other.retention_lag_reads.labels("read")._value.get() == 0

    # its lease gone (a minute later), the next lease holder reads it: 0 after retention ran
    retention.run(database_url)
    client.delete("job_status:cancel_poll:retention_lag")
    # a turn that finds the cancel lease still held by the first poller reads nothing: wait for one of its own
    result = wait_for(
        lambda: (turn := second.maybe_poll(lambda: lagging, other)) and turn.polled and turn,
        timeout=5,
        interval=0.01,
    )
    assert result.lag == 0.0 and other.retention_lag._value.get() == 0.0


def test_a_failing_read_is_counted_and_changes_nothing_else(
    database_url: str, client: redis.Redis, store: StatusStore, owner: Owner, caplog: pytest.LogCaptureFixture
) -> None:
    """The lag read fails (the cancel poll does not): counted and logged once, the cancel poll's
    turn counted polled, not failed; a worker's writer with that store writes on."""
    lagging = Lagging(store, down=True)
    flags = RedisCancelFlags(client, refresh=0)
    counted = fresh_metrics()
    result = CancelPoll(flags, interval=0.01).maybe_poll(lambda: lagging, counted)
    assert result is not None and result.polled and result.lag is None
    assert counted.retention_lag_reads.labels("failed")._value.get() == 1
    assert counted.cancel_polls.labels("polled")._value.get() == 1
    assert counted.cancel_polls.labels("failed")._value.get() == 0
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "retention_lag_failed"]
    assert "the database is down" in record.getMessage() and not record.exc_info

    client.delete("job_status:cancel_poll:retention_lag")
    failed_before = get_metrics().retention_lag_reads.labels("failed")._value.get()
    writer = StatusWriter(lambda: lagging, flush_interval=0.01, cancel_poll=CancelPoll(flags, interval=0.01))
    try:
        writer.start()  # what a worker does at boot
        wait_for(
            lambda: get_metrics().retention_lag_reads.labels("failed")._value.get() > failed_before,
            timeout=10,
            interval=0.02,
            what="the writer's failed read",
        )
        job_id = f"lag-{uuid.uuid4()}"
        writer.submit(StatusEvent(job_id, Status.PENDING, 0, owner, "a", "q", time.time()))
        assert writer.flush(timeout=10)
        assert job_id in fetch_rows(database_url, [job_id])
    finally:
        writer.close()


def test_the_lag_interval_is_at_least_a_minute_or_off(
    database_url: str, client: redis.Redis, store: StatusStore
) -> None:
    flags = RedisCancelFlags(client, refresh=0)
    with pytest.raises(ValueError, match="at least 60"):
        CancelPoll(flags, lag_interval=5)
    lagging = Lagging(store)
    result = CancelPoll(flags, interval=0.01, lag_interval=0).maybe_poll(lambda: lagging, fresh_metrics())
    assert result is not None and result.polled and result.lag is None and lagging.lag_reads == 0
    assert client.exists("job_status:cancel_poll:retention_lag") == 0


@pytest.mark.parametrize(("interval", "expected"), [("0", 0.0), ("600", 600.0), (None, 300.0)])
def test_a_worker_s_app_reads_it_at_the_interval_its_settings_say(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, interval: str | None, expected: float
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    if interval is not None:
        monkeypatch.setenv("COURSEGEN_RETENTION_LAG_INTERVAL", interval)
    app = build_app(load_settings())
    try:
        assert app.status is not None and app.status.writer.cancel_poll is not None
        assert app.status.writer.cancel_poll.lag_interval == expected
    finally:
        app.close()


def test_a_lag_interval_under_a_minute_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSEGEN_RETENTION_LAG_INTERVAL", "30")
    refused = r"COURSEGEN_RETENTION_LAG_INTERVAL: 0 \(off\) or at least 60"
    with pytest.raises(ConfigurationError, match=refused):
        load_settings()
