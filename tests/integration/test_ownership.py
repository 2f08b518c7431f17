"""Each user reads and cancels only their own jobs: the SQL functions that check the owner, the
producer API acting for a user on both readers (psycopg; Supabase's REST API through the
PostgREST stand-in and the real supabase client), ``public.cancel_job`` for signed-in users, and
the operator's view that sees everything.

Another owner's job must be indistinguishable from an unknown one: the same exception, the same
message and the same calls to the database (recorded here), so that nothing, not even timing,
tells a caller that the job exists.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import redis
from postgrest.exceptions import APIError
from psycopg import sql

from coursegen.jobs import JobNotFound, Jobs, UserJobs
from coursegen.readers import PostgresReader, StatusReader, SupabaseReader
from coursegen.settings import Settings
from middleware import RedisCancelFlags
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner, fetch_rows
from tests.support.postgrest import (
    STAND_IN_URL,
    PostgrestStandIn,
    anon_key,
    service_key,
    supabase_client,
    user_token,
)

pytestmark = [pytest.mark.integration]

READERS = ("postgres", "supabase")


@dataclass
class World:
    """alice and bob in one organization, carol in another; each has a running and a finished job."""

    url: str
    owners: dict[str, Owner]
    live: dict[str, str]
    done: dict[str, str]


@pytest.fixture
def world(database_url: str) -> World:
    alice = create_owner(database_url, tenant_name="Acme")
    bob = Owner(alice.tenant_id, create_owner(database_url).user_id)
    carol = create_owner(database_url, tenant_name="Globex")
    owners = {"alice": alice, "bob": bob, "carol": carol}
    live = {name: f"{name}-live-{uuid.uuid4()}" for name in owners}
    done = {name: f"{name}-done-{uuid.uuid4()}" for name in owners}
    events = []
    for name, owner in owners.items():
        events.append(
            StatusEvent(live[name], Status.ACTIVE, 1, owner, "generate_course", "q", 1000.0, progress=10)
        )
        events.append(StatusEvent(done[name], Status.COMPLETED, 1, owner, "generate_course", "q", 1000.0))
    store = PostgresStatusStore(database_url)
    try:
        assert {o.outcome for o in store.apply(events)} == {"applied"}
    finally:
        store.close()
    return World(database_url, owners, live, done)


# -- the SQL functions ------------------------------------------------------------------------


@pytest.mark.sql
def test_the_owner_scoped_functions_answer_for_the_owner_only(world: World) -> None:
    alice, bob, carol = (world.owners[n] for n in ("alice", "bob", "carol"))
    job = world.live["alice"]

    def status(owner: Owner, job_id: str) -> list[str]:
        with psycopg.connect(world.url) as conn:
            rows = conn.execute(
                "select job_id from public.user_job_status(%s, %s, %s)",
                (owner.user_id, owner.tenant_id, job_id),
            ).fetchall()
        return [r[0] for r in rows]

    def listed(owner: Owner) -> set[str]:
        with psycopg.connect(world.url) as conn:
            rows = conn.execute(
                "select job_id from public.user_job_list(%s, %s)", (owner.user_id, owner.tenant_id)
            ).fetchall()
        return {r[0] for r in rows}

    def cancel(owner: Owner, job_id: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(world.url, autocommit=True) as conn:
            return conn.execute(
                "select status::text, stamped from public.user_job_cancel(%s, %s, %s)",
                (owner.user_id, owner.tenant_id, job_id),
            ).fetchall()

    assert status(alice, job) == [job]
    assert status(bob, job) == status(carol, job) == status(bob, "unknown") == []
    assert status(Owner(carol.tenant_id, alice.user_id), job) == []  # alice, but in the wrong tenant
    assert listed(alice) == {world.live["alice"], world.done["alice"]}
    assert listed(bob) == {world.live["bob"], world.done["bob"]}
    assert listed(Owner(carol.tenant_id, alice.user_id)) == set()

    assert cancel(bob, job) == cancel(carol, job) == cancel(bob, "unknown") == []
    assert fetch_rows(world.url, [job])[job]["cancel_requested_at"] is None
    assert cancel(alice, job) == [("active", True)]
    assert cancel(alice, world.done["alice"]) == [("completed", False)]


# -- the producer API, on both readers ----------------------------------------------------------


class RecordingReader:
    """Forwards to a real reader and records which of its methods were called."""

    def __init__(self, reader: StatusReader) -> None:
        self.reader = reader
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.reader, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


@pytest.fixture(params=READERS)
def jobs(
    request: pytest.FixtureRequest, world: World, redis_url: str
) -> Iterator[tuple[Jobs, RecordingReader]]:
    stand_in: PostgrestStandIn | None = None
    http: httpx.Client | None = None
    real: StatusReader
    if request.param == "postgres":
        real = PostgresReader(world.url)
    else:
        stand_in = PostgrestStandIn(world.url)
        http = httpx.Client(transport=stand_in)
        real = SupabaseReader(STAND_IN_URL, service_key(), http_client=http)
    recording = RecordingReader(real)
    client = Jobs(Settings(redis_url=redis_url), reader=recording)  # type: ignore[arg-type]
    yield client, recording
    client.close()
    if http is not None and stand_in is not None:
        http.close()
        stand_in.close()


def refusal(call: Callable[[], Any], reader: RecordingReader) -> tuple[str, list[str]]:
    """What a caller learns from a refused call: the exception's message, and which database
    calls were made to produce it."""
    reader.calls.clear()
    with pytest.raises(JobNotFound) as caught:
        call()
    assert type(caught.value) is JobNotFound
    return str(caught.value), list(reader.calls)


def test_a_user_reads_waits_for_and_cancels_only_their_own_jobs(
    world: World, jobs: tuple[Jobs, RecordingReader], redis_url: str
) -> None:
    client, reader = jobs
    views = {name: client.as_user(owner.user_id, owner.tenant_id) for name, owner in world.owners.items()}
    alice, bob, carol = views["alice"], views["bob"], views["carol"]
    job = world.live["alice"]
    flags = RedisCancelFlags(redis.Redis.from_url(redis_url), refresh=0)

    assert alice.status(job).status is Status.ACTIVE
    assert alice.wait(world.done["alice"], timeout=5).status is Status.COMPLETED
    wrong_tenant = client.as_user(world.owners["alice"].user_id, world.owners["carol"].tenant_id)
    for stranger in (bob, carol, wrong_tenant):
        for call in (
            lambda v: v.status,
            lambda v: lambda j: v.wait(j, timeout=5, missing_grace=0.1),
            lambda v: v.cancel,
        ):
            theirs = refusal(lambda s=stranger, c=call: c(s)(job), reader)
            unknown = refusal(lambda s=stranger, c=call: c(s)("no-such-job"), reader)
            assert theirs == (f"no job {job}", unknown[1])  # same message, same database calls
            assert unknown[0] == "no job no-such-job"
    assert fetch_rows(world.url, [job])[job]["cancel_requested_at"] is None
    assert not flags.is_requested(job)

    assert {j.job_id for j in bob.list()} == {world.live["bob"], world.done["bob"]}
    assert {j.job_id for j in carol.list()} == {world.live["carol"], world.done["carol"]}
    assert wrong_tenant.list() == []
    assert [j.job_id for j in alice.list(status="completed")] == [world.done["alice"]]

    outcome = alice.cancel(job)
    assert (outcome.requested, outcome.status) == (True, Status.ACTIVE)
    assert flags.is_requested(job)
    flags.client.close()


def test_the_operator_sees_and_cancels_every_tenants_jobs(
    world: World, jobs: tuple[Jobs, RecordingReader]
) -> None:
    client, reader = jobs
    operator = client.operator()
    assert operator.status(world.live["carol"]).user_id == world.owners["carol"].user_id
    every = {j.job_id for j in operator.list()}
    assert every == set(world.live.values()) | set(world.done.values())
    assert {j.job_id for j in operator.list(tenant_id=world.owners["carol"].tenant_id)} == {
        world.live["carol"],
        world.done["carol"],
    }
    assert operator.cancel(world.live["bob"]).requested
    with pytest.raises(JobNotFound, match="no job no-such-job"):
        operator.status("no-such-job")
    # the operator reads the table; a user's view never does
    assert set(reader.calls) == {"get", "list", "request_cancel"}


def test_acting_for_a_user_needs_uuids(world: World, jobs: tuple[Jobs, RecordingReader]) -> None:
    client, reader = jobs
    with pytest.raises(ValueError, match="user_id must be a UUID"):
        client.as_user("alice", world.owners["alice"].tenant_id)
    with pytest.raises(ValueError, match="tenant_id must be a UUID"):
        client.as_user(world.owners["alice"].user_id, "acme")
    view = client.as_user(uuid.UUID(world.owners["alice"].user_id), world.owners["alice"].tenant_id.upper())
    assert isinstance(view, UserJobs) and view.owner == world.owners["alice"]
    assert reader.calls == []


# -- public.cancel_job --------------------------------------------------------------------------


def cancel_job_as(url: str, role: str, claims: dict[str, Any] | None, job_id: str) -> Any:
    """``select public.cancel_job(job_id)`` as PostgREST runs it for ``role``."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"role": role, **(claims or {})}),),
        )
        return conn.execute("select public.cancel_job(%s)::text", (job_id,)).fetchone()[0]  # type: ignore[index]


def stamped(url: str, job_id: str) -> bool:
    return fetch_rows(url, [job_id])[job_id]["cancel_requested_at"] is not None


@pytest.mark.sql
def test_cancel_job_in_sql_as_a_user_and_as_the_service_role(world: World) -> None:
    alice = {"sub": world.owners["alice"].user_id}
    # another user's job and an unknown one: the same answer, nothing stamped
    assert cancel_job_as(world.url, "authenticated", alice, world.live["bob"]) is None
    assert cancel_job_as(world.url, "authenticated", alice, world.live["carol"]) is None
    assert cancel_job_as(world.url, "authenticated", alice, "no-such-job") is None
    assert cancel_job_as(world.url, "authenticated", None, world.live["alice"]) is None  # no subject
    assert not stamped(world.url, world.live["bob"]) and not stamped(world.url, world.live["alice"])
    # a finished job: its status, left alone
    assert cancel_job_as(world.url, "authenticated", alice, world.done["alice"]) == "completed"
    assert not stamped(world.url, world.done["alice"])
    # their own live job: its status, stamped once
    assert cancel_job_as(world.url, "authenticated", alice, world.live["alice"]) == "active"
    first = fetch_rows(world.url, [world.live["alice"]])[world.live["alice"]]["cancel_requested_at"]
    assert cancel_job_as(world.url, "authenticated", alice, world.live["alice"]) == "active"
    assert fetch_rows(world.url, [world.live["alice"]])[world.live["alice"]]["cancel_requested_at"] == first
    # the service role: any job; a claim saying otherwise changes nothing
    assert cancel_job_as(world.url, "service_role", None, world.live["carol"]) == "active"
    assert stamped(world.url, world.live["carol"])
    assert cancel_job_as(world.url, "service_role", None, "no-such-job") is None
    # the anonymous role may not call it; nor may a user pretend to be the service role
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        cancel_job_as(world.url, "anon", None, world.live["bob"])
    assert (
        cancel_job_as(world.url, "authenticated", {**alice, "role": "service_role"}, world.live["bob"])
        is None
    )
    assert not stamped(world.url, world.live["bob"])


@pytest.fixture
def http(world: World) -> Iterator[tuple[httpx.Client, PostgrestStandIn]]:
    stand_in = PostgrestStandIn(world.url)
    with httpx.Client(transport=stand_in) as client:
        yield client, stand_in
    stand_in.close()


def test_cancel_job_through_supabase_js_style_rpc(
    world: World, http: tuple[httpx.Client, PostgrestStandIn]
) -> None:
    """What the README's browser snippet does: ``supabase.rpc('cancel_job', { job_id })`` with
    the anon key and the signed-in user's session."""
    client, stand_in = http
    alice = supabase_client(client, anon_key(), access_token=user_token(world.owners["alice"].user_id))

    def cancel(caller: Any, job_id: str) -> Any:
        return caller.rpc("cancel_job", {"job_id": job_id}).execute().data

    assert cancel(alice, world.live["bob"]) is None  # another user's
    assert cancel(alice, world.live["carol"]) is None  # another tenant's
    assert cancel(alice, "no-such-job") is None  # unknown
    assert cancel(alice, world.done["alice"]) == "completed"  # finished: left alone
    assert cancel(alice, world.live["alice"]) == "active"  # their own
    rows = fetch_rows(world.url)
    assert [job for job, row in rows.items() if row["cancel_requested_at"] is not None] == [
        world.live["alice"]
    ]
    assert {(c.path, c.role, c.status) for c in stand_in.log} == {
        ("/rest/v1/rpc/cancel_job", "authenticated", 200)
    }

    anon = supabase_client(client, anon_key())
    with pytest.raises(APIError) as refused:
        cancel(anon, world.live["bob"])
    assert (refused.value.code, stand_in.log[-1].status) == ("42501", 401)

    service = supabase_client(client, service_key())
    assert cancel(service, world.live["bob"]) == "active"
    assert cancel(service, "no-such-job") is None
    assert stamped(world.url, world.live["bob"])
