"""PostgreSQL connection strings: checked before use, and described without their password.

libpq quotes a connection string, or a piece of it, in some of its errors: a bad percent-escape
in a URL's password (``invalid percent-encoded token: "<password>%zz"``), or an unencoded '@',
':' or '/' in it, whose tail then becomes the host, the port or the database, and then a host
name that does not resolve. psycopg and psycopg_pool put those errors in exceptions and log
lines. :func:`check_conninfo` parses a string as psycopg will, up front, and raises
:class:`~middleware.errors.InvalidConninfoError`, which says what is wrong without quoting any of
it; once it passes, no connection error carries the string (they name the host and port).
:func:`describe_conninfo` names the host, port and database, never the user or the password, for
messages and logs.
"""

from __future__ import annotations

import re

from .errors import InvalidConninfoError

_QUOTED = re.compile(r'"[^"\n]*"')


def check_conninfo(conninfo: str) -> dict[str, str]:
    """The parameters of ``conninfo`` (a URL or ``key=value`` pairs); InvalidConninfoError when
    psycopg could not use it, or when a piece of the password shows as the host, port or
    database (an unencoded '@', ':' or '/' in a URL's password)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {key: str(value) for key, value in conninfo_to_dict(conninfo).items()}
    except psycopg.Error as exc:  # libpq's message quotes the string: keep its words only
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidConninfoError(_QUOTED.sub(_hide, first_line)) from None
    if "@" in params.get("host", "") or "@" in params.get("hostaddr", ""):
        raise InvalidConninfoError("the host holds '@': percent-encode '@' in the password as %40")
    if not all(port.strip().isdigit() for port in params.get("port", "").split(",") if port.strip()):
        raise InvalidConninfoError(
            "the port is not a number: percent-encode ':' and '/' in the password (%3A, %2F)"
        )
    if "://" in conninfo and "@" in params.get("dbname", ""):
        raise InvalidConninfoError("the database name holds '@': percent-encode '/' in the password as %2F")
    return params


def describe_conninfo(conninfo: str) -> str:
    """``host:port/dbname`` of ``conninfo`` (``h1:5432,h2:5433/db`` for several hosts), for
    messages and logs; never the user or the password. Never raises."""
    try:
        params = check_conninfo(conninfo)
    except InvalidConninfoError:
        return "an invalid connection string"
    except Exception:  # noqa: BLE001 - a description must not fail the error it describes
        return "a connection string"
    hosts = (params.get("host") or params.get("hostaddr") or "the default host").split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:  # libpq: one port for every host
        ports *= len(hosts)
    where = ",".join(f"{host}:{port}" if port else host for host, port in zip(hosts, ports, strict=False))
    dbname = params.get("dbname")
    return f"{where}/{dbname}" if dbname else where


def _hide(quoted: re.Match[str]) -> str:
    text = quoted.group(0)
    return text if len(text) <= 3 else '"…"'  # '"="' says something, a longer one may be secret
