"""Cancellation and payload validation, below the CLI: the SQL function that stamps a request,
the producer API (coursegen.jobs) on PostgreSQL and through Supabase's REST API, and the worker
side on a Dramatiq StubBroker with the real flags on real Redis (skip when queued, stop at the
next checkpoint, never retried); and a job cancelled while it fails or waits for its retry, on
the testing kit writing real rows (ends cancelled, never runs again)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dramatiq
import dramatiq.broker
import httpx
import psycopg
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, CurrentMessage, Middleware, Retries, TimeLimit, default_middleware
from pydantic import BaseModel

from coursegen.jobs import JobNotFound, Jobs, SupabaseReader, WaitTimeout
from coursegen.settings import Settings
from coursegen.testing import StatusDatabase
from middleware import (
    InvalidPayloadError,
    JobCancelled,
    JobStatusMiddleware,
    PayloadValidation,
    RedisCancelFlags,
    install,
    progress,
)
from middleware.cancel_poll import CancelPoll
from middleware.events import Owner, Status, StatusEvent, active_event
from middleware.stores.base import APPLIED, Outcome, StatusStore
from middleware.testing import RecordingStore, StatusWorker
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.postgrest import STAND_IN_URL, TEST_SECRET_KEY, PostgrestStandIn, service_key

pytestmark = [pytest.mark.integration]


def apply(conninfo: str, *events: StatusEvent) -> None:
    payload = "[" + ",".join(event.to_json() for event in events) + "]"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        outcomes = conn.execute(
            "select outcome from public.job_status_apply(%s::jsonb)", (payload,)
        ).fetchall()
    assert {o for (o,) in outcomes} <= {"applied", "stale"}, outcomes


def event(job_id: str, status: Status, owner: Owner, **fields: Any) -> StatusEvent:
    attempt = 0 if status is Status.PENDING else 1
    return StatusEvent(
        job_id, status, attempt, owner, "generate_course", "course-generation", time.time(), **fields
    )


def request_cancel(conninfo: str, job_id: str, role: str | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if role:
            conn.execute(f"set role {role}")
        return conn.execute(
            "select status::text, cancel_requested_at, stamped from public.job_status_request_cancel(%s)",
            (job_id,),
        ).fetchall()


@pytest.mark.sql
def test_the_sql_function_stamps_a_live_job_once_and_leaves_a_finished_one_alone(database_url: str) -> None:
    owner = create_owner(database_url)
    apply(database_url, event("live", Status.PENDING, owner), event("done", Status.COMPLETED, owner))

    [(status, first, stamped)] = request_cancel(database_url, "live")
    assert (status, stamped) == ("pending", True) and first is not None
    assert request_cancel(database_url, "live") == [("pending", first, False)]  # asked twice: once
    assert request_cancel(database_url, "done") == [("completed", None, False)]
    assert request_cancel(database_url, "nobody") == []
    assert fetch_rows(database_url, ["done"])["done"]["cancel_requested_at"] is None

    # later events of the job never clear the stamp
    apply(database_url, event("live", Status.ACTIVE, owner, progress=30))
    apply(database_url, event("live", Status.CANCELLED, owner))
    row = fetch_rows(database_url, ["live"])["live"]
    assert (row["status"], row["cancel_requested_at"]) == ("cancelled", first)
    assert request_cancel(database_url, "live") == [("cancelled", first, False)]

    # only the service role may call it
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            request_cancel(database_url, "live", role=role)
    assert request_cancel(database_url, "live", role="service_role")[0][0] == "cancelled"


# -- the producer API -------------------------------------------------------------------


@pytest.fixture
def three_jobs(database_url: str) -> tuple[Owner, dict[str, str]]:
    owner = create_owner(database_url)
    ids = {name: f"{name}-{uuid.uuid4()}" for name in ("queued", "running", "done")}
    # one transaction each, so that their updated_at differ
    apply(database_url, event(ids["queued"], Status.PENDING, owner))
    apply(database_url, event(ids["running"], Status.ACTIVE, owner, progress=40, progress_message="lessons"))
    apply(database_url, event(ids["done"], Status.COMPLETED, owner, result={"title": "Tides"}))
    return owner, ids


def test_jobs_api_reads_lists_waits_and_cancels_on_postgres(
    database_url: str, redis_url: str, three_jobs: tuple[Owner, dict[str, str]]
) -> None:
    owner, ids = three_jobs
    client = redis.Redis.from_url(redis_url)
    worker_view = RedisCancelFlags(client, refresh=0)  # what a worker reads
    jobs = Jobs(Settings(redis_url=redis_url, database_url=database_url))
    me = jobs.as_user(owner.user_id, owner.tenant_id)
    try:
        running = me.status(ids["running"])
        assert (running.status, running.progress, running.progress_message) == (Status.ACTIVE, 40, "lessons")
        assert (running.tenant_id, running.user_id, running.finished) == (
            owner.tenant_id,
            owner.user_id,
            False,
        )
        assert me.status(ids["done"]).result == {"title": "Tides"}
        assert me.status(ids["done"]).as_dict()["status"] == "completed"
        with pytest.raises(JobNotFound, match="no job nobody"):
            me.status("nobody")

        listed = me.list()
        assert [j.job_id for j in listed] == [ids["done"], ids["running"], ids["queued"]]  # newest first
        assert [j.job_id for j in me.list(status="completed")] == [ids["done"]]
        assert [j.job_id for j in me.list(limit=1)] == [ids["done"]]
        assert jobs.as_user(uuid.uuid4(), owner.tenant_id).list() == []
        with pytest.raises(ValueError, match="user_id must be a UUID"):
            jobs.as_user("bob", owner.tenant_id)
        with pytest.raises(ValueError, match="tenant_id must be a UUID"):
            jobs.as_user(owner.user_id, "acme")

        assert me.wait(ids["done"], timeout=5).status is Status.COMPLETED
        seen: list[Status] = []
        with pytest.raises(WaitTimeout) as timed_out:
            me.wait(ids["running"], timeout=0.3, interval=0.05, on_change=lambda j: seen.append(j.status))
        assert timed_out.value.last is not None and timed_out.value.last.status is Status.ACTIVE
        assert seen == [Status.ACTIVE]  # reported once: nothing changed
        with pytest.raises(JobNotFound):
            me.wait("nobody", timeout=5, missing_grace=0.2)

        for name in ("queued", "running"):
            outcome = me.cancel(ids[name])
            assert (outcome.requested, outcome.already, outcome.finished) == (True, False, False)
            assert "cancellation requested" in outcome.describe()
            assert me.status(ids[name]).cancel_requested_at == outcome.cancel_requested_at is not None
            assert worker_view.is_requested(ids[name])
        again = me.cancel(ids["running"])
        assert (again.requested, again.already) == (True, True)

        finished = me.cancel(ids["done"])
        assert (finished.requested, finished.finished, finished.status) == (False, True, Status.COMPLETED)
        assert "already finished (completed); nothing to cancel" in finished.describe()
        assert not worker_view.is_requested(ids["done"])
        with pytest.raises(JobNotFound):
            me.cancel("nobody")
        assert not worker_view.is_requested("nobody")
    finally:
        jobs.close()
        client.close()


@pytest.mark.parametrize("key_kind", ["service_role JWT", "secret key"])
def test_jobs_api_through_supabase_rest(
    database_url: str, redis_url: str, three_jobs: tuple[Owner, dict[str, str]], key_kind: str
) -> None:
    """status, list and cancel through the real supabase client and the PostgREST stand-in,
    with the legacy service_role key or a new secret key (the gateway maps it to service_role)."""
    owner, ids = three_jobs
    stand_in = PostgrestStandIn(database_url)
    http = httpx.Client(transport=stand_in)
    key = service_key() if key_kind == "service_role JWT" else TEST_SECRET_KEY
    jobs = Jobs(
        Settings(redis_url=redis_url),
        reader=SupabaseReader(STAND_IN_URL, key, http_client=http),
    )
    me = jobs.as_user(owner.user_id, owner.tenant_id)
    try:
        running = me.status(ids["running"])
        assert (running.status, running.progress, running.user_id) == (Status.ACTIVE, 40, owner.user_id)
        assert running.updated_at is not None and running.updated_at.tzinfo is not None
        with pytest.raises(JobNotFound):
            me.status("nobody")
        listed = me.list()
        assert [j.job_id for j in listed] == [ids["done"], ids["running"], ids["queued"]]  # newest first
        assert [j.job_id for j in me.list(limit=2)] == [ids["done"], ids["running"]]
        assert [j.job_id for j in me.list(status="completed")] == [ids["done"]]
        outcome = me.cancel(ids["running"])
        assert (outcome.requested, outcome.already) == (True, False)
        assert me.cancel(ids["done"]).finished
        with pytest.raises(JobNotFound):
            me.cancel("nobody")
        # acting for a user, only the functions that check the owner are called
        assert {(c.method, c.path, c.role) for c in stand_in.log} == {
            ("POST", "/rest/v1/rpc/user_job_status", "service_role"),
            ("POST", "/rest/v1/rpc/user_job_list", "service_role"),
            ("POST", "/rest/v1/rpc/user_job_cancel", "service_role"),
        }
        stand_in.reset_counts()
        operator = jobs.operator()
        assert operator.status(ids["queued"]).status is Status.PENDING
        assert [j.job_id for j in operator.list(tenant_id=owner.tenant_id, status="completed")] == [
            ids["done"]
        ]
        assert operator.cancel(ids["queued"]).requested
        assert {(c.method, c.path) for c in stand_in.log} == {
            ("GET", "/rest/v1/job_status"),
            ("POST", "/rest/v1/rpc/job_status_request_cancel"),
        }
    finally:
        jobs.close()
        http.close()
        stand_in.close()


# -- the flags ------------------------------------------------------------------------------


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_workers_read_the_flags_once_per_refresh_not_once_per_message(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    producer = RedisCancelFlags(client)
    worker = RedisCancelFlags(client, refresh=30)
    assert worker.is_requested("a") is False  # the first call loads the set
    before = calls(client, "zrangebyscore")
    assert [worker.is_requested(f"job-{i}") for i in range(1000)] == [False] * 1000
    assert calls(client, "zrangebyscore") == before  # answered from the local copy

    assert producer.request("a") < producer.request("b")
    assert worker.is_requested("a") is False  # not refreshed yet: seen at the next refresh
    fresh = RedisCancelFlags(client, refresh=0.05)
    assert fresh.is_requested("a") and fresh.is_requested("b") and not fresh.is_requested("c")
    producer.request("c")
    wait_for(lambda: fresh.is_requested("c"), timeout=5, interval=0.01, what="the next refresh")

    small = RedisCancelFlags(client, key="job_status:test_trim", max_entries=3)
    for i in range(5):
        small.request(f"t{i}")
    assert [m.decode() for m in client.zrange("job_status:test_trim", 0, -1)] == ["t2", "t3", "t4"]
    client.close()


# -- the worker side on a StubBroker ------------------------------------------------------


class Recorder:
    """A StatusStore that records events (the SQL state machine is tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[StatusEvent] = []
        self.lock = threading.Lock()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        with self.lock:
            self.events.extend(events)
        return [Outcome(e.job_id, APPLIED) for e in events]

    def close(self) -> None:
        return None

    def final(self, job_id: str) -> StatusEvent | None:
        with self.lock:
            mine = [e for e in self.events if e.job_id == job_id and e.status.terminal]
        return mine[-1] if mine else None


class Payload(BaseModel):
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    steps: int = 1000


OWNER = {"tenant_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}


@pytest.fixture
def stub(redis_url: str) -> Iterator[tuple[StubBroker, RedisCancelFlags, Recorder]]:
    client = redis.Redis.from_url(redis_url)
    flags = RedisCancelFlags(client, refresh=0.05)
    recorder = Recorder()
    writer = StatusWriter(lambda: recorder, flush_interval=0.01)
    broker = StubBroker(
        middleware=[AgeLimit(), TimeLimit(), Retries(min_backoff=10, max_backoff=20), CurrentMessage()]
    )
    install(broker, JobStatusMiddleware(writer, is_cancel_requested=flags.is_requested))
    previous = dramatiq.broker.global_broker
    dramatiq.set_broker(broker)
    yield broker, flags, recorder
    dramatiq.broker.global_broker = previous
    broker.close()
    writer.close()
    client.close()


def run_worker(broker: StubBroker) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    return worker


def test_a_running_job_stops_at_its_next_checkpoint_and_is_not_retried(
    stub: tuple[StubBroker, RedisCancelFlags, Recorder],
) -> None:
    broker, flags, recorder = stub
    started = threading.Event()
    runs: list[int] = []
    swallowed: list[BaseException] = []

    class Boom(Exception):
        pass

    @dramatiq.actor(track_status=True, payload_model=Payload, throws=(Boom,), max_retries=5)
    def slow(payload: dict[str, Any]) -> None:
        runs.append(1)
        started.set()
        for step in range(payload.get("steps", 1000)):
            try:
                progress.report(step % 100, f"step {step}")
            except Exception as exc:  # an actor's broad except must not swallow a cancellation
                swallowed.append(exc)
            time.sleep(0.01)

    # the middlewares add what must never be retried to the actor's own list
    assert set(slow.options["throws"]) == {Boom, InvalidPayloadError, JobCancelled}
    message = slow.send(dict(OWNER))
    worker = run_worker(broker)
    try:
        assert started.wait(10)
        time.sleep(0.2)  # let it report a few times
        flags.request(message.message_id)
        final = wait_for(lambda: recorder.final(message.message_id), timeout=10, what="the final event")
    finally:
        worker.stop()
    assert final.status is Status.CANCELLED and final.attempt == 1
    assert 0 < (final.progress or 0) < 100  # where it stopped
    assert runs == [1] and swallowed == []
    assert [m.message_id for m in broker.dead_letters] == [message.message_id]  # failed, not retried
    assert not any(e.status is Status.RETRYING for e in recorder.events)
    assert broker.queues[slow.queue_name].qsize() == 0
    assert broker.queues[dramatiq.common.dq_name(slow.queue_name)].qsize() == 0  # no retry waits


def test_a_queued_job_is_skipped_when_picked_up_and_the_actor_never_runs(
    stub: tuple[StubBroker, RedisCancelFlags, Recorder],
) -> None:
    broker, flags, recorder = stub
    runs: list[str] = []

    @dramatiq.actor(track_status=True)
    def never(payload: dict[str, Any]) -> None:
        runs.append("ran")

    cancelled = never.send(dict(OWNER))
    kept = never.send(dict(OWNER))
    flags.request(cancelled.message_id)
    worker = run_worker(broker)
    try:
        final = wait_for(lambda: recorder.final(cancelled.message_id), timeout=10, what="the cancelled job")
        other = wait_for(lambda: recorder.final(kept.message_id), timeout=10, what="the other job")
    finally:
        worker.stop()
    assert (final.status, other.status) == (Status.CANCELLED, Status.COMPLETED)
    assert runs == ["ran"]  # the other one


def test_an_invalid_payload_is_refused_at_send_and_fails_without_retry_at_run(
    stub: tuple[StubBroker, RedisCancelFlags, Recorder],
) -> None:
    broker, _flags, recorder = stub
    runs: list[int] = []

    @dramatiq.actor(track_status=True, payload_model=Payload, max_retries=5)
    def checked(payload: dict[str, Any]) -> None:
        runs.append(1)

    with pytest.raises(InvalidPayloadError) as refused:
        checked.send({**OWNER, "steps": "many"})
    assert isinstance(refused.value, dramatiq.middleware.MiddlewareError)
    assert [(e["loc"], e["type"]) for e in refused.value.errors] == [(("steps",), "int_parsing")]
    assert "invalid payload for checked: 1 validation error: steps:" in str(refused.value)
    assert broker.queues[checked.queue_name].qsize() == 0

    # a message that slipped past (an old producer): enqueued without the check
    validation = next(m for m in broker.middleware if isinstance(m, PayloadValidation))
    broker.middleware.remove(validation)
    slipped = checked.send({**OWNER, "steps": "many"})
    broker.middleware.insert(1, validation)
    worker = run_worker(broker)
    try:
        final = wait_for(lambda: recorder.final(slipped.message_id), timeout=10, what="the slipped job")
    finally:
        worker.stop()
    assert (final.status, final.attempt, final.error_type) == (Status.FAILED, 1, "InvalidPayloadError")
    assert "steps: Input should be a valid integer" in (final.error_message or "")
    assert runs == []
    assert not any(e.status is Status.RETRYING for e in recorder.events)


def test_an_unreadable_flag_never_stops_a_job_nor_its_status(
    stub: tuple[StubBroker, RedisCancelFlags, Recorder],
) -> None:
    broker, _flags, recorder = stub
    status = next(m for m in broker.middleware if isinstance(m, JobStatusMiddleware))

    def unreachable(job_id: str) -> bool:
        raise redis.ConnectionError("Redis went away")

    status.is_cancel_requested = unreachable
    status.cancel_check_interval = status.progress_interval = 0.0
    submitted: list[StatusEvent] = []  # before the writer coalesces active into completed
    submit, started = status.writer.submit, status.writer.started
    status.writer.submit = lambda event: (submitted.append(event), submit(event))[1]  # type: ignore[method-assign]
    status.writer.started = lambda start: (submitted.append(active_event(start)), started(start))[1]  # type: ignore[method-assign]

    @dramatiq.actor(track_status=True)
    def steady(payload: dict[str, Any]) -> str:
        for step in range(5):
            progress.report(step * 20, "working")
        return "done"

    message = steady.send(dict(OWNER))
    worker = run_worker(broker)
    try:
        final = wait_for(lambda: recorder.final(message.message_id), timeout=10, what="the job")
    finally:
        worker.stop()
    assert (final.status, final.result) == (Status.COMPLETED, "done")
    assert [e.progress for e in submitted if e.status is Status.ACTIVE] == [None, 0, 20, 40, 60, 80]


# -- a job between two attempts (retrying), on the testing kit and real rows ---------------------


class RetryGate(Middleware):
    """Holds a delayed message (a retry waiting for its backoff) in the worker's consumer, before
    it can run, until the test opens the gate: the test acts while the job is `retrying`."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.held = threading.Event()

    def close(self) -> None:
        self.opened.clear()

    def before_delay_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        self.held.set()
        self.opened.wait(30)


@pytest.fixture
def retry_gate() -> Iterator[RetryGate]:
    gate = RetryGate()
    yield gate
    gate.opened.set()  # never leave the worker's consumer stuck


@pytest.fixture
def worker_flags(redis_url: str) -> Iterator[RedisCancelFlags]:
    """The flags a worker reads (on real Redis; read at every check)."""
    client = redis.Redis.from_url(redis_url)
    yield RedisCancelFlags(client, refresh=0)
    client.close()


@pytest.fixture
def status_broker_options(retry_gate: RetryGate, worker_flags: RedisCancelFlags) -> dict[str, Any]:
    """The kit's broker with Dramatiq's middleware, retries 1-10 ms apart (the kit's own; note that
    ``Retries(min_backoff=0)`` would mean Dramatiq's 15 s), the gate, and the real flags."""
    return {
        "middleware": [
            *(Retries(min_backoff=1, max_backoff=10) if m is Retries else m() for m in default_middleware),
            retry_gate,
        ],
        "is_cancel_requested": worker_flags.is_requested,
    }


@pytest.fixture
def status_backend(status_database: StatusDatabase) -> StatusStore:
    return status_database.store()


def cancel_as_user(conninfo: str, owner: Owner, job_id: str) -> str | None:
    """``supabase.rpc('cancel_job', { job_id })`` from the owner's browser: the role and claims
    PostgREST sets, in one transaction."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": owner.user_id, "role": "authenticated"}),),
        )
        row = conn.execute("select public.cancel_job(%s)::text", (job_id,)).fetchone()
    return None if row is None else row[0]


def ended_cancelled_without_running_again(
    broker: StubBroker, store: RecordingStore, database: StatusDatabase, job_id: str, runs: list[str]
) -> None:
    assert runs == [job_id], "the actor ran once: attempt 1"
    assert store.statuses(job_id) == [Status.PENDING, Status.ACTIVE, Status.RETRYING, Status.CANCELLED]
    last = store.last(job_id)
    assert (last.status, last.attempt) == (Status.CANCELLED, 2)  # the retry, skipped
    row = database.row(job_id)
    assert row is not None
    assert (row["status"], row["attempt"], row["next_retry_at"]) == ("cancelled", 2, None)
    assert [m.message_id for m in broker.dead_letters] == [job_id]
    assert all(queue.qsize() == 0 for queue in broker.queues.values()), "no attempt left to run"


def test_a_job_cancelled_during_its_attempt_and_failing_ends_cancelled_not_retried(
    status_broker: StubBroker,
    status_worker: StatusWorker,
    status_store: RecordingStore,
    status_database: StatusDatabase,
    worker_flags: RedisCancelFlags,
) -> None:
    """Cancelled while attempt 1 runs, before it reaches a checkpoint, which then fails with
    an error that is retried: the retry is skipped, the job ends `cancelled`."""
    runs: list[str] = []

    @dramatiq.actor(track_status=True, max_retries=5)
    def flaky(payload: dict[str, Any]) -> None:
        job_id = CurrentMessage.get_current_message().message_id  # type: ignore[union-attr]
        runs.append(job_id)
        worker_flags.request(job_id)  # coursegen.jobs.cancel, while it runs
        raise ConnectionError("upstream went away")

    owner = status_database.owner()
    message = flaky.send({"tenant_id": owner.tenant_id, "user_id": owner.user_id})
    status_worker.join()

    ended_cancelled_without_running_again(
        status_broker, status_store, status_database, message.message_id, runs
    )


def test_a_retrying_job_cancelled_from_the_browser_ends_cancelled_without_running_again(
    status_broker: StubBroker,
    status_worker: StatusWorker,
    status_store: RecordingStore,
    status_database: StatusDatabase,
    worker_flags: RedisCancelFlags,
    retry_gate: RetryGate,
) -> None:
    """README, Cancellation: the browser's cancel_job on a `retrying` job (the snippet's
    'cancelling'), copied to the flags by the fleet's poller while the retry waits for its
    backoff: the retry is skipped, the job ends `cancelled`."""
    runs: list[str] = []

    @dramatiq.actor(track_status=True, max_retries=5)
    def flaky(payload: dict[str, Any]) -> None:
        runs.append(CurrentMessage.get_current_message().message_id)  # type: ignore[union-attr]
        raise ConnectionError("upstream went away")

    owner = status_database.owner()
    retry_gate.close()
    try:
        message = flaky.send({"tenant_id": owner.tenant_id, "user_id": owner.user_id})
        job_id = message.message_id
        assert retry_gate.held.wait(30), "the retry reached the worker"
        wait_for(
            lambda: (status_database.row(job_id) or {}).get("status") == "retrying",
            timeout=30,
            what="the row to say retrying",
        )

        assert cancel_as_user(status_database.url, owner, job_id) == "retrying"
        store = status_database.store()
        try:  # the poll's turn in the lease holder: the stamp is flagged for the workers
            assert CancelPoll(worker_flags, interval=0.01).poll(store).copied == 1
        finally:
            store.close()
    finally:
        retry_gate.opened.set()
    status_worker.join()

    ended_cancelled_without_running_again(status_broker, status_store, status_database, job_id, runs)
