"""The PostgREST stand-in does what its docstring claims, on functions made for the purpose:
named arguments and defaults, result shapes, roles and claims, read-only transactions, and the
SQLSTATE -> HTTP status mapping with PostgREST's error body."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.postgrest import STAND_IN_URL, PostgrestStandIn, anon_key, service_key, user_token

pytestmark = [pytest.mark.integration]

FUNCTIONS = """
create function public.fail_with(state text) returns void language plpgsql as $$
begin
  raise exception 'failed with %', state using errcode = state, detail = 'some detail', hint = 'a hint';
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
revoke all on function public.fail_with(text) from public, anon;
"""


@pytest.fixture
def http(database_url: str) -> Iterator[tuple[httpx.Client, PostgrestStandIn]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FUNCTIONS)
    stand_in = PostgrestStandIn(database_url)
    with httpx.Client(transport=stand_in, base_url=f"{STAND_IN_URL}/rest/v1") as client:
        yield client, stand_in
    stand_in.close()


def call(
    client: httpx.Client, fn: str, args: dict[str, Any], key: str | None = None, **headers: str
) -> httpx.Response:
    key = key or service_key()
    return client.post(
        f"/rpc/{fn}", json=args, headers={"apikey": key, "authorization": f"Bearer {key}", **headers}
    )


@pytest.mark.parametrize(
    ("sqlstate", "status"),
    [
        ("23505", 409),
        ("23503", 409),
        ("P0001", 400),
        ("42883", 404),
        ("53300", 503),
        ("08006", 503),
        ("40001", 500),
        ("54001", 413),
        ("22023", 400),
        ("PT402", 402),
        ("XX000", 500),
    ],
)
def test_sqlstates_map_to_postgrests_statuses(
    http: tuple[httpx.Client, PostgrestStandIn], sqlstate: str, status: int
) -> None:
    client, _ = http
    response = call(client, "fail_with", {"state": sqlstate})
    assert response.status_code == status
    assert response.json() == {
        "code": sqlstate,
        "message": f"failed with {sqlstate}",
        "details": "some detail",
        "hint": "a hint",
    }


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
