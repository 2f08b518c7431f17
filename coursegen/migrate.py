"""Apply ``supabase/migrations`` the way the Supabase CLI does, so either tool can take over.

Versions are recorded in ``supabase_migrations.schema_migrations`` (version, name,
statements), each migration runs in one transaction, and a session advisory lock keeps two
``coursegen migrate`` runs (say, two release phases) from racing. On a database without the
``auth`` schema (plain PostgreSQL: the demo, tests, a developer's server) the local Supabase
base in ``supabase/bootstrap/local.sql`` is applied first; a real Supabase project always has
``auth`` and never gets it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "supabase" / "migrations"
BOOTSTRAP_FILE = ROOT / "supabase" / "bootstrap" / "local.sql"

_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x636F7572  # "cour": any constant shared by all coursegen migrate runs


class MigrationError(Exception):
    """A migration file is misnamed, or could not be applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def list_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a misnamed ``.sql`` file is an error."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named <YYYYMMDDHHMMSS>_<name>.sql")
        found.append(Migration(match["version"], match["name"], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version")
    return found


def applied_versions(conn: psycopg.Connection) -> set[str]:
    exists = conn.execute(
        "select to_regclass('supabase_migrations.schema_migrations') is not null"
    ).fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")}


def migrate(
    conninfo: str,
    *,
    directory: Path = MIGRATIONS_DIR,
    bootstrap: bool | None = None,
) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call.

    ``bootstrap``: apply the local Supabase base first; ``None`` means "when ``auth`` is missing".
    """
    migrations = list_migrations(directory)
    done: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            has_auth = conn.execute("select to_regnamespace('auth') is not null").fetchone()
            if bootstrap or (bootstrap is None and not (has_auth and has_auth[0])):
                logger.info("Applying the local Supabase base (no auth schema here).")
                with conn.transaction():
                    conn.execute(BOOTSTRAP_FILE.read_text(encoding="utf-8"))
            with conn.transaction():
                conn.execute("create schema if not exists supabase_migrations")
                conn.execute(
                    "create table if not exists supabase_migrations.schema_migrations "
                    "(version text primary key, statements text[], name text)"
                )
            applied = applied_versions(conn)
            for migration in migrations:
                if migration.version in applied:
                    continue
                logger.info("Applying migration %s_%s.", migration.version, migration.name)
                sql = migration.sql
                try:
                    with conn.transaction():
                        conn.execute(sql)
                        conn.execute(
                            "insert into supabase_migrations.schema_migrations (version, name, statements) "
                            "values (%s, %s, %s)",
                            (migration.version, migration.name, [sql]),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} failed: "
                        f"{exc.diag.message_primary or type(exc).__name__}"
                    ) from exc
                done.append(migration.version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done
