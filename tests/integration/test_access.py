"""Who may do what: the anon key, a signed-in user and the service role, both in SQL (``set role``
plus ``request.jwt.claims``, as PostgREST does) and over HTTP with real JWTs through the
PostgREST stand-in and the real supabase client.

The local bootstrap grants everything in ``public`` to the API roles by default, as Supabase
does, so these tests prove that the migrations revoke what they do not mean to expose.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from postgrest.exceptions import APIError
from psycopg import sql

from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import REQUIRED_PARAMS, WRITE_PARAMS
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner
from tests.support.postgrest import (
    STAND_IN_URL,
    PostgrestStandIn,
    anon_key,
    mint_jwt,
    service_key,
    supabase_client,
    user_token,
)

pytestmark = [pytest.mark.integration]

EVENTS = "[]"


@dataclass
class World:
    """Three users: alice and bob in one organization, carol in another; one job each."""

    url: str
    alice: Owner
    bob: Owner
    carol: Owner
    jobs: dict[str, str]  # user name -> job id


@pytest.fixture
def world(database_url: str) -> World:
    alice = create_owner(database_url, tenant_name="Acme")
    with psycopg.connect(database_url, autocommit=True) as conn:
        bob_id = uuid.uuid4()
        conn.execute("insert into auth.users (id, email) values (%s, 'bob@example.test')", (bob_id,))
    bob = Owner(alice.tenant_id, str(bob_id))
    carol = create_owner(database_url, tenant_name="Globex")
    jobs = {name: f"{name}-{uuid.uuid4()}" for name in ("alice", "bob", "carol")}
    store = PostgresStatusStore(database_url)
    try:
        outcomes = store.apply(
            [
                StatusEvent(jobs[name], Status.ACTIVE, 1, owner, "generate_course", "q", 1000.0, progress=10)
                for name, owner in (("alice", alice), ("bob", bob), ("carol", carol))
            ]
        )
    finally:
        store.close()
    assert {o.outcome for o in outcomes} == {"applied"}
    return World(database_url, alice, bob, carol, jobs)


# -- in SQL ---------------------------------------------------------------------------------


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


def become(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None = None) -> None:
    """What PostgREST does at the start of each request's transaction."""
    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
    conn.execute(
        "select set_config('request.jwt.claims', %s, true)", (json.dumps({"role": role, **(claims or {})}),)
    )


def visible_jobs(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None = None) -> set[str]:
    with conn.transaction():
        become(conn, role, claims)
        rows = conn.execute("select job_id from public.job_status").fetchall()
    return {row[0] for row in rows}


def refused(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None, statement: str) -> bool:
    """True when ``statement`` fails with insufficient_privilege as ``role``."""
    try:
        with conn.transaction():
            become(conn, role, claims)
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


WRITES = [
    "select * from public.job_status_apply('" + EVENTS + "'::jsonb)",
    "select public.job_status_write('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
    "select public.job_status_purge(interval '1 day')",
    "select public.job_status_expire(interval '1 day')",
    "select public.job_status_purge_tombstones(interval '1 day')",
    "select public.job_status_retention_run()",
    "select public.job_status_retention_lag()",
    "select * from public.job_status_retention",
    "update public.job_status_retention set batch_size = 10",
    "select * from public.job_status_tombstones",
    "insert into public.job_status_tombstones (job_id) values ('forged')",
    "insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status, event_at) "
    "select 'forged', tenant_id, user_id, 'a', 'q', 'completed', now() from public.job_status limit 1",
    "update public.job_status set status = 'completed'",
    "delete from public.job_status",
    "insert into public.organizations (name) values ('forged')",
    "select * from public.organizations",
    # producers acting for a user, and the fleet's cancel poller: service_role only
    "select * from public.user_job_status(gen_random_uuid(), gen_random_uuid(), 'x')",
    "select * from public.user_job_list(gen_random_uuid(), gen_random_uuid())",
    "select * from public.user_job_cancel(gen_random_uuid(), gen_random_uuid(), 'x')",
    "select * from public.job_status_request_cancel('x')",
    "select * from public.job_status_cancel_requests('-infinity')",
    "select * from public.job_status_stamp_cancels(array['x'], array[now()])",
]


@pytest.mark.sql
@pytest.mark.parametrize("statement", WRITES)
def test_api_roles_cannot_write_nor_call_the_status_functions(
    world: World, conn: psycopg.Connection[Any], statement: str
) -> None:
    assert refused(conn, "anon", None, statement)
    assert refused(conn, "authenticated", {"sub": world.alice.user_id}, statement)
    assert not refused(conn, "service_role", None, statement)


@pytest.mark.sql
def test_anon_reads_nothing(world: World, conn: psycopg.Connection[Any]) -> None:
    assert refused(conn, "anon", None, "select job_id from public.job_status")


@pytest.mark.sql
def test_a_user_reads_exactly_their_own_rows(world: World, conn: psycopg.Connection[Any]) -> None:
    for name, owner in (("alice", world.alice), ("bob", world.bob), ("carol", world.carol)):
        claims = {"sub": owner.user_id, "aud": "authenticated"}
        assert visible_jobs(conn, "authenticated", claims) == {world.jobs[name]}, name
    # signed in without a subject, or as a user who owns nothing: no rows at all
    assert visible_jobs(conn, "authenticated") == set()
    assert visible_jobs(conn, "authenticated", {"sub": str(uuid.uuid4())}) == set()
    # the service role bypasses RLS
    assert visible_jobs(conn, "service_role") == set(world.jobs.values())


@pytest.mark.sql
def test_the_service_role_writes_through_the_status_function(
    world: World, conn: psycopg.Connection[Any]
) -> None:
    event = StatusEvent(world.jobs["alice"], Status.COMPLETED, 1, world.alice, "generate_course", "q", 2000.0)
    with conn.transaction():
        become(conn, "service_role")
        rows = conn.execute(
            "select outcome from public.job_status_apply(%s::jsonb)", (f"[{event.to_json()}]",)
        ).fetchall()
    assert rows == [("applied",)]
    assert conn.execute(
        "select status::text from public.job_status where job_id = %s", (world.jobs["alice"],)
    ).fetchone() == ("completed",)


@pytest.mark.sql
def test_row_level_security_is_on_for_every_table_we_create(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        tables = dict(
            conn.execute(
                "select c.relname, c.relrowsecurity from pg_class c "
                "where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')"
            ).fetchall()
        )
    assert {"job_status", "organizations", "job_status_retention", "job_status_tombstones"} <= set(tables)
    assert [name for name, rls in tables.items() if not rls] == []


@pytest.mark.sql
def test_every_function_we_create_has_a_fixed_search_path(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        functions = conn.execute(
            "select p.oid::regprocedure::text, coalesce(p.proconfig, '{}'), p.prosecdef from pg_proc p "
            "where p.pronamespace = 'public'::regnamespace "
            "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')"
        ).fetchall()
    names = {name.split("(")[0] for name, _, _ in functions}
    assert names >= {
        "job_status_apply", "job_status_write", "job_status_purge", "job_status_purge_tombstones",
        "job_status_expire", "job_status_retention_run",
    }  # fmt: skip
    # the functions that held a copy of the transition rule are gone: job_status_write holds it
    assert not names & {"job_status_upsert", "job_status_update"}
    assert [(name, config) for name, config, _ in functions if 'search_path=""' not in config] == []
    # security invoker everywhere, but for the function that must read auth.users and the one
    # that lets a signed-in user stamp a row of theirs they may not write
    assert sorted(name for name, _, definer in functions if definer) == [
        "cancel_job(text)",
        "job_owner_problem(uuid,uuid)",
    ]


GRANTS_TO_API_ROLES = """
with objects as (
  select 'table' as kind, c.oid::regclass::text as name,
         coalesce(c.relacl,
                  acldefault(case c.relkind when 'S' then 's' else 'r' end::"char", c.relowner)) as acl
  from pg_class c
  where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
  union all
  select 'column', c.oid::regclass::text || '.' || a.attname, a.attacl
  from pg_attribute a join pg_class c on c.oid = a.attrelid
  where c.relnamespace = 'public'::regnamespace and a.attnum > 0 and a.attacl is not null
  union all
  select 'function', p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner))
  from pg_proc p where p.pronamespace = 'public'::regnamespace
  union all
  select 'type', t.oid::regtype::text, coalesce(t.typacl, acldefault('T', t.typowner))
  from pg_type t
  where t.typnamespace = 'public'::regnamespace and t.typrelid = 0 and t.typcategory <> 'A'
)
select o.kind, o.name,
       case g.grantee when 0 then 'PUBLIC' else pg_get_userbyid(g.grantee) end as grantee,
       g.privilege_type
from objects o, aclexplode(o.acl) g
where g.grantee = 0 or pg_get_userbyid(g.grantee) in ('anon', 'authenticated')
"""


@pytest.mark.sql
def test_no_grant_to_anon_authenticated_or_public_beyond_the_expected(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        grants = set(conn.execute(GRANTS_TO_API_ROLES).fetchall())
    assert grants == {
        # signed-in users read job_status (RLS narrows it to their own rows)
        ("table", "job_status", "authenticated", "SELECT"),
        # and cancel their own jobs (the function checks auth.uid())
        ("function", "cancel_job(text)", "authenticated", "EXECUTE"),
        # PostgreSQL's default for types; using the enum grants no access to any row
        ("type", "job_state", "PUBLIC", "USAGE"),
    }


@pytest.mark.sql
def test_job_status_is_published_to_realtime(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        published = conn.execute(
            "select tablename from pg_publication_tables "
            "where pubname = 'supabase_realtime' and schemaname = 'public'"
        ).fetchall()
    assert ("job_status",) in published


# -- over HTTP, with real JWTs ---------------------------------------------------------------


@pytest.fixture
def stand_in(world: World) -> Iterator[PostgrestStandIn]:
    transport = PostgrestStandIn(world.url)
    yield transport
    transport.close()


@pytest.fixture
def http(stand_in: PostgrestStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(transport=stand_in) as client:
        yield client


def api_error(call: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


def test_the_anon_key_can_neither_call_the_status_function_nor_write(
    world: World, stand_in: PostgrestStandIn, http: httpx.Client
) -> None:
    anon = supabase_client(http, anon_key())
    event = json.loads(StatusEvent("forged", Status.COMPLETED, 1, world.alice, "a", "q", 1.0).to_json())

    arrays = {name: [event[attribute]] for name, attribute in WRITE_PARAMS[:REQUIRED_PARAMS]}
    assert api_error(lambda: anon.rpc("job_status_write", arrays).execute()).code == "42501"
    assert api_error(lambda: anon.rpc("job_status_apply", {"events": [event]}).execute()).code == "42501"
    assert api_error(lambda: anon.table("job_status").insert({"job_id": "forged"}).execute()).code == "42501"
    assert api_error(lambda: anon.table("job_status").select("*").execute()).code == "42501"
    assert [call.status for call in stand_in.log] == [401, 401, 401, 401]
    assert {call.role for call in stand_in.log} == {"anon"}


def test_a_user_reads_exactly_their_own_rows_over_http(
    world: World, stand_in: PostgrestStandIn, http: httpx.Client
) -> None:
    alice = supabase_client(http, anon_key(), access_token=user_token(world.alice.user_id))

    everything = alice.table("job_status").select("*").execute().data
    assert [row["job_id"] for row in everything] == [world.jobs["alice"]]
    assert alice.table("job_status").select("job_id").eq("user_id", world.bob.user_id).execute().data == []
    assert (
        alice.table("job_status").select("job_id").eq("tenant_id", world.carol.tenant_id).execute().data == []
    )
    own = alice.table("job_status").select("status,progress").eq("job_id", world.jobs["alice"]).execute()
    assert own.data == [{"status": "active", "progress": 10}]

    error = api_error(
        lambda: (
            alice.table("job_status").update({"status": "failed"}).eq("job_id", world.jobs["alice"]).execute()
        )
    )
    assert error.code == "42501"
    assert stand_in.log[-1].status == 403, "a signed-in user is refused with 403, not 401"
    assert {call.role for call in stand_in.log} == {"authenticated"}


def test_the_service_role_writes_and_reads_everything_over_http(world: World, http: httpx.Client) -> None:
    service = supabase_client(http, service_key())
    event = StatusEvent(world.jobs["bob"], Status.COMPLETED, 1, world.bob, "generate_course", "q", 3000.0)
    answer = service.rpc("job_status_apply", {"events": [json.loads(event.to_json())]}).execute()
    assert answer.data == [{"idx": 1, "job_id": world.jobs["bob"], "outcome": "applied", "reason": None}]
    rows = service.table("job_status").select("job_id,status").execute().data
    assert {row["job_id"]: row["status"] for row in rows} == {
        world.jobs["alice"]: "active",
        world.jobs["bob"]: "completed",
        world.jobs["carol"]: "active",
    }


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (lambda: mint_jwt("service_role", expires_in=-60), "PGRST303"),
        (
            lambda: mint_jwt("service_role", secret="not-the-project-secret-but-just-as-long-as-it"),
            "PGRST301",
        ),
        (lambda: "not-a-jwt", "PGRST301"),
    ],
    ids=["expired", "wrong-secret", "garbage"],
)
def test_a_bad_jwt_is_refused_with_401(world: World, http: httpx.Client, token: Any, code: str) -> None:
    client = supabase_client(http, token())
    error = api_error(lambda: client.rpc("job_status_apply", {"events": []}).execute())
    assert error.code == code
    raw = http.post(
        f"{STAND_IN_URL}/rest/v1/rpc/job_status_apply", json={"events": []}, headers={"apikey": token()}
    )
    assert raw.status_code == 401
    assert raw.headers["www-authenticate"].startswith("Bearer")


def test_a_request_without_any_key_is_refused(world: World, http: httpx.Client) -> None:
    raw = http.get(f"{STAND_IN_URL}/rest/v1/job_status", params={"select": "*"})
    assert raw.status_code == 401
    assert raw.json()["message"] == "No API key found in request"
