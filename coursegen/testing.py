"""Pytest fixtures on a real PostgreSQL with coursegen's schema, for tests that want the real row.

Registered as a pytest plugin (the ``pytest11`` entry point ``coursegen.testing``), next to
:mod:`middleware.testing`; nothing starts unless a test asks for ``status_database``. It lives
here, not in ``middleware``, because what it needs is coursegen's: the schema (the migrations,
applied by :func:`coursegen.migrate.migrate`) and the embedded server
(:class:`coursegen.embedded.LocalPostgres`); ``middleware`` never imports ``coursegen``.

* ``status_postgres`` (session): a superuser URL. ``COURSEGEN_TEST_DATABASE_URL`` names a server
  to use (it must allow creating databases); else an embedded PostgreSQL starts for the session
  (``COURSEGEN_TEST_PG_BINDIR`` runs another installation's binaries).
* ``status_template_database`` (session): every migration applied once, to a template.
* ``status_database``: a :class:`StatusDatabase`, this test's own copy of the template.

Write real rows from the kit's broker by overriding ``status_backend`` in a test module or
conftest::

    @pytest.fixture
    def status_backend(status_database):
        return status_database.store()
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from middleware.events import Owner

if TYPE_CHECKING:
    from middleware.stores.postgres import PostgresStatusStore

__all__ = ["StatusDatabase"]


def _connect(url: str, **options: Any) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, **options)


def _database_url(admin_url: str, name: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(admin_url, dbname=name)


def _create_database(admin_url: str, name: str, template: str | None = None) -> None:
    from psycopg import sql

    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} template {}").format(statement, sql.Identifier(template))
    with _connect(admin_url) as conn:
        conn.execute(statement)


def _drop_database(admin_url: str, name: str) -> None:
    from psycopg import sql

    with _connect(admin_url) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


class StatusDatabase:
    """A migrated database of one test's own: owners to create, rows to read back."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return "StatusDatabase(...)"  # the URL may hold a password

    def store(self, **options: Any) -> PostgresStatusStore:
        """The production store on this database (``options`` as :class:`PostgresStatusStore`)."""
        from middleware.stores.postgres import PostgresStatusStore

        return PostgresStatusStore(self.url, **options)

    def owner(self, *, tenant_name: str = "Test tenant") -> Owner:
        """A new organization and user, as Supabase would hold them: a job's row needs both."""
        tenant_id, user_id = uuid.uuid4(), uuid.uuid4()
        with _connect(self.url) as conn:
            conn.execute(
                "insert into public.organizations (id, name) values (%s, %s)", (tenant_id, tenant_name)
            )
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s)", (user_id, f"{user_id.hex}@example.test")
            )
        return Owner(str(tenant_id), str(user_id))

    def row(self, job_id: str) -> dict[str, Any] | None:
        """The job's ``public.job_status`` row (column -> value; the status as text), or None."""
        from psycopg.rows import dict_row

        with _connect(self.url, row_factory=dict_row) as conn:
            return conn.execute("select * from public.job_status where job_id = %s", (job_id,)).fetchone()


@pytest.fixture(scope="session")
def status_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("COURSEGEN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from .embedded import LocalPostgres

    bindir = os.environ.get("COURSEGEN_TEST_PG_BINDIR")
    data = tmp_path_factory.mktemp("status-postgres") / "data"
    server = LocalPostgres(data, bindir=Path(bindir) if bindir else None)
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def status_template_database(status_postgres: str) -> Iterator[str]:
    from .migrate import migrate

    name = f"status_template_{uuid.uuid4().hex[:12]}"  # sessions may share one server
    _create_database(status_postgres, name)
    try:
        migrate(_database_url(status_postgres, name))
        yield name
    finally:
        _drop_database(status_postgres, name)


@pytest.fixture
def status_database(status_postgres: str, status_template_database: str) -> Iterator[StatusDatabase]:
    name = f"status_test_{uuid.uuid4().hex[:12]}"
    _create_database(status_postgres, name, template=status_template_database)
    try:
        yield StatusDatabase(_database_url(status_postgres, name))
    finally:
        _drop_database(status_postgres, name)
