"""Connection strings: a bad one is refused up front without being quoted, and a description
names the host, never the password."""

from __future__ import annotations

import traceback

import pytest

from coursegen.settings import ConfigurationError, load_settings
from middleware.conninfo import check_conninfo, describe_conninfo
from middleware.errors import InvalidConninfoError

PASSWORD = "S3cret-Passw0rd"


def pieces(secret: str) -> set[str]:
    return {secret[i : i + 5] for i in range(len(secret) - 4)}


def assert_hidden(text: str) -> None:
    assert not [piece for piece in pieces(PASSWORD) if piece in text], text


BAD = [
    pytest.param(
        f"postgresql://app:{PASSWORD}%zz@db.internal:5432/app", "percent-encoded", id="bad-percent-escape"
    ),
    pytest.param(
        f"postgresql://app:{PASSWORD}%2@db.internal/app", "percent-encoded", id="short-percent-escape"
    ),
    pytest.param(f"postgresql://app:{PASSWORD}%00@db.internal/app", "%00", id="nul-escape"),
    pytest.param(f"postgresql://app:{PASSWORD[:6]}@{PASSWORD[6:]}@db.internal/app", "'@'", id="unencoded-at"),
    pytest.param(
        f"postgresql://app:{PASSWORD[:6]}/{PASSWORD[6:]}@db.internal/app", "port", id="unencoded-slash"
    ),
    pytest.param(
        f"postgresql://app:1234/{PASSWORD}@db.internal/app", "database name", id="slash-after-digits"
    ),
    pytest.param(f"postgresql://app:{PASSWORD[:6]} {PASSWORD[6:]}@db.internal/app", "spaces", id="space"),
    pytest.param(f"postgresql://app:{PASSWORD}@[::1/app", "IPv6", id="bad-ipv6"),
    pytest.param(f"postgresql://app:{PASSWORD}@db/app?{PASSWORD}=1", "query parameter", id="bad-query"),
    pytest.param(f"host=db password={PASSWORD} port", 'missing "="', id="keyword-without-value"),
    pytest.param(f"host=db password='{PASSWORD}", "unterminated", id="unterminated-quote"),
    pytest.param(f"host=db {PASSWORD}=x", "invalid connection option", id="password-as-option"),
    pytest.param(PASSWORD, 'missing "="', id="only-the-password"),
]


@pytest.mark.parametrize(("conninfo", "problem"), BAD)
def test_a_bad_connection_string_is_refused_without_being_quoted(conninfo: str, problem: str) -> None:
    with pytest.raises(InvalidConninfoError) as caught:
        check_conninfo(conninfo)
    exc = caught.value
    assert problem in exc.problem
    assert isinstance(exc, ValueError)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)  # no libpq text
    assert_hidden("\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))]))
    assert describe_conninfo(conninfo) == "an invalid connection string"


@pytest.mark.parametrize(
    ("conninfo", "described"),
    [
        (
            f"postgresql://postgres:{PASSWORD}@db.abc.supabase.co:5432/postgres",
            "db.abc.supabase.co:5432/postgres",
        ),
        (f"postgresql://app:{PASSWORD}%40x@db.internal/app?sslmode=require", "db.internal/app"),
        (f"postgresql://app:{PASSWORD}@h1:5432,h2:5433/app", "h1:5432,h2:5433/app"),
        (
            f"host=/var/run/postgresql port=5433 dbname=app user=app password='{PASSWORD}'",
            "/var/run/postgresql:5433/app",
        ),
        (f"postgresql://:{PASSWORD}@127.0.0.1", "127.0.0.1"),
        ("postgresql:///app", "the default host/app"),
    ],
)
def test_a_description_names_host_port_and_database_only(conninfo: str, described: str) -> None:
    check_conninfo(conninfo)  # usable
    assert describe_conninfo(conninfo) == described


def test_the_settings_refuse_a_bad_database_url_without_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{PASSWORD}%zz@db.internal:5432/app")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == (
        "invalid configuration: DATABASE_URL: invalid PostgreSQL connection string: "
        'invalid percent-encoded token: "…"'
    )
    assert_hidden("".join(traceback.format_exception(caught.value)))
