"""coursegen.embedded against real processes: embedded Valkey, the embedded PostgreSQL 18 build and
Debian's PostgreSQL 15 (skipped when absent, but a failure in CI).

Self-contained: no fixtures from conftest.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from coursegen.embedded import (
    LocalPostgres,
    LocalRedis,
    LocalServiceError,
    ServiceStartError,
    debian_pg_bindir,
)

pytestmark = pytest.mark.integration

EMBEDDED_MAJOR = 18
DEBIAN_MAJOR = 15


def _debian_bindir() -> Path:
    """Debian's PostgreSQL 15 bin directory; skip without it locally, fail without it in CI."""
    bindir = debian_pg_bindir(DEBIAN_MAJOR)
    if bindir is None:
        message = f"PostgreSQL {DEBIAN_MAJOR} is not installed in /usr/lib/postgresql/{DEBIAN_MAJOR}/bin"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must provide it: apt-get install postgresql-{DEBIAN_MAJOR})")
        pytest.skip(message)
    return bindir


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Callable[..., LocalPostgres]]:
    """Build LocalPostgres instances in tmp_path; every one is stopped at teardown."""
    made: list[LocalPostgres] = []

    def make(name: str = "pg", bindir: Path | None = None, port: int | None = None) -> LocalPostgres:
        server = LocalPostgres(tmp_path / name, bindir=bindir, port=port)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop(mode="immediate")


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def test_redis_restarts_on_the_same_port(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis")
    try:
        server.start()
        port, url = server.port, server.url
        assert url == f"redis://127.0.0.1:{port}/0"
        assert server.running
        with _redis_client(url) as client:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"

        server.start()  # idempotent: still the same server
        assert server.port == port
        with _redis_client(url) as client:
            assert client.get("k") == b"v"

        server.stop()
        assert not server.running
        with _redis_client(url) as client, pytest.raises(redis.ConnectionError):
            client.ping()
        server.stop()  # idempotent

        server.start()
        assert (server.port, server.url) == (port, url)
        with _redis_client(url) as client:
            assert client.ping() is True
        assert (tmp_path / "redis" / "valkey.log").is_file()
    finally:
        server.stop()


def test_redis_context_manager_without_data_dir() -> None:
    with LocalRedis() as server, _redis_client(server.url) as client:
        assert client.ping() is True
    assert not server.running


def test_redis_port_before_start_is_an_error() -> None:
    with pytest.raises(LocalServiceError):
        _ = LocalRedis().url


@pytest.mark.parametrize("flavour", ["embedded", "debian"])
def test_postgres_stop_start_keeps_port_and_data(
    flavour: str, postgres: Callable[..., LocalPostgres]
) -> None:
    bindir, major = (None, EMBEDDED_MAJOR) if flavour == "embedded" else (_debian_bindir(), DEBIAN_MAJOR)
    server = postgres(bindir=bindir)
    assert not server.running
    assert server.version == major

    server.start()
    assert server.running
    port = server.port
    url = server.url()
    assert url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert server.url("other db") == f"postgresql://postgres@127.0.0.1:{port}/other%20db"
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        (version,) = conn.execute("select version()").fetchone()
        assert version.startswith(f"PostgreSQL {major}.")
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name = any(%s)",
                (["max_connections", "listen_addresses", "unix_socket_directories", "fsync"],),
            ).fetchall()
        )
        assert settings == {
            "max_connections": "200",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "fsync": "on",
        }
        conn.execute("create table survives (n int)")
        conn.execute("insert into survives values (42)")

    # start() on a running cluster is a no-op; another object on the same directory adopts it.
    server.start()
    twin = LocalPostgres(server.data_dir, bindir=bindir)
    twin.start()
    assert twin.port == port

    server.stop()
    assert not server.running
    with pytest.raises(psycopg.OperationalError, match=r"(?i)connection refused"):
        psycopg.connect(url, connect_timeout=5)
    server.stop()  # idempotent

    server.start()
    assert server.port == port
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("select n from survives").fetchall() == [(42,)]

    server.restart()
    assert server.port == port
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_postgres_failed_start_reports_the_log(postgres: Callable[..., LocalPostgres]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        server = postgres(port=busy_port)
        with pytest.raises(ServiceStartError) as excinfo:
            server.start()
    assert excinfo.value.service == "PostgreSQL"
    assert "could not bind" in excinfo.value.log_tail
    assert str(busy_port) in str(excinfo.value)
    assert not server.running


def test_postgres_refuses_a_cluster_of_another_major(postgres: Callable[..., LocalPostgres]) -> None:
    bindir = _debian_bindir()
    server = postgres()
    server.start()
    server.stop()
    with pytest.raises(ServiceStartError, match=f"PostgreSQL {EMBEDDED_MAJOR} cluster"):
        LocalPostgres(server.data_dir, bindir=bindir).start()


def test_postgres_context_manager_stops(postgres: Callable[..., LocalPostgres]) -> None:
    with postgres() as server, psycopg.connect(server.url(), connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert not server.running


def test_debian_pg_bindir_only_when_initdb_exists() -> None:
    assert debian_pg_bindir(1) is None
    found = debian_pg_bindir(DEBIAN_MAJOR)
    assert found is None or (found / "initdb").is_file()
