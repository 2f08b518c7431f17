"""Apply ``supabase/migrations`` the way the Supabase CLI does, so either tool can take over.

Versions are recorded in ``supabase_migrations.schema_migrations`` (version, name,
statements), each migration runs in one transaction, and a session advisory lock keeps two
``coursegen migrate`` runs (say, two release phases) from racing. On a database without the
``auth`` schema (plain PostgreSQL: the demo, tests, a developer's server) the local Supabase
base in ``supabase/bootstrap/local.sql`` is applied first; a real Supabase project always has
``auth`` and never gets it.

The SQL is read with ``importlib.resources`` from ``coursegen/sql``, where every wheel carries
``supabase/`` (``setup.py`` maps it there); an editable install or a source checkout has no
``coursegen/sql`` and reads the checkout's ``supabase/``. No SQL found is an error, never
"up to date".

PostgREST serves from a schema cache: a function a migration adds or changes is invisible to it
(404 ``PGRST202``) until ``NOTIFY pgrst, 'reload schema'``. Hosted Supabase sends that from an
event trigger on DDL; a self-hosted PostgREST may have none, so every run ends with the NOTIFY
(harmless on plain PostgreSQL, where nobody listens).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg

from middleware.conninfo import check_conninfo

logger = logging.getLogger(__name__)

# Where the SQL is without a wheel: the repository's supabase/, next to this package.
CHECKOUT_SQL = Path(__file__).resolve().parent.parent / "supabase"

_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x636F7572  # "cour": any constant shared by all coursegen migrate runs
#: PostgREST's db-channel and the payload that reloads its schema cache
_RELOAD_POSTGREST = "notify pgrst, 'reload schema'"


class MigrationError(Exception):
    """The SQL is missing, a migration file is misnamed, or a migration could not be applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Traversable

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def sql_root() -> Traversable:
    """The directory holding ``migrations/`` and ``bootstrap/``: the package's own copy in a wheel,
    else the source checkout's ``supabase/``."""
    packaged = resources.files("coursegen") / "sql"
    if packaged.is_dir():
        return packaged
    if CHECKOUT_SQL.joinpath("migrations").is_dir():
        return CHECKOUT_SQL
    raise MigrationError(
        f"the SQL is missing: neither {packaged} (an installed package) nor "
        f"{CHECKOUT_SQL / 'migrations'} (a source checkout) exists; reinstall coursegen"
    )


def migrations_dir() -> Traversable:
    return sql_root() / "migrations"


def bootstrap_file() -> Traversable:
    return sql_root() / "bootstrap" / "local.sql"


def list_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files in version order (``directory`` defaults to :func:`migrations_dir`).

    A missing directory, one without migrations, or a misnamed ``.sql`` file is an error: applying
    nothing from an empty list would report a database "up to date" that has no schema.
    """
    if directory is None:
        directory = migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    found = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named <YYYYMMDDHHMMSS>_<name>.sql")
        found.append(Migration(match["version"], match["name"], path))
    if not found:
        raise MigrationError(f"no migration files in {directory}")
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
    directory: Traversable | None = None,
    bootstrap: bool | None = None,
) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call.

    ``directory``: the migrations (default :func:`migrations_dir`). ``bootstrap``: apply the local
    Supabase base first; ``None`` means "when ``auth`` is missing".
    An unusable ``conninfo`` raises :class:`~middleware.errors.InvalidConninfoError`.
    """
    check_conninfo(conninfo)
    migrations = list_migrations(directory)
    base = bootstrap_file()
    done: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            has_auth = conn.execute("select to_regnamespace('auth') is not null").fetchone()
            if bootstrap or (bootstrap is None and not (has_auth and has_auth[0])):
                if not base.is_file():
                    raise MigrationError(f"no auth schema here and no local Supabase base at {base}")
                logger.info("Applying the local Supabase base (no auth schema here).")
                with conn.transaction():
                    conn.execute(base.read_text(encoding="utf-8"))
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
                    if done:  # what did apply must not stay invisible to PostgREST
                        with contextlib.suppress(psycopg.Error):
                            conn.execute(_RELOAD_POSTGREST)
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} failed: "
                        f"{exc.diag.message_primary or type(exc).__name__}"
                    ) from exc
                done.append(migration.version)
            # every run, not only one that applied something: a run that died between its last
            # commit and this line leaves nothing to apply the next time
            conn.execute(_RELOAD_POSTGREST)
            logger.info("Asked PostgREST to reload its schema cache (NOTIFY pgrst).")
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done
