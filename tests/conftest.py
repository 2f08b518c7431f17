"""Shared fixtures: real Redis and real PostgreSQL, started from the embedded wheels.

``COURSEGEN_TEST_REDIS_URL`` / ``COURSEGEN_TEST_DATABASE_URL`` name servers to use instead
(the database URL must be allowed to create databases); ``COURSEGEN_TEST_PG_BINDIR`` runs the
embedded-style cluster from another installation (CI: Debian's PostgreSQL 15). A service that
cannot start skips its tests locally and fails them in CI.

Databases follow procrastinate's pattern: migrations are applied once to a template, and every
test gets its own copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from coursegen.embedded import LocalPostgres, LocalRedis, LocalServiceError
from coursegen.migrate import migrate
from tests.support.db import create_database, database_url_for, drop_database

# Variables that would change what the code under test does; tests set what they need.
_CLEARED_PREFIXES = ("COURSEGEN_", "SUPABASE_")
_CLEARED = ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")
_KEEP = ("COURSEGEN_TEST_",)

TEMPLATE_DB = "coursegen_template"


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(message: str) -> None:
    """Skip locally, fail in CI: CI must prove everything."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _clean_environment() -> Iterator[None]:
    saved = {}
    for name in list(os.environ):
        if name.startswith(_KEEP):
            continue
        if name.startswith(_CLEARED_PREFIXES) or name in _CLEARED:
            saved[name] = os.environ.pop(name)
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis-compatible server for the whole session."""
    url = os.environ.get("COURSEGEN_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except (LocalServiceError, ImportError) as exc:
        unavailable(f"cannot start an embedded Redis: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


def pg_bindir() -> Path | None:
    value = os.environ.get("COURSEGEN_TEST_PG_BINDIR")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL on a real PostgreSQL server for the whole session."""
    url = os.environ.get("COURSEGEN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = start_postgres(tmp_path_factory.mktemp("pg") / "data")
    try:
        yield server.url()
    finally:
        server.stop()


def start_postgres(data_dir: Path) -> LocalPostgres:
    """A started cluster (from COURSEGEN_TEST_PG_BINDIR when set); unavailable() otherwise."""
    server = LocalPostgres(data_dir, bindir=pg_bindir())
    try:
        server.start()
    except (LocalServiceError, ImportError, OSError) as exc:
        unavailable(f"cannot start PostgreSQL: {exc}")
    return server


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A cluster of this test's own, for tests that stop the database in the middle."""
    server = start_postgres(tmp_path / "pg")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> str:
    """A database with the local Supabase base and every migration, to copy from."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{TEMPLATE_DB}"')
        conn.execute(f'create database "{TEMPLATE_DB}"')
    migrate(database_url_for(pg_admin_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, fully migrated database of this test's own."""
    name = create_database(pg_admin_url, template_database)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def status_postgres(pg_admin_url: str) -> str:
    """The testing kit's server (coursegen.testing) is the session's: no second cluster."""
    return pg_admin_url


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with nothing in it."""
    name = create_database(pg_admin_url, None)
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)
