"""The service-role key never leaks: not in logs (at DEBUG, with httpx's own records), exception
messages, tracebacks, reprs or the metrics exposition; and an actor's error message is stored
redacted and capped, whatever secrets it quotes. The database password never leaks either: not
in the PostgreSQL store's logs and errors (psycopg's and psycopg_pool's records included), nor
in what the `coursegen` commands print, even when DATABASE_URL is malformed.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import prometheus_client
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from pydantic import SecretStr

from coursegen.settings import Settings
from middleware.errors import InvalidConninfoError, StoreError
from middleware.events import MAX_ERROR_CHARS, Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox
from middleware.status_sync import JobStatusMiddleware
from middleware.stores.base import StatusStore
from middleware.stores.postgres import PostgresStatusStore
from middleware.stores.supabase import SupabaseStatusStore
from middleware.wiring import install
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.postgrest import (
    STAND_IN_URL,
    TEST_SECRET_KEY,
    PostgrestStandIn,
    mint_jwt,
    serve,
    service_key,
)
from tests.support.processes import BIN, app_env

pytestmark = [pytest.mark.integration]


def fragments(key: str) -> list[str]:
    """The key and its signature (a JWT) or its random part (``sb_secret_<random>_<checksum>``):
    none may show anywhere."""
    if key.startswith("sb_"):
        return [key, key.split("_")[2]]
    return [key, key.rsplit(".", 1)[-1]]


def assert_hidden(key: str, text: str, where: str) -> None:
    for fragment in fragments(key):
        assert fragment not in text, f"the key shows in {where}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rest_url(database_url: str) -> Iterator[str]:
    stand_in = PostgrestStandIn(database_url)
    with serve(stand_in) as url:
        yield url
    stand_in.close()


@pytest.fixture
def down_rest_url() -> Iterator[str]:
    """PostgREST whose database is down: every request answers 503."""
    stand_in = PostgrestStandIn(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with serve(stand_in) as url:
        yield url


def run_writer(store_factory: Callable[[], StatusStore], events: list[StatusEvent], **kw: Any) -> None:
    writer = StatusWriter(store_factory, flush_interval=0.01, sleep=lambda _s: None, **kw)
    for event in events:
        writer.submit(event)
    assert writer.flush(timeout=30)
    assert writer.close(timeout=30)


def test_the_key_never_reaches_the_logs_or_the_metrics(
    caplog: pytest.LogCaptureFixture, database_url: str, rest_url: str, down_rest_url: str, redis_url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    key = service_key()
    forged = mint_jwt("service_role", secret="a-secret-that-is-not-the-projects-at-all-xx")
    owner = create_owner(database_url)
    good = StatusEvent(f"ok-{uuid.uuid4()}", Status.COMPLETED, 1, owner, "a", "q", 10.0, result={"n": 1})
    unknown_tenant = Owner(str(uuid.uuid4()), owner.user_id)
    rejected = StatusEvent(f"bad-{uuid.uuid4()}", Status.COMPLETED, 1, unknown_tenant, "a", "q", 10.0)

    # a succeeding batch (with one rejected event), over a real socket
    run_writer(lambda: SupabaseStatusStore(rest_url, SecretStr(key), timeout=5), [good, rejected])
    assert fetch_rows(database_url, [good.job_id])[good.job_id]["status"] == "completed"
    # a failing batch: the database behind the API is down; retried, then spilled to the outbox
    outbox = RedisOutbox(redis.Redis.from_url(redis_url))
    down = StatusEvent(f"down-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", 11.0)
    run_writer(
        lambda: SupabaseStatusStore(down_rest_url, SecretStr(key), timeout=5),
        [down],
        outbox=outbox,
        retry_attempts=2,
    )
    assert outbox.depth() == 1
    # a batch refused as a whole: a key the project did not sign
    run_writer(
        lambda: SupabaseStatusStore(rest_url, forged, timeout=5),
        [StatusEvent(f"forged-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", 12.0)],
        outbox=outbox,
        retry_attempts=1,
    )

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s")
    text = "\n".join(formatter.format(record) + repr(record.__dict__) for record in caplog.records)
    # what was logged covers what this test is about
    assert any(
        r.name.startswith(("httpx", "httpcore")) and r.levelno == logging.DEBUG for r in caplog.records
    )
    assert "rejected by the store" in text
    assert "spilling" in text
    assert "HTTP 401 (PGRST301)" in text
    for secret in (key, forged):
        assert_hidden(secret, text, "the logs")

    exposition = prometheus_client.generate_latest().decode()
    assert "job_status_sync_writes_total" in exposition
    for secret in (key, forged):
        assert_hidden(secret, exposition, "the metrics")


def test_a_secret_api_key_never_reaches_the_logs(
    caplog: pytest.LogCaptureFixture, database_url: str, rest_url: str, down_rest_url: str, redis_url: str
) -> None:
    """A new-style secret key (not a JWT: supabase-py sends it as apikey and as bearer) works,
    and shows nowhere, whether the batch lands, the database is down or the key is unknown."""
    caplog.set_level(logging.DEBUG)
    unknown = "sb_secret_" + "U" * 22 + "_0badc0de"
    owner = create_owner(database_url)
    good = StatusEvent(f"ok-{uuid.uuid4()}", Status.COMPLETED, 1, owner, "a", "q", 10.0, result={"n": 1})
    run_writer(lambda: SupabaseStatusStore(rest_url, SecretStr(TEST_SECRET_KEY), timeout=5), [good])
    assert fetch_rows(database_url, [good.job_id])[good.job_id]["status"] == "completed"
    outbox = RedisOutbox(redis.Redis.from_url(redis_url))
    for url, key in ((down_rest_url, TEST_SECRET_KEY), (rest_url, unknown)):
        event = StatusEvent(f"no-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", 11.0)
        store = SupabaseStatusStore(url, key, timeout=5)
        run_writer(lambda store=store: store, [event], outbox=outbox, retry_attempts=1)
    assert outbox.depth() == 2

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s")
    text = "\n".join(formatter.format(record) + repr(record.__dict__) for record in caplog.records)
    assert "HTTP 401 (no code)" in text and "HTTP 503 (PGRST002)" in text
    for secret in (TEST_SECRET_KEY, unknown):
        assert_hidden(secret, text, "the logs")


@pytest.fixture
def stalled_url() -> Iterator[str]:
    release = threading.Event()

    class Stall(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            release.wait(30)
            return httpx.Response(504)

    with serve(Stall()) as url:
        yield url
        release.set()


@pytest.mark.parametrize(
    "failure",
    [
        "unsigned",
        "database-down",
        "refused",
        "timeout",
        "anon-role",
        "unknown-secret-key",
        "secret-key-database-down",
        "secret-key-timeout",
    ],
)
def test_errors_and_reprs_never_show_the_key(
    failure: str, database_url: str, rest_url: str, down_rest_url: str, stalled_url: str
) -> None:
    signed = service_key()
    key, url = {
        "unsigned": (mint_jwt("service_role", secret="another-projects-secret-of-enough-length"), rest_url),
        "database-down": (signed, down_rest_url),
        "refused": (signed, f"http://127.0.0.1:{free_port()}"),
        "timeout": (signed, stalled_url),
        "anon-role": (mint_jwt("anon"), rest_url),
        "unknown-secret-key": ("sb_secret_" + "K" * 22 + "_abcdef12", rest_url),
        "secret-key-database-down": (TEST_SECRET_KEY, down_rest_url),
        "secret-key-timeout": (TEST_SECRET_KEY, stalled_url),
    }[failure]
    store = SupabaseStatusStore(url, key, timeout=0.5)
    event = StatusEvent("job", Status.ACTIVE, 1, Owner(str(uuid.uuid4()), str(uuid.uuid4())), "a", "q", 1.0)
    with pytest.raises(StoreError) as caught:
        store.apply([event])
    store.close()
    exc = caught.value
    seen = "\n".join(
        [
            str(exc),
            repr(exc),
            "".join(traceback.format_exception(exc)),
            repr(exc.__cause__),
            str(exc.__cause__),
            repr(store),
            str(store),
        ]
    )
    assert_hidden(key, seen, "an error or a repr")


def test_settings_never_show_the_key() -> None:
    key = service_key()
    settings = Settings(SUPABASE_URL=STAND_IN_URL, SUPABASE_SERVICE_KEY=key)
    assert settings.supabase_service_role_key is not None
    assert settings.supabase_service_role_key.get_secret_value() == key
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert_hidden(key, text, "the settings")


@pytest.fixture
def tracked_broker(database_url: str) -> Iterator[tuple[StubBroker, StatusWriter]]:
    """A StubBroker wired like production, writing through the supabase store and the stand-in."""
    stand_in = PostgrestStandIn(database_url)
    http = httpx.Client(transport=stand_in)
    writer = StatusWriter(
        lambda: SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http), flush_interval=0.01
    )
    broker = StubBroker()
    install(broker, JobStatusMiddleware(writer))
    broker.emit_after("process_boot")
    yield broker, writer
    broker.close()
    writer.close(timeout=30)
    http.close()
    stand_in.close()


def test_a_stored_error_message_is_redacted_and_capped(
    tracked_broker: tuple[StubBroker, StatusWriter], database_url: str
) -> None:
    broker, writer = tracked_broker
    key = service_key()
    secrets = {
        "the service key": key,
        "a database password": "hunter2hunter2",
        "a redis password": "swordfish-swordfish",
        "a PGPASSWORD": "open-sesame-42",
        "a quoted password": "letmein-letmein",
        "a new-style key": "sb_secret_AbCdEf0123456789xyz",
        "a password after a space": "Tr0ub4dor99x",
        "a token after a space": "ab12cd34ef56",
    }
    message = (
        f"cannot reach the API with apikey {key}; "
        "fallback postgresql://app:hunter2hunter2@db.internal:5432/app failed; "
        "outbox redis://:swordfish-swordfish@cache.internal:6379/0 down; "
        "env PGPASSWORD=open-sesame-42 "
        "config {'user': 'app', 'password': 'letmein-letmein'} "
        "key sb_secret_AbCdEf0123456789xyz; ftp login with passwd Tr0ub4dor99x refused; "
        "refresh token ab12cd34ef56 expired " + "and then some more context " * 100
    )

    @dramatiq.actor(broker=broker, track_status=True, max_retries=0)
    def leaky(payload: dict[str, str]) -> None:
        raise RuntimeError(message)

    owner = create_owner(database_url)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        job_id = leaky.send({"tenant_id": owner.tenant_id, "user_id": owner.user_id}).message_id

        def failed_row() -> dict[str, Any] | None:
            writer.flush(timeout=5)
            row = fetch_rows(database_url, [job_id]).get(job_id)
            return row if row and row["status"] == "failed" else None

        row = wait_for(failed_row, timeout=30, what="the failed row")
    finally:
        worker.stop()
    stored = row["error_message"]
    assert row["error_type"] == "RuntimeError"
    assert [what for what, secret in secrets.items() if secret in stored] == [], "secrets stored"
    assert_hidden(key, stored, "the stored error message")
    assert "[REDACTED]" in stored
    assert "db.internal:5432" in stored and "cache.internal" in stored, "context around secrets survives"
    assert "ftp login with passwd [REDACTED] refused" in stored
    assert len(stored) <= MAX_ERROR_CHARS


# -- the database password ---------------------------------------------------------------------

PASSWORD = "Pg-S3cret-Passw0rd"


def database_urls(port: int) -> dict[str, str]:
    """DATABASE_URL values with the password, for a server that is not there: well formed, with a
    bad percent-escape (psycopg quotes the token), with an unencoded '@' (its tail becomes the
    host, which psycopg names when it cannot resolve it)."""
    return {
        "unreachable": f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app",
        "bad-percent-escape": f"postgresql://app:{PASSWORD}%zz@127.0.0.1:{port}/app",
        "unencoded-at": f"postgresql://app:{PASSWORD[:7]}@{PASSWORD[7:]}@127.0.0.1:{port}/app",
    }


def assert_no_password(text: str, where: str) -> None:
    pieces = {PASSWORD[i : i + 5] for i in range(len(PASSWORD) - 4)}
    shown = sorted(piece for piece in pieces if piece in text)
    assert not shown, f"pieces of the password show in {where}: {shown}"


@pytest.mark.parametrize("kind", ["unreachable", "bad-percent-escape", "unencoded-at"])
def test_the_database_password_never_reaches_the_store_logs_or_errors(
    kind: str, caplog: pytest.LogCaptureFixture, redis_url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    conninfo = database_urls(port)[kind]
    event = StatusEvent(
        f"db-{uuid.uuid4()}", Status.ACTIVE, 1, Owner(str(uuid.uuid4()), str(uuid.uuid4())), "a", "q", 1.0
    )

    if kind == "unreachable":
        store = PostgresStatusStore(conninfo, timeout=1)
        with pytest.raises(StoreError) as caught:
            store.apply([event])
        store.close()
        exc: BaseException = caught.value
        assert f"127.0.0.1:{port}/app" in str(exc)  # the host, for whoever reads the logs
    else:
        with pytest.raises(InvalidConninfoError) as refused:
            PostgresStatusStore(conninfo, timeout=1)
        exc = refused.value
    seen = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(exc.__cause__)]
    assert_no_password("\n".join(seen), "an error")

    # through the writer: retried, then spilled to the outbox (nothing lost), all of it logged
    outbox = RedisOutbox(redis.Redis.from_url(redis_url))
    before = outbox.depth()
    run_writer(lambda: PostgresStatusStore(conninfo, timeout=1), [event], outbox=outbox, retry_attempts=2)
    assert outbox.depth() == before + 1

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(
        formatter.format(record) + repr(record.args) + repr(record.__dict__.get("exc_text"))
        for record in caplog.records
    )
    if kind == "unreachable":  # psycopg_pool's own warnings were there to be checked
        assert any(r.name == "psycopg.pool" and r.levelno == logging.WARNING for r in caplog.records)
        assert f"127.0.0.1:{port}/app" in text
    else:
        assert "invalid PostgreSQL connection string" in text
    assert "spilling" in text
    assert_no_password(text, "the logs")


def coursegen(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "coursegen"), "--verbose", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["unreachable", "bad-percent-escape", "unencoded-at"])
def test_the_commands_never_print_the_database_password(kind: str, tmp_path: Path) -> None:
    port = free_port()
    env = app_env(DATABASE_URL=database_urls(port)[kind], REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    source = tmp_path / "notes.md"
    source.write_text("# Notes\n\n" + "Bees make honey from nectar. " * 20, encoding="utf-8")
    owner = ("--tenant", str(uuid.uuid4()), "--user", str(uuid.uuid4()))
    commands = [
        ("migrate",),
        ("status", "some-job", *owner),
        ("watch", "some-job", "--timeout", "5", *owner),
        ("jobs", *owner),
        ("cancel", "some-job", *owner),
        ("submit", str(source), *owner),
        ("admin", "status", "some-job"),
    ]
    for args in commands:
        done = coursegen(env, *args)
        printed = done.stdout + done.stderr
        assert_no_password(printed, f"coursegen {args[0]}")
        lines = done.stderr.strip().splitlines()
        command = " ".join(args[:2]) if args[0] == "admin" else args[0]
        assert lines and lines[-1].startswith(f"coursegen {command}: "), printed
        if kind == "unreachable":  # the class of the error and where, never the password
            assert done.returncode == 3, printed
            assert lines[-1].endswith(f"cannot reach the database at 127.0.0.1:{port}/app (OperationalError)")
        else:
            assert done.returncode == 2, printed
            assert "DATABASE_URL: invalid PostgreSQL connection string" in lines[-1]
