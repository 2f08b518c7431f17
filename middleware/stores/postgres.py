"""PostgresStatusStore: psycopg 3 with a small pool, straight to the database."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ..conninfo import check_conninfo, describe_conninfo
from ..errors import PermanentStoreError, RejectedBatchError, TransientStoreError
from ..events import StatusEvent
from .base import CancelRequest, Outcome, as_uuid, write, write_arrays

logger = logging.getLogger(__name__)

# The one write: public.job_status_write takes the batch as typed arrays (binary), one element
# per event, inserts the jobs without a row and updates the others, and answers with the events
# that did not apply (and a count of those that did).
WRITE_SQL = (
    "select public.job_status_write(%b::text[], %b::text[]::public.job_state[], %b::int4[],"
    " %b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::float8[], %b::int2[], %b::text[],"
    " %b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[], %b::float8[])"
)

# What the fleet's cancel poller reads and stamps (middleware/cancel_poll.py)
CANCEL_REQUESTS_SQL = (
    "select job_id, cancel_requested_at, live from public.job_status_cancel_requests(%s, %s, %s)"
)
STAMP_CANCELS_SQL = "select public.job_status_stamp_cancels(%s::text[], %s::timestamptz[])"
# How far behind retention is, in seconds (read by the cancel poller's lease holder)
RETENTION_LAG_SQL = "select public.job_status_retention_lag()"

# SQLSTATE classes worth another try: connection exceptions, insufficient resources, operator
# intervention (shutdown, cancel), and transaction rollbacks (deadlock, serialization).
_TRANSIENT_CLASSES = ("08", "53", "57", "40", "58")


def _reason_for(exc: BaseException) -> str:
    if isinstance(exc, PoolTimeout | pg_errors.QueryCanceled):
        return "timeout"
    if isinstance(exc, pg_errors.TransactionRollback):
        return "conflict"
    return "connection"


class PostgresStatusStore:
    """Writes a batch with psycopg in one statement: ``public.job_status_write`` with the
    events as typed arrays (binary), which answers for every event.

    The pool is created on first use, so a store built before a fork opens its connections
    in the child. ``prepare_threshold=None`` keeps it working through Supabase's transaction
    pooler (no server-side prepared statements). ``conninfo`` is checked at once
    (:class:`~middleware.errors.InvalidConninfoError`, which never quotes it); errors name the
    host, never the password.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_connections: int = 2,
        timeout: float = 5.0,
    ) -> None:
        check_conninfo(conninfo)
        self._conninfo = conninfo
        self._where = describe_conninfo(conninfo)
        self._max_connections = max_connections
        self._timeout = timeout
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the conninfo: it may hold a password
        return f"PostgresStatusStore(max_connections={self._max_connections}, timeout={self._timeout})"

    def _get_pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._max_connections,
                    timeout=self._timeout,
                    open=False,
                    kwargs={
                        "autocommit": True,
                        "prepare_threshold": None,
                        "connect_timeout": max(1, int(self._timeout)),
                    },
                    name="job-status",
                )
                self._pool.open(wait=False)
            return self._pool

    def prepare(self) -> None:
        """Create the pool: its connections open in the background (no wait here)."""
        self._get_pool()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        return write(events, self._call) if events else []

    def _call(self, events: Sequence[StatusEvent]) -> Any:
        """``job_status_write``'s answer for ``events``: one statement."""
        arrays: list[Any] = write_arrays(events)
        arrays[3] = [as_uuid(text) for text in arrays[3]]  # owners in binary
        arrays[4] = [as_uuid(text) for text in arrays[4]]
        try:
            with self._get_pool().connection() as conn:
                row = conn.execute(WRITE_SQL, arrays).fetchone()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if _disconnected(exc):
                self._discard_pool()
            raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
        except psycopg.Error as exc:
            if _transient(exc):
                raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
            if _data_error(exc):
                raise RejectedBatchError(_describe(exc, self._where)) from exc
            raise PermanentStoreError(_describe(exc, self._where)) from exc
        except UnicodeError as exc:  # a text the driver cannot encode
            raise RejectedBatchError(f"{type(exc).__name__}: a text cannot be encoded") from exc
        return row[0] if row is not None else None

    def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
        rows = self._query(CANCEL_REQUESTS_SQL, (since, after_job_id, limit))
        return [CancelRequest(job_id, when, live) for job_id, when, live in rows]

    def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
        params = ([job_id for job_id, _ in requests], [when for _, when in requests])
        return [job_id for (job_id,) in self._query(STAMP_CANCELS_SQL, params)]

    def retention_lag(self) -> float:
        [(lag,)] = self._query(RETENTION_LAG_SQL, ())
        return float(lag)

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection; errors classified as for :meth:`apply`."""
        try:
            with self._get_pool().connection() as conn:
                return conn.execute(statement, params).fetchall()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if _disconnected(exc):
                self._discard_pool()
            raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
        except psycopg.Error as exc:
            if _transient(exc):
                raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
            raise PermanentStoreError(_describe(exc, self._where)) from exc

    def _discard_pool(self) -> None:
        """Forget a pool that lost its database; the next call builds a new one.

        psycopg_pool retries a failed connection with a doubling delay (1, 2, 4, 8, 16 s...),
        so after an outage of half a minute a pool may wait a quarter of a minute more before
        it tries again: a fresh pool connects at once. The old one is closed in the background
        (closing waits for its threads)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            threading.Thread(
                target=pool.close, kwargs={"timeout": 5.0}, name="job-status-pool-close", daemon=True
            ).start()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _data_error(exc: BaseException) -> bool:
    """A data exception (class 22) or an integrity constraint violation (class 23): the batch's
    content is to blame, not the database."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in ("22", "23") or isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def _disconnected(exc: BaseException) -> bool:
    """The database could not be reached (no connection in time, a connection lost or refused,
    the server shutting down), as opposed to a statement cancelled or timed out."""
    if isinstance(exc, PoolTimeout):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return not sqlstate or sqlstate[:2] == "08" or sqlstate in ("57P01", "57P02", "57P03")


def _transient(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in _TRANSIENT_CLASSES


def _describe(exc: BaseException, where: str) -> str:
    """A message for logs: the error class, the database's host and the SQLSTATE, never the
    conninfo (libpq's own text may quote it; the server's primary message does not)."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or type(exc).__name__
    return f"{type(exc).__name__} at {where} ({sqlstate or 'no sqlstate'}): {text}"
