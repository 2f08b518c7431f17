"""PostgresStatusStore: psycopg 3 with a small pool, straight to the database."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ..conninfo import check_conninfo, describe_conninfo
from ..errors import PermanentStoreError, RejectedBatchError, TransientStoreError
from ..events import StatusEvent, UpdateRow
from .base import APPLIED, Outcome, encode_batch

logger = logging.getLogger(__name__)

# Only the events that did not apply come back: in the usual batch that is none, and the writer
# thread does not spend time reading hundreds of "applied" rows.
APPLY_SQL = "select idx, outcome, reason from public.job_status_apply(%s::jsonb) where outcome <> 'applied'"

# Events of jobs that have a row go first through job_status_update, as typed arrays (binary):
# half the backend CPU of job_status_apply per event. The jobs it did not update go on to
# job_status_apply, which inserts, or says why not.
UPDATE_SQL = (
    "select public.job_status_update(%b::text[], %b::text[]::public.job_state[], %b::int4[],"
    " %b::int2[], %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[],"
    " %b::float8[], %b::float8[])"
)

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
    """Writes a batch with psycopg, usually in one statement: ``public.job_status_update`` for
    the events of jobs that have a row (typed arrays, half the database CPU per event), then
    ``public.job_status_apply`` for the rest, if any (new jobs, stale events, anything the
    update path does not take). ``update_path=False`` sends everything to job_status_apply.

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
        update_path: bool = True,
    ) -> None:
        check_conninfo(conninfo)
        self._conninfo = conninfo
        self._where = describe_conninfo(conninfo)
        self._max_connections = max_connections
        self._timeout = timeout
        #: off for good once the database turns out not to have job_status_update
        self.update_path = update_path
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
        if not events:
            return []
        rows: list[UpdateRow] = []
        taken = bytearray(len(events))  # 1: the event is one of rows
        if self.update_path:
            candidates = [event.update_row() for event in events]
            # a job goes one way whole: job_status_apply folds its events and reports them together
            held = {event.job_id for event, row in zip(events, candidates, strict=True) if row is None}
            for i, row in enumerate(candidates):
                if row is not None and events[i].job_id not in held:
                    rows.append(row)
                    taken[i] = 1
        try:
            with self._get_pool().connection() as conn:
                updated = self._update(conn, rows) if rows else set()
                # the rest: events the update path does not take, and the jobs it did not update
                rest = [i for i, event in enumerate(events) if not (taken[i] and event.job_id in updated)]
                answers = []
                if rest:
                    payload = encode_batch([events[i] for i in rest])
                    answers = conn.execute(APPLY_SQL, (payload,)).fetchall()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
        except psycopg.Error as exc:
            if _transient(exc):
                raise TransientStoreError(_describe(exc, self._where), reason=_reason_for(exc)) from exc
            if _data_error(exc):
                raise RejectedBatchError(_describe(exc, self._where)) from exc
            raise PermanentStoreError(_describe(exc, self._where)) from exc
        except UnicodeError as exc:  # a text the driver cannot encode
            raise RejectedBatchError(f"{type(exc).__name__}: a text cannot be encoded") from exc
        outcomes = [Outcome(event.job_id, APPLIED) for event in events]
        for idx, outcome, reason in answers:
            i = rest[idx - 1]
            outcomes[i] = Outcome(events[i].job_id, outcome, reason)
        return outcomes

    def _update(self, conn: psycopg.Connection[Any], rows: list[UpdateRow]) -> set[str]:
        """The job ids of ``rows`` whose rows ``job_status_update`` wrote. Empty when it refused
        a value (a text too long, a progress out of range, ...): job_status_apply then takes
        every event, and rejects the bad one alone."""
        try:
            misses = conn.execute(UPDATE_SQL, update_params(rows)).fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            if _transient(exc) or isinstance(exc, psycopg.OperationalError):
                raise
            if isinstance(exc, pg_errors.UndefinedFunction):
                self.update_path = False
                logger.warning(
                    "public.job_status_update is missing (migrations not applied yet?); "
                    "writing every status through job_status_apply.",
                    extra={"action": "sync_update_path_off"},
                )
            return set()
        written = {row[0] for row in rows}
        written.difference_update(misses)
        return written

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def update_params(rows: Sequence[UpdateRow]) -> list[list[Any] | None]:
    """``UPDATE_SQL``'s parameters for these rows: one array per field, None for a field no
    event has (psycopg dumps a list element by element in Python, and most of a final
    status's twelve fields are empty)."""
    return [None if column.count(None) == len(column) else list(column) for column in zip(*rows, strict=True)]


def _data_error(exc: BaseException) -> bool:
    """A data exception (class 22) or an integrity constraint violation (class 23): the batch's
    content is to blame, not the database."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in ("22", "23") or isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


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
