"""Retention from outside the database: what ``coursegen purge`` runs where pg_cron does not.

The work is SQL's (migration ``20261205120000_job_status_retention``): ``job_status_expire``
ends rows unfinished with no news past a horizon (``failed``, ``Expired``),
``job_status_purge`` deletes finished rows past another and leaves tombstones, and
``job_status_purge_tombstones`` drops old tombstones. Each call handles one bounded batch in
its own transaction (the connection is in autocommit), so no call holds its locks for long;
:func:`run` calls each until a batch comes back short: the expiry first, so that what it ends
is purged in its turn once finished long enough.

The horizons are the row of ``public.job_status_retention``, the ones the pg_cron job reads;
arguments override them for one run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from middleware.conninfo import check_conninfo, describe_conninfo

logger = logging.getLogger(__name__)

#: the pg_cron job that migration 20261205120100 schedules
CRON_JOB = "job_status_retention"


class RetentionError(Exception):
    """Retention could not run: ``reason`` says why (``unreachable``, ``invalid``, ``not_migrated``)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RetentionSettings:
    """The horizons (see the migration's header) and the rows per statement."""

    keep_finished: dt.timedelta
    expire_after: dt.timedelta
    keep_tombstones: dt.timedelta
    batch_size: int


@dataclass(frozen=True)
class RetentionCounts:
    """What one run did."""

    expired: int = 0
    purged: int = 0
    tombstones_dropped: int = 0


def describe(interval: dt.timedelta) -> str:
    """``7 days``, ``1 day``, ``12:00:00``: an interval as a person reads it."""
    if interval.seconds == 0 and interval.microseconds == 0:
        return f"{interval.days} day" + ("" if interval.days == 1 else "s")
    return str(interval)


def read_settings(conn: psycopg.Connection[Any]) -> RetentionSettings:
    row = conn.execute(
        "select keep_finished, expire_after, keep_tombstones, batch_size from public.job_status_retention"
    ).fetchone()
    if row is None:
        raise RetentionError("public.job_status_retention has no row", reason="not_migrated")
    return RetentionSettings(*row)


def scheduled(conn: psycopg.Connection[Any]) -> str | None:
    """The schedule of the pg_cron job this database runs retention with, or None."""
    if not conn.execute("select to_regclass('cron.job') is not null").fetchone()[0]:  # type: ignore[index]
        return None
    row = conn.execute("select schedule from cron.job where jobname = %s", (CRON_JOB,)).fetchone()
    return None if row is None else str(row[0])


def _interval(conn: psycopg.Connection[Any], text: str, name: str) -> dt.timedelta:
    """``text`` as PostgreSQL reads an interval (``30 days``, ``7d``, ``12h``, ``2 weeks``; psycopg
    counts a month as 30 days)."""
    try:
        value = conn.execute("select %s::interval", (text,)).fetchone()[0]  # type: ignore[index]
    except psycopg.DataError as exc:
        raise RetentionError(
            f"{name}: {text!r} is not an interval (say '30 days' or '12h')", reason="invalid"
        ) from exc
    return value  # type: ignore[no-any-return]


def run(
    conninfo: str,
    *,
    older_than: str | None = None,
    expire_after: str | None = None,
    keep_tombstones: str | None = None,
    batch_size: int | None = None,
) -> tuple[RetentionCounts, RetentionSettings]:
    """Expire, purge, drop old tombstones, each in batches until none is left; returns the counts
    and the settings used (the database's, overridden by the arguments given)."""
    check_conninfo(conninfo)
    if batch_size is not None and not 1 <= batch_size <= 100_000:
        raise RetentionError("batch size: from 1 to 100000 rows", reason="invalid")
    try:
        conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, connect_timeout=10)
    except psycopg.OperationalError as exc:
        where = describe_conninfo(conninfo)
        raise RetentionError(
            f"cannot reach the database at {where} ({type(exc).__name__})", reason="unreachable"
        ) from exc
    try:
        with conn:
            return _run(conn, older_than, expire_after, keep_tombstones, batch_size)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
        raise RetentionError(
            "this database lacks the retention functions: run `coursegen migrate` first",
            reason="not_migrated",
        ) from exc
    except psycopg.OperationalError as exc:
        where = describe_conninfo(conninfo)
        raise RetentionError(
            f"lost the database at {where} ({type(exc).__name__})", reason="unreachable"
        ) from exc


def _run(
    conn: psycopg.Connection[Any],
    older_than: str | None,
    expire_after: str | None,
    keep_tombstones: str | None,
    batch_size: int | None,
) -> tuple[RetentionCounts, RetentionSettings]:
    settings = read_settings(conn)
    if older_than is not None:
        settings = replace(settings, keep_finished=_interval(conn, older_than, "--older-than"))
    if expire_after is not None:
        settings = replace(settings, expire_after=_interval(conn, expire_after, "--expire-after"))
    if keep_tombstones is not None:
        settings = replace(settings, keep_tombstones=_interval(conn, keep_tombstones, "--keep-tombstones"))
    if batch_size is not None:
        settings = replace(settings, batch_size=batch_size)
    if settings.keep_finished < dt.timedelta(0) or settings.keep_tombstones < dt.timedelta(0):
        raise RetentionError("a retention horizon cannot be negative", reason="invalid")
    if settings.expire_after <= dt.timedelta(0):
        raise RetentionError("--expire-after must be positive", reason="invalid")
    counts = RetentionCounts(
        expired=_batches(conn, "job_status_expire", settings.expire_after, settings.batch_size),
        purged=_batches(conn, "job_status_purge", settings.keep_finished, settings.batch_size),
        tombstones_dropped=_batches(
            conn, "job_status_purge_tombstones", settings.keep_tombstones, settings.batch_size
        ),
    )
    logger.info(
        "retention: %d expired, %d purged, %d tombstones dropped",
        counts.expired,
        counts.purged,
        counts.tombstones_dropped,
        extra={"action": "retention_run"},
    )
    return counts, settings


# the three functions, called by name with bound arguments
_CALLS = {
    "job_status_expire": "select public.job_status_expire(%s, %s)",
    "job_status_purge": "select public.job_status_purge(%s, %s)",
    "job_status_purge_tombstones": "select public.job_status_purge_tombstones(%s, %s)",
}


def _batches(conn: psycopg.Connection[Any], function: str, horizon: dt.timedelta, batch_size: int) -> int:
    """Calls ``function`` until a batch is short; each call is its own transaction."""
    total = 0
    while True:
        done = conn.execute(_CALLS[function], (horizon, batch_size)).fetchone()[0]  # type: ignore[index]
        total += done
        logger.debug("%s: %d rows", function, done, extra={"action": "retention_batch"})
        if done < batch_size:
            return total
