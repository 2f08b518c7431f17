"""Our migrations with the real Supabase CLI (`npm install` at the repository root installs it from
package.json), on a local PostgreSQL without Docker, on top of the local bootstrap; and
`coursegen migrate` and the CLI agree on what is applied, whichever ran first.

CLI 3.x flags: `migration up|list --remote=<db-url>` (the older `--db-url` still works but is
deprecated), `--yes` to apply without a terminal, `--workdir` for the folder holding supabase/.
No supabase/config.toml is needed for these commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from coursegen.migrate import applied_versions, bootstrap_file, list_migrations, migrate
from tests.conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.sql]

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "node_modules" / ".bin" / "supabase"


class SupabaseCli:
    """The CLI run on a copy of supabase/migrations, so that it writes nothing into the repo."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        shutil.copytree(ROOT / "supabase" / "migrations", workdir / "supabase" / "migrations")
        home = workdir / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "DO_NOT_TRACK": "1",
            "SUPABASE_TELEMETRY_DISABLED": "1",
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(CLI), *args, "--workdir", str(self.workdir)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"supabase {' '.join(args[:2])} exited {done.returncode}:\n{done.stderr}"
        return done


@pytest.fixture
def cli(tmp_path: Path) -> SupabaseCli:
    if not os.access(CLI, os.X_OK):
        unavailable(f"the Supabase CLI is not installed ({CLI}): run `npm install` at the repository root")
    return SupabaseCli(tmp_path / "project")


def db_url(conninfo: str) -> str:
    """The URL form the CLI takes, TLS off (the local server has none)."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(parts.get("user", "postgres")), safe="")
    password = f":{quote(str(parts['password']), safe='')}" if parts.get("password") else ""
    return (
        f"postgresql://{user}{password}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}"
        f"/{parts['dbname']}?sslmode=disable"
    )


def status_function_exists(conninfo: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("select to_regprocedure('public.job_status_apply(jsonb)') is not null").fetchone()
    return bool(row and row[0])


def test_the_cli_applies_our_migrations_and_coursegen_migrate_then_has_nothing_to_do(
    cli: SupabaseCli, empty_database_url: str
) -> None:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(bootstrap_file().read_text(encoding="utf-8"))
    versions = [m.version for m in list_migrations()]

    done = cli("migration", "up", f"--remote={db_url(empty_database_url)}", "--yes")

    output = done.stdout + done.stderr
    assert [v for v in versions if f"Applying migration {v}_" not in output] == []
    assert status_function_exists(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert applied_versions(conn) == set(versions)
    assert migrate(empty_database_url) == [], "coursegen migrate sees the CLI's history as its own"


def test_the_cli_sees_what_coursegen_migrate_applied(cli: SupabaseCli, empty_database_url: str) -> None:
    versions = migrate(empty_database_url)
    assert versions == [m.version for m in list_migrations()]

    listed = json.loads(
        cli("migration", "list", f"--remote={db_url(empty_database_url)}", "--output-format", "json").stdout
    )
    assert {(m["local"], m["remote"]) for m in listed["migrations"]} == {(v, v) for v in versions}

    done = cli("migration", "up", f"--remote={db_url(empty_database_url)}", "--yes")
    assert "up to date" in done.stdout + done.stderr
    with psycopg.connect(empty_database_url) as conn:
        count = conn.execute("select count(*) from supabase_migrations.schema_migrations").fetchone()
    assert count == (len(versions),)
