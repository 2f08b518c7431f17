"""Migrations apply in order to a fresh database, are recorded as the Supabase CLI records them,
and leave the schema the rest of the system relies on."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from coursegen.migrate import MigrationError, applied_versions, list_migrations, migrate
from tests.support.db import wait_for
from tests.support.postgrest import STAND_IN_URL, PostgrestStandIn, service_key
from tests.support.processes import app_env

pytestmark = [pytest.mark.integration, pytest.mark.sql]


def test_migrations_apply_in_order_to_a_fresh_database(empty_database_url: str) -> None:
    files = list_migrations()
    assert files, "there are migrations to apply"
    assert [m.version for m in files] == sorted(m.version for m in files)

    applied = migrate(empty_database_url)

    assert applied == [m.version for m in files]
    with psycopg.connect(empty_database_url) as conn:
        assert applied_versions(conn) == {m.version for m in files}
        names = dict(
            conn.execute("select version, name from supabase_migrations.schema_migrations").fetchall()
        )
        assert names == {m.version: m.name for m in files}
    # a second run finds nothing to do
    assert migrate(empty_database_url) == []


# `coursegen migrate` as its console script runs it (coursegen.cli:main), behind a gate: the
# process imports everything, says so, then waits for a line on stdin, so that several start
# together.
_GATED_MIGRATE = """
import sys
import psycopg
import coursegen.migrate
from coursegen.cli import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(["--verbose", "migrate"]))
"""


def test_migrate_runs_at_once_apply_each_migration_exactly_once(empty_database_url: str) -> None:
    """Two release phases racing (README: migrate holds an advisory lock): several
    `coursegen migrate` processes started at the same instant on an empty database all succeed,
    and between them apply the local base and every migration exactly once."""
    versions = [m.version for m in list_migrations()]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _GATED_MIGRATE],
            env=app_env(DATABASE_URL=empty_database_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for run in runs:
            assert run.stdout is not None
            assert run.stdout.readline() == "ready\n"
        for run in runs:  # all of them waiting, imports done: release them together
            assert run.stdin is not None
            run.stdin.write("go\n")
            run.stdin.flush()
        outputs = [run.communicate(timeout=60) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(10)

    applied: list[str] = []
    bases = 0
    for run, (out, err) in zip(runs, outputs, strict=True):
        bases += err.count("Applying the local Supabase base")
        assert run.returncode == 0, (run.returncode, out, err)
        first = out.splitlines()[0]
        if first.startswith("applied: "):
            applied += first.removeprefix("applied: ").split(", ")
        else:
            assert first == "nothing to apply: the database is up to date", out
    assert sorted(applied) == versions, "every migration applied once, by one of the runs"
    assert bases == 1, "the local base applied once (the others found its auth schema)"
    with psycopg.connect(empty_database_url) as conn:
        recorded = [
            row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")
        ]
        assert sorted(recorded) == versions
        assert conn.execute("select to_regclass('public.job_status') is not null").fetchone() == (True,)


# What a Supabase project has before our migrations, in the forms it has them there (its auth
# service's own definitions), none as supabase/bootstrap/local.sql would make it: auth.uid()'s
# body, auth.users without row-level security, no default privileges of ours in public, no
# realtime schema yet. The API roles are the cluster's (created here if this test runs first).
_SUPABASE_LOOKALIKE = """
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;
create schema auth;
create table auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  raw_user_meta_data jsonb,
  created_at timestamptz
);
create function auth.uid() returns uuid language sql stable as $$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.sub', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
"""


def _supabase_sentinels(conninfo: str) -> dict[str, object]:
    """What supabase/bootstrap/local.sql would change on such a database."""
    with psycopg.connect(conninfo) as conn:
        return {
            "auth.uid() body": conn.execute(
                "select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure"
            ).fetchone(),
            "auth.users row-level security": conn.execute(
                "select relrowsecurity from pg_class where oid = 'auth.users'::regclass"
            ).fetchone(),
            "auth.jwt()": conn.execute("select to_regprocedure('auth.jwt()')").fetchone(),
            "default privileges in public": conn.execute(
                "select count(*) from pg_default_acl where defaclnamespace = 'public'::regnamespace"
            ).fetchone(),
            "realtime schema": conn.execute("select to_regnamespace('realtime')").fetchone(),
        }


def test_the_local_base_is_never_applied_where_supabase_s_auth_schema_is(empty_database_url: str) -> None:
    """README: on a database with an `auth` schema (every Supabase project) `coursegen migrate`
    applies the migrations only, never supabase/bootstrap/local.sql."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(_SUPABASE_LOOKALIKE)
    before = _supabase_sentinels(empty_database_url)
    assert before == {
        "auth.uid() body": before["auth.uid() body"],
        "auth.users row-level security": (False,),
        "auth.jwt()": (None,),
        "default privileges in public": (0,),
        "realtime schema": (None,),
    }

    assert migrate(empty_database_url) == [m.version for m in list_migrations()]

    assert _supabase_sentinels(empty_database_url) == before, "the local base was applied"
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regclass('public.job_status') is not null").fetchone() == (True,)


def test_migrations_apply_one_at_a_time(empty_database_url: str, tmp_path: Path) -> None:
    """Each migration applies on top of the previous ones alone (append-only history)."""
    files = list_migrations()
    staged = tmp_path / "migrations"
    staged.mkdir()
    for migration in files:
        (staged / migration.path.name).write_text(migration.sql)
        assert migrate(empty_database_url, directory=staged) == [migration.version]


def test_schema_has_what_the_system_relies_on(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        columns = {
            row[0]
            for row in conn.execute(
                "select column_name from information_schema.columns "
                "where table_schema = 'public' and table_name = 'job_status'"
            )
        }
        assert {
            "id", "job_id", "tenant_id", "user_id", "actor_name", "queue_name", "status", "progress",
            "progress_message", "attempt", "result", "error_type", "error_message", "next_retry_at",
            "enqueued_at", "started_at", "finished_at", "cancel_requested_at", "created_at", "updated_at",
        } <= columns  # fmt: skip
        rls = conn.execute(
            "select relname, relrowsecurity from pg_class where oid in "
            "('public.job_status'::regclass, 'public.organizations'::regclass)"
        ).fetchall()
        assert dict(rls) == {"job_status": True, "organizations": True}
        published = conn.execute(
            "select 1 from pg_publication_tables where pubname = 'supabase_realtime' "
            "and schemaname = 'public' and tablename = 'job_status'"
        ).fetchone()
        assert published is not None, "job_status is in the supabase_realtime publication"
        indexes = {
            row[0] for row in conn.execute("select indexname from pg_indexes where tablename = 'job_status'")
        }
        assert {
            "job_status_user_created_idx",
            "job_status_tenant_created_idx",
            "job_status_created_at_idx",
        } <= indexes


def test_a_misnamed_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "add_things.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="YYYYMMDDHHMMSS"):
        list_migrations(tmp_path)


def test_a_failing_migration_is_rolled_back_and_not_recorded(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "20990101000000_broken.sql").write_text(
        "create table public.half_done (id int);\nselect * from no_such_table;\n"
    )
    with pytest.raises(MigrationError, match="20990101000000_broken"):
        migrate(empty_database_url, directory=tmp_path)
    with psycopg.connect(empty_database_url) as conn:
        assert "20990101000000" not in applied_versions(conn)
        assert conn.execute("select to_regclass('public.half_done')").fetchone() == (None,)


@pytest.mark.parametrize("contents", [None, [], ["README.md"]], ids=["missing", "empty", "no-sql"])
def test_no_migrations_is_an_error_not_up_to_date(
    empty_database_url: str, tmp_path: Path, contents: list[str] | None
) -> None:
    directory = tmp_path / "migrations"
    if contents is not None:
        directory.mkdir()
        for name in contents:
            (directory / name).write_text("not a migration")
    with pytest.raises(MigrationError, match="no migration"):
        migrate(empty_database_url, directory=directory)
    with psycopg.connect(empty_database_url) as conn:
        touched = conn.execute(
            "select to_regnamespace('auth'), to_regnamespace('supabase_migrations')"
        ).fetchone()
    assert touched == (None, None), "nothing was applied, not even the local base"


def test_migrate_makes_postgrest_reload_its_schema_cache(database_url: str, tmp_path: Path) -> None:
    """PostgREST serves from a schema cache: a function a migration adds reaches the REST API
    (here the stand-in, which reloads only on NOTIFY pgrst) because migrate sends the NOTIFY."""
    staged = tmp_path / "migrations"
    staged.mkdir()
    for migration in list_migrations():
        (staged / migration.path.name).write_text(migration.sql)
    (staged / "29991231235959_rest_probe.sql").write_text(
        "create function public.rest_probe() returns text language sql stable set search_path = ''\n"
        "  as $$ select 'migrated' $$;\n"
        "revoke all on function public.rest_probe() from public, anon, authenticated;\n"
        "grant execute on function public.rest_probe() to service_role;\n"
    )
    stand_in = PostgrestStandIn(database_url)
    key = service_key()
    headers = {"apikey": key, "authorization": f"Bearer {key}"}
    try:
        with httpx.Client(transport=stand_in, base_url=f"{STAND_IN_URL}/rest/v1") as client:
            before = client.post("/rpc/rest_probe", json={}, headers=headers)
            assert (before.status_code, before.json()["code"]) == (404, "PGRST202")
            loads = stand_in.schema_cache_loads

            assert migrate(database_url, directory=staged) == ["29991231235959"]

            wait_for(lambda: stand_in.schema_cache_loads > loads, timeout=10, what="PostgREST's reload")
            after = client.post("/rpc/rest_probe", json={}, headers=headers)
            assert (after.status_code, after.json()) == (200, "migrated")
            # nothing left to apply: the NOTIFY goes out all the same (harmless)
            loads = stand_in.schema_cache_loads
            assert migrate(database_url, directory=staged) == []
            wait_for(lambda: stand_in.schema_cache_loads > loads, timeout=10, what="PostgREST's reload")
    finally:
        stand_in.close()


def test_the_sane_times_migrations_repair_old_rows_then_validate(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Rows written before the time constraints (the old functions accepted '-Infinity') are
    clamped to the nearest bound, which keeps their place in the ordering, and the constraint,
    added NOT VALID, is then validated: on a database with such rows the migrations apply."""
    files = list_migrations()
    staged = tmp_path / "migrations"
    staged.mkdir()
    before = [m for m in files if m.version < "20261205081000"]
    for migration in before:
        (staged / migration.path.name).write_text(migration.sql)
    migrate(empty_database_url, directory=staged)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        owner = conn.execute(
            "with o as (insert into public.organizations (name) values ('Acme') returning id),"
            " u as (insert into auth.users (id, email) values (gen_random_uuid(), 'u@example.test')"
            " returning id) select o.id, u.id from o, u"
        ).fetchone()
        assert owner is not None
        rows = [
            ("live", "active", "-infinity", None, "infinity", None),
            ("done", "completed", "2026-12-01 00:00:00+00", "1970-01-01 00:00:00+00", None, "-infinity"),
            ("fine", "active", "2026-12-01 00:00:00+00", "2026-12-01 00:00:00+00", None, None),
        ]
        for job, status, event_at, enqueued_at, next_retry_at, finished_at in rows:
            conn.execute(
                "insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status,"
                " event_at, enqueued_at, next_retry_at, finished_at)"
                " values (%s, %s, %s, 'a', 'q', %s, %s, %s, %s, %s)",
                (job, *owner, status, event_at, enqueued_at, next_retry_at, finished_at),
            )
    for migration in files[len(before) :]:
        (staged / migration.path.name).write_text(migration.sql)
    assert migrate(empty_database_url, directory=staged) == [m.version for m in files[len(before) :]]
    with psycopg.connect(empty_database_url) as conn:
        found = {
            row[0]: row[1:]
            for row in conn.execute(
                "select job_id, event_at, enqueued_at, next_retry_at, finished_at from public.job_status"
            )
        }
        validated = conn.execute(
            "select convalidated from pg_constraint where conname = 'job_status_times_check'"
        ).fetchone()
    low, high, day = (
        datetime(year, month, 1, tzinfo=UTC) for year, month in ((2000, 1), (2200, 1), (2026, 12))
    )
    assert found == {
        "live": (low, None, high, None),
        "done": (day, low, None, low),
        "fine": (day, day, None, None),
    }
    assert validated == (True,)
