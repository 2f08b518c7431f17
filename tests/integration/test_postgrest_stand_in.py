"""The PostgREST stand-in does what its docstring claims, on functions made for the purpose:
named arguments and defaults, result shapes, roles and claims, read-only transactions, the
SQLSTATE -> HTTP status mapping with PostgREST's error body, the schema cache and its reloads,
role settings, db-max-rows, and Supabase's gateway (body limit, new API keys)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support.db import wait_for
from tests.support.postgrest import (
    STAND_IN_URL,
    TEST_PUBLISHABLE_KEY,
    TEST_SECRET_KEY,
    PostgrestStandIn,
    anon_key,
    http_status_for,
    mint_jwt,
    service_key,
    user_token,
)

pytestmark = [pytest.mark.integration]

FUNCTIONS = """
create function public.fail_with(state text, message text default null) returns void
language plpgsql as $$
begin
  raise exception using errcode = state, message = coalesce(message, 'failed with ' || state),
    detail = 'some detail', hint = 'a hint';
end $$;
create function public.add(a integer, b integer default 1) returns integer language sql immutable
  as $$ select a + b $$;
create function public.series(n integer) returns setof integer language sql
  as $$ select pg_catalog.generate_series(1, n) $$;
create function public.squares(n integer) returns table (i integer, sq integer) language sql
  as $$ select g, g * g from pg_catalog.generate_series(1, n) as g $$;
create function public.noop() returns void language sql as $$ select $$;
create function public.whoami() returns jsonb language sql stable as $$
  select pg_catalog.jsonb_build_object(
    'role', current_user, 'sub', auth.uid(), 'method', current_setting('request.method'),
    'read_only', current_setting('transaction_read_only'))
$$;
create table public.ordered (n integer primary key, tag text);
grant select, insert on public.ordered to service_role;
create sequence public.counter;
create function public.stable_writer() returns bigint language sql stable
  as $$ select pg_catalog.nextval('public.counter') $$;
create function public.timeouts() returns jsonb language sql stable as $$
  select pg_catalog.jsonb_build_object(
    'role', current_user, 'statement_timeout', current_setting('statement_timeout'),
    'lock_timeout', current_setting('lock_timeout'))
$$;
create function public.arrays(
  texts text[], floats double precision[], states public.job_state[] default null,
  grid integer[] default null, codes character[] default null
) returns jsonb language sql immutable as $$
  select pg_catalog.jsonb_build_object(
    'texts', texts, 'floats', floats::text[], 'states', states, 'grid', grid,
    'dims', pg_catalog.array_dims(grid), 'codes', codes)
$$;
create function public.gate() returns integer language sql
  as $$ select pg_catalog.pg_advisory_xact_lock_shared(4242); select 1 $$;
revoke all on function public.fail_with(text, text) from public, anon;
"""


@pytest.fixture
def functions(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FUNCTIONS)
    return database_url


@contextmanager
def rest(database_url: str, **options: Any) -> Iterator[tuple[httpx.Client, PostgrestStandIn]]:
    stand_in = PostgrestStandIn(database_url, **options)
    try:
        with httpx.Client(transport=stand_in, base_url=f"{STAND_IN_URL}/rest/v1") as client:
            yield client, stand_in
    finally:
        stand_in.close()


@pytest.fixture
def http(functions: str) -> Iterator[tuple[httpx.Client, PostgrestStandIn]]:
    with rest(functions) as pair:
        yield pair


def call(
    client: httpx.Client, fn: str, args: dict[str, Any], key: str | None = None, **headers: str
) -> httpx.Response:
    key = key or service_key()
    return client.post(
        f"/rpc/{fn}", json=args, headers={"apikey": key, "authorization": f"Bearer {key}", **headers}
    )


def api_key_headers(key: str) -> dict[str, str]:
    return {"apikey": key, "authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("sqlstate", "message", "anonymous", "status"),
    [
        ("08006", "", False, 503),
        ("09000", "", False, 500),
        ("0L000", "", False, 403),
        ("0P000", "", False, 403),
        ("23503", "", False, 409),
        ("23505", "", False, 409),
        ("23514", "", False, 400),  # no row: the default
        ("25006", "", False, 405),
        ("25P02", "", False, 500),
        ("21000", "more than one row returned by a subquery used as an expression", False, 500),
        ("21000", "UPDATE requires a WHERE clause", False, 400),
        ("22023", 'role "nobody" does not exist', False, 401),
        ("22023", "invalid value", False, 400),
        ("22P02", "", False, 400),
        ("28P01", "", False, 403),
        ("2D000", "", False, 500),
        ("38000", "", False, 500),
        ("39000", "", False, 500),
        ("3B000", "", False, 500),
        ("40001", "", False, 500),
        ("40P01", "", False, 500),
        ("53400", "", False, 500),
        ("53300", "", False, 503),
        ("54000", "", False, 500),
        ("54001", "", False, 500),
        ("55P03", "", False, 500),
        ("57P01", "", False, 503),
        ("57014", "", False, 500),
        ("58030", "", False, 500),
        ("F0000", "", False, 500),
        ("HV000", "", False, 500),
        ("P0001", "", False, 400),
        ("P0002", "", False, 500),
        ("XX000", "", False, 500),
        ("42883", "function xmlagg(integer) does not exist", False, 406),
        ("42883", "function nope() does not exist", False, 404),
        ("42P01", "", False, 404),
        ("42P17", "", False, 500),
        ("42501", "", True, 401),
        ("42501", "", False, 403),
        ("PT402", "", False, 402),
        ("PT499", "", False, 499),
        ("PTABC", "", False, 500),
        ("42703", "", False, 400),
    ],
)
def test_every_row_of_postgrests_status_table(
    sqlstate: str, message: str, anonymous: bool, status: int
) -> None:
    """``mapSQLtoHTTP`` in PostgREST 14's Error.hs, a case per row (and the rows whose order
    matters: 53400 before 53, 57P01 before 57, 25006 before 25, P0001 before P0)."""
    assert http_status_for(sqlstate, message, anonymous=anonymous) == status


@pytest.mark.parametrize(
    ("sqlstate", "message", "status"),
    [
        ("23505", None, 409),
        ("23503", None, 409),
        ("P0001", None, 400),
        ("42883", None, 404),
        ("53300", None, 503),
        ("08006", None, 503),
        ("40001", None, 500),
        ("54001", None, 500),
        ("57P01", None, 503),
        ("21000", None, 500),
        ("21000", "UPDATE requires a WHERE clause", 400),
        ("22023", None, 400),
        ("PT402", None, 402),
        ("PTABC", None, 500),
        ("XX000", None, 500),
    ],
)
def test_sqlstates_raised_in_the_database_map_to_postgrests_statuses(
    http: tuple[httpx.Client, PostgrestStandIn], sqlstate: str, message: str | None, status: int
) -> None:
    client, _ = http
    response = call(client, "fail_with", {"state": sqlstate, "message": message})
    assert response.status_code == status
    assert response.json() == {
        "code": sqlstate,
        "message": message or f"failed with {sqlstate}",
        "details": "some detail",
        "hint": "a hint",
    }


def test_a_jwt_role_that_does_not_exist_is_401(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    client, _ = http
    response = call(client, "add", {"a": 1}, key=mint_jwt("nobody_at_all"))
    assert (response.status_code, response.json()["code"]) == (401, "22023")
    assert response.headers["www-authenticate"] == "Bearer"


def test_insufficient_privilege_is_401_for_anon_and_403_for_a_user(
    http: tuple[httpx.Client, PostgrestStandIn],
) -> None:
    client, _ = http
    as_anon = call(client, "fail_with", {"state": "P0001"}, key=anon_key())
    assert (as_anon.status_code, as_anon.json()["code"]) == (401, "42501")
    assert as_anon.headers["www-authenticate"] == "Bearer"
    as_user = call(client, "fail_with", {"state": "42501"}, key=user_token(str(uuid.uuid4())))
    assert (as_user.status_code, as_user.json()["code"]) == (403, "42501")


def test_named_arguments_defaults_and_result_shapes(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    client, stand_in = http
    assert call(client, "add", {"a": 2}).json() == 3
    assert call(client, "add", {"a": 2, "b": 5}).json() == 7
    assert call(client, "series", {"n": 3}).json() == [1, 2, 3]
    assert call(client, "series", {"n": 0}).json() == []
    assert call(client, "squares", {"n": 2}).json() == [{"i": 1, "sq": 1}, {"i": 2, "sq": 4}]
    assert call(client, "noop", {}).status_code == 204
    unknown = call(client, "add", {"a": 1, "c": 2})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "PGRST202")
    missing = call(client, "add", {"b": 2})
    assert (missing.status_code, missing.json()["code"]) == (404, "PGRST202")
    assert stand_in.requests == 8
    assert stand_in.schema_cache_loads == 1, "the catalogue is read once, not per request"


def test_array_arguments_bind_as_postgrest_binds_them(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    """A JSON array becomes an array of the argument's type, each element through the element
    type's input function (``json_to_record``): a JSON document for a text element travels as a
    string, ``null`` is NULL, ``"NaN"`` a float; a nested JSON array is a further dimension. A
    ``character`` argument is read as ``character varying`` (funcsSqlQuery), so it is not cut
    to one character."""
    client, _stand_in = http
    answer = call(
        client,
        "arrays",
        {
            "texts": ["plain", None, '{"k": [1, 2]}'],
            "floats": [1.5, None, "NaN", "-Infinity", 2],
            "states": ["pending", "completed"],
            "grid": [[1, 2], [3, 4]],
            "codes": ["abc"],
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "texts": ["plain", None, '{"k": [1, 2]}'],
        "floats": ["1.5", None, "NaN", "-Infinity", "2"],
        "states": ["pending", "completed"],
        "grid": [[1, 2], [3, 4]],
        "dims": "[1:2][1:2]",
        "codes": ["abc"],
    }
    only_required = call(client, "arrays", {"texts": [], "floats": None})
    assert only_required.json() == {
        "texts": [],
        "floats": None,
        "states": None,
        "grid": None,
        "dims": None,
        "codes": None,
    }
    not_a_state = call(client, "arrays", {"texts": [], "floats": [], "states": ["bogus"]})
    assert (not_a_state.status_code, not_a_state.json()["code"]) == (400, "22P02")


def test_the_rows_of_a_set_returning_function_are_filtered_like_a_tables(
    http: tuple[httpx.Client, PostgrestStandIn],
) -> None:
    client, _ = http
    key = service_key()
    headers = {"apikey": key, "authorization": f"Bearer {key}"}
    odd_squares = client.post("/rpc/squares?sq=neq.4&i=lt.4", json={"n": 5}, headers=headers)
    assert odd_squares.json() == [{"i": 1, "sq": 1}, {"i": 3, "sq": 9}]
    assert client.post("/rpc/squares?i=gt.9", json={"n": 5}, headers=headers).json() == []
    scalar = client.post("/rpc/add?a=eq.1", json={"a": 1}, headers=headers)
    assert (scalar.status_code, scalar.json()["code"]) == (400, "PGRST100")


def test_a_table_is_ordered_limited_and_offset(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    client, _ = http
    key = service_key()
    headers = {"apikey": key, "authorization": f"Bearer {key}"}
    client.post(
        "/ordered",
        json=[{"n": 2, "tag": "b"}, {"n": 1, "tag": None}, {"n": 3, "tag": "a"}],
        headers=headers,
    )

    def names(query: str) -> list[Any]:
        response = client.get(f"/ordered?select=n{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [row["n"] for row in response.json()]

    assert names("&order=n.desc") == [3, 2, 1]
    assert names("&order=n&limit=2") == [1, 2]
    assert names("&order=n.desc&limit=1&offset=1") == [2]
    assert names("&order=tag.asc.nullsfirst") == [1, 3, 2]
    assert names("&order=tag.desc.nullslast") == [2, 3, 1]
    assert names("&n=gt.1&order=n.desc") == [3, 2]
    bad = client.get("/ordered?order=n.sideways", headers=headers)
    assert (bad.status_code, bad.json()["code"]) == (400, "PGRST100")


def test_role_claims_and_read_only_transactions(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    client, _ = http
    user = str(uuid.uuid4())
    assert call(client, "whoami", {}, key=user_token(user)).json() == {
        "role": "authenticated",
        "sub": user,
        "method": "POST",
        "read_only": "on",  # a stable function runs read-only
    }
    refused = call(client, "stable_writer", {})
    assert (refused.status_code, refused.json()["code"]) == (405, "25006")


def test_request_errors(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    client, _ = http
    key = service_key()
    bad_json = client.post(
        "/rpc/add", content=b"{not json", headers={"apikey": key, "content-type": "application/json"}
    )
    assert (bad_json.status_code, bad_json.json()["code"]) == (400, "PGRST102")
    other_schema = call(client, "add", {"a": 1}, **{"content-profile": "auth"})
    assert (other_schema.status_code, other_schema.json()["code"]) == (406, "PGRST106")
    no_table = client.get("/nope", params={"select": "*"}, headers={"apikey": key})
    assert (no_table.status_code, no_table.json()["code"]) == (404, "PGRST205")
    bad_filter = client.get("/job_status", params={"job_id": "like.x*"}, headers={"apikey": key})
    assert (bad_filter.status_code, bad_filter.json()["code"]) == (400, "PGRST100")


# -- the schema cache ------------------------------------------------------------------------


def notify(database_url: str, payload: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("notify pgrst, {}").format(sql.Literal(payload)))


def test_a_function_created_after_the_load_is_invisible_until_reload_schema(
    http: tuple[httpx.Client, PostgrestStandIn], database_url: str
) -> None:
    client, stand_in = http
    assert call(client, "add", {"a": 1}).json() == 2  # the cache is loaded
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create function public.late() returns integer language sql as $$ select 7 $$")
        conn.execute("create table public.late_table (n integer)")
    late = call(client, "late", {})
    assert (late.status_code, late.json()["code"]) == (404, "PGRST202")
    table = client.get("/late_table", headers=api_key_headers(service_key()))
    assert (table.status_code, table.json()["code"]) == (404, "PGRST205")

    loads = stand_in.schema_cache_loads
    notify(database_url, "reload schema")
    wait_for(lambda: stand_in.schema_cache_loads > loads, timeout=10, what="the schema cache reload")
    assert call(client, "late", {}).json() == 7
    assert client.get("/late_table", headers=api_key_headers(service_key())).json() == []

    # an empty payload reloads too; a payload PostgREST does not know does nothing
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create function public.later() returns integer language sql as $$ select 8 $$")
    loads = stand_in.schema_cache_loads
    notify(database_url, "something else")
    notify(database_url, "")
    wait_for(lambda: stand_in.schema_cache_loads > loads, timeout=10, what="the schema cache reload")
    assert stand_in.schema_cache_loads == loads + 1
    assert call(client, "later", {}).json() == 8


def test_reload_when_told_and_no_cache_while_the_database_cannot_be_read(
    functions: str, database_url: str
) -> None:
    with rest(database_url, listen=False) as (client, stand_in):
        assert call(client, "add", {"a": 1}).json() == 2
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("create function public.late() returns integer language sql as $$ select 7 $$")
        notify(database_url, "reload schema")  # nobody listens
        assert call(client, "late", {}).status_code == 404
        stand_in.reload_schema_cache()
        assert call(client, "late", {}).json() == 7
    with rest("postgresql://postgres@127.0.0.1:9/postgres", connect_timeout=1) as (client, stand_in):
        down = call(client, "add", {"a": 1})
        assert (down.status_code, down.json()["code"]) == (503, "PGRST002")
        assert stand_in.schema_cache_loads == 0


# -- role settings ---------------------------------------------------------------------------


def test_each_role_runs_under_supabases_timeouts(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    """authenticator's settings apply at login, the switched-to role's in each transaction; a
    role without settings of its own (service_role) keeps authenticator's."""
    client, _ = http

    def timeouts(key: str) -> dict[str, str]:
        response = call(client, "timeouts", {}, key=key)
        assert response.status_code == 200, response.text
        return response.json()

    assert timeouts(anon_key()) == {"role": "anon", "statement_timeout": "3s", "lock_timeout": "8s"}
    assert timeouts(user_token(str(uuid.uuid4()))) == {
        "role": "authenticated",
        "statement_timeout": "8s",
        "lock_timeout": "8s",
    }
    assert timeouts(service_key()) == {
        "role": "service_role",
        "statement_timeout": "8s",
        "lock_timeout": "8s",
    }


def test_a_roles_settings_are_read_with_the_config(
    http: tuple[httpx.Client, PostgrestStandIn], database_url: str
) -> None:
    client, stand_in = http
    role = f"pgrst_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
        conn.execute(sql.SQL("grant {} to authenticator").format(sql.Identifier(role)))
        conn.execute(sql.SQL("alter role {} set statement_timeout = '1234ms'").format(sql.Identifier(role)))
        # the settings of one database are not read: PostgREST takes pg_roles.rolconfig
        conn.execute(
            sql.SQL("alter role {} in database {} set lock_timeout = '1s'").format(
                sql.Identifier(role), sql.Identifier(conn.info.dbname)
            )
        )
    try:
        key = mint_jwt(role)
        first = call(client, "timeouts", {}, key=key).json()
        assert first == {"role": role, "statement_timeout": "1234ms", "lock_timeout": "8s"}
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter role {} set statement_timeout = '2345ms'").format(sql.Identifier(role))
            )
        assert call(client, "timeouts", {}, key=key).json()["statement_timeout"] == "1234ms", "cached"
        loads = stand_in.config_loads
        notify(database_url, "reload config")
        wait_for(lambda: stand_in.config_loads > loads, timeout=10, what="the config reload")
        assert call(client, "timeouts", {}, key=key).json()["statement_timeout"] == "2345ms"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter role {} in database {} reset all").format(
                    sql.Identifier(role), sql.Identifier(conn.info.dbname)
                )
            )
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


# -- db-max-rows -----------------------------------------------------------------------------


def test_db_max_rows_holds_back_rows_of_tables_and_function_results(functions: str) -> None:
    with rest(functions, max_rows=2) as (client, _):
        headers = api_key_headers(service_key())
        counted = {**headers, "prefer": "count=exact"}

        squares = client.post("/rpc/squares", json={"n": 5}, headers=headers)
        assert (squares.status_code, squares.headers["content-range"]) == (200, "0-1/*")
        assert [row["i"] for row in squares.json()] == [1, 2]
        squares = client.post("/rpc/squares", json={"n": 5}, headers=counted)
        assert (squares.status_code, squares.headers["content-range"]) == (206, "0-1/5")
        # filters first, then the limit; an offset moves the window
        big = client.post("/rpc/squares?sq=gt.1&order=i.desc", json={"n": 5}, headers=counted)
        assert ([r["i"] for r in big.json()], big.headers["content-range"]) == ([5, 4], "0-1/4")
        tail = client.post("/rpc/squares?offset=3&limit=9", json={"n": 5}, headers=counted)
        assert ([r["i"] for r in tail.json()], tail.status_code) == ([4, 5], 206)
        assert tail.headers["content-range"] == "3-4/5"
        none = client.post("/rpc/squares?i=gt.9", json={"n": 5}, headers=counted)
        assert (none.json(), none.status_code, none.headers["content-range"]) == ([], 200, "*/0")
        assert client.post("/rpc/series", json={"n": 5}, headers=headers).json() == [1, 2]
        assert client.post("/rpc/add", json={"a": 1}, headers=headers).json() == 2

        # a mutation is not limited; a read of the table is
        inserted = client.post(
            "/ordered",
            json=[{"n": 1, "tag": "a"}, {"n": 2, "tag": "b"}, {"n": 3, "tag": "c"}],
            headers={**headers, "prefer": "return=representation"},
        )
        assert len(inserted.json()) == 3
        read = client.get("/ordered?select=n&order=n", headers=counted)
        assert (read.json(), read.status_code, read.headers["content-range"]) == (
            [{"n": 1}, {"n": 2}],
            206,
            "0-1/3",
        )
        asked_less = client.get("/ordered?select=n&order=n&limit=1", headers=counted)
        assert (asked_less.json(), asked_less.headers["content-range"]) == ([{"n": 1}], "0-0/3")


# -- the connection pool ---------------------------------------------------------------------


def _authenticator_backends(conninfo: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "select pid, wait_event_type from pg_stat_activity"
            " where usename = 'authenticator' and datname = current_database()"
            " and query not ilike 'listen%'"
        ).fetchall()
    return [(pid, wait or "") for pid, wait in rows]


def test_requests_share_db_pool_connections_and_wait_for_one(functions: str) -> None:
    """Five requests at once on a pool of two: two reach the database, three wait for them,
    all succeed, and the pool keeps its two connections."""
    with rest(functions, pool_size=2) as (client, _), psycopg.connect(functions, autocommit=True) as gate:
        gate.execute("select pg_advisory_lock(4242)")  # every request blocks in the database
        with ThreadPoolExecutor(5) as pool:
            answers = [pool.submit(call, client, "gate", {}) for _ in range(5)]
            wait_for(
                lambda: sum(wait == "Lock" for _pid, wait in _authenticator_backends(functions)) == 2,
                timeout=10,
                what="two requests blocked in the database",
            )
            assert len(_authenticator_backends(functions)) == 2  # the other three wait for one
            gate.execute("select pg_advisory_unlock(4242)")
            statuses = [answer.result(timeout=10).status_code for answer in answers]
        assert statuses == [200] * 5
        assert len(_authenticator_backends(functions)) == 2


def test_a_request_that_finds_the_pool_busy_too_long_is_504_pgrst003(functions: str) -> None:
    options = {"pool_size": 1, "pool_acquisition_timeout": 0.2}
    with rest(functions, **options) as (client, _), psycopg.connect(functions, autocommit=True) as gate:
        gate.execute("select pg_advisory_lock(4242)")
        with ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(call, client, "gate", {})
            wait_for(
                lambda: any(wait == "Lock" for _pid, wait in _authenticator_backends(functions)),
                timeout=10,
                what="the first request blocked in the database",
            )
            refused = call(client, "add", {"a": 1})
            gate.execute("select pg_advisory_unlock(4242)")
            assert blocked.result(timeout=10).status_code == 200
        assert refused.status_code == 504
        assert refused.json()["code"] == "PGRST003"
        assert call(client, "add", {"a": 1}).json() == 2  # the connection came back


# -- the gateway -----------------------------------------------------------------------------


def test_the_gateway_refuses_a_body_over_its_limit(functions: str) -> None:
    with rest(functions, max_body_bytes=64) as (client, stand_in):
        small = call(client, "add", {"a": 1})
        big = call(client, "add", {"a": 1, "b": 2, "padding": "x" * 64})
        assert small.status_code == 200
        assert big.status_code == 413
        assert "code" not in big.json() and big.json()["message"]
        assert [(c.status, c.role) for c in stand_in.log] == [(200, "service_role"), (413, None)]


def test_new_api_keys_map_to_roles_as_the_gateway_does(http: tuple[httpx.Client, PostgrestStandIn]) -> None:
    """A secret key works alongside the legacy service_role JWT: the gateway swaps it (and a
    publishable key) for a JWT of its role; a user's session passes through as sent."""
    client, stand_in = http
    user = str(uuid.uuid4())

    def whoami(headers: dict[str, str]) -> httpx.Response:
        return client.post("/rpc/whoami", json={}, headers=headers)

    as_secret = whoami(api_key_headers(TEST_SECRET_KEY)).json()
    assert (as_secret["role"], as_secret["sub"]) == ("service_role", None)
    assert whoami({"apikey": TEST_SECRET_KEY}).json()["role"] == "service_role"
    assert whoami(api_key_headers(TEST_PUBLISHABLE_KEY)).json()["role"] == "anon"
    session = {"apikey": TEST_PUBLISHABLE_KEY, "authorization": f"Bearer {user_token(user)}"}
    assert whoami(session).json() == {
        "role": "authenticated",
        "sub": user,
        "method": "POST",
        "read_only": "on",
    }
    assert whoami(api_key_headers(service_key())).json()["role"] == "service_role"

    unknown = "sb_secret_" + "N" * 22 + "_00000000"
    refused = [
        whoami(api_key_headers(unknown)),
        whoami({"apikey": TEST_PUBLISHABLE_KEY, "authorization": f"Bearer {TEST_SECRET_KEY}"}),
    ]
    for response in refused:
        assert response.status_code == 401
        assert response.json()["message"] == "Invalid API key" and "code" not in response.json()
    assert [c.role for c in stand_in.log[-2:]] == [None, None]
