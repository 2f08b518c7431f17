"""SupabaseStatusStore: the official ``supabase`` client, one PostgREST RPC per batch.

Production workers write statuses through Supabase's REST API with the service-role key:
``POST /rest/v1/rpc/job_status_write`` with the batch as JSON arrays, one per parameter
(``{"job_ids": [...], "statuses": [...], ...}``; PostgREST binds each to the function's typed
array with ``json_to_record``), answered by the same SQL function the Postgres store calls,
in one statement. The client is built on first use, so a store constructed before a fork opens
its connections in the child.

The client's own timeout handling truncates a float to an int (0.5 s becomes 0), so the store
hands it an ``httpx.Client`` with an explicit ``httpx.Timeout``. PostgREST's error objects carry
no HTTP status, so a response hook on that client remembers it. POST is never retried by the
client: the writer's retries are the only ones.

The database, not the client, must end a slow write: Supabase runs PostgREST's requests under
the ``authenticator`` role's ``statement_timeout`` and ``lock_timeout`` (8 s; ``service_role``
sets none of its own), so a statement cut there is rolled back and answered as an error. A
client that gave up first could not tell whether the batch committed; hence a timeout above the
server's (10 s by default).

The answer is one JSON object, not rows, so PostgREST's ``db-max-rows`` (Supabase's "Max Rows")
cannot cut it short; it names every event that did not apply and counts the others, and the
store checks that the two add up to the batch: no missing answer ever reads as "applied".
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from ..errors import (
    BatchTooLargeError,
    PermanentStoreError,
    RejectedBatchError,
    StoreError,
    TransientStoreError,
)
from ..events import StatusEvent
from ..redaction import clean_text, redact
from .base import REQUIRED_PARAMS, WRITE_FUNCTION, WRITE_PARAMS, CancelRequest, Outcome, write, write_arrays

if TYPE_CHECKING:
    from supabase import Client

logger = logging.getLogger(__name__)

RPC_FUNCTION = WRITE_FUNCTION
#: what the fleet's cancel poller calls (middleware/cancel_poll.py)
CANCEL_REQUESTS_FUNCTION = "job_status_cancel_requests"
STAMP_CANCELS_FUNCTION = "job_status_stamp_cancels"
#: what the cancel poller's lease holder reads once a minute: how far behind retention is
RETENTION_LAG_FUNCTION = "job_status_retention_lag"

#: PostgREST's own codes for "the database is unreachable right now": could not connect (000),
#: internal connection error (001), schema cache not loaded (002), pool acquisition timeout (003).
_TRANSIENT_PGRST = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
#: SQLSTATEs worth another try, as for the Postgres store: connection exceptions, transaction
#: rollbacks (deadlock, serialization), insufficient resources, operator intervention (statement
#: timeout, shutdown), system errors; and lock_not_available, which lock_timeout raises
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_SQLSTATES = frozenset({"55P03"})
_MAX_DETAIL_CHARS = 300
#: above the 8 s statement_timeout and lock_timeout Supabase sets on ``authenticator``
DEFAULT_TIMEOUT = 10.0


class SupabaseStatusStore:
    """Calls ``public.job_status_write`` through PostgREST with the service-role key.

    Parameters:
      url: the project URL (``https://<ref>.supabase.co``).
      service_key: the service-role key; kept as a ``SecretStr``, never shown in a repr, a log
        line or an error message.
      timeout: seconds for connect, read, write and pool waits of the client this store creates;
        keep it above the server's statement_timeout (8 s on Supabase), so that a slow write is
        ended, and rolled back, by the database rather than abandoned by the client.
      http_client: an ``httpx.Client`` to use instead (tests hand one with their own transport);
        the store adds a response hook to it and leaves closing it to its owner.
    """

    def __init__(
        self,
        url: str,
        service_key: SecretStr | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._url = url
        self._key = service_key if isinstance(service_key, SecretStr) else SecretStr(service_key)
        self._timeout = timeout
        self._given_http = http_client
        self._lock = threading.Lock()
        self._local = threading.local()  # the HTTP status of this thread's last response
        self._http: httpx.Client | None = None
        self._client: Client | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())

    def __repr__(self) -> str:
        return f"SupabaseStatusStore(url={redact(self._url)!r}, timeout={self._timeout})"

    def _forget(self) -> None:
        """In a forked child: drop the parent's client (its sockets belong to the parent)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._http = None
        self._client = None

    def _remember_status(self, response: httpx.Response) -> None:
        self._local.status = response.status_code

    def _get_client(self) -> Client:
        with self._lock:
            if self._client is None:
                from supabase.lib.client_options import SyncClientOptions

                from supabase import create_client

                if self._given_http is not None:
                    http = self._given_http
                    if self._remember_status not in http.event_hooks["response"]:
                        http.event_hooks["response"].append(self._remember_status)
                else:
                    http = self._http = httpx.Client(
                        timeout=httpx.Timeout(self._timeout),
                        event_hooks={"response": [self._remember_status]},
                    )
                self._client = create_client(
                    self._url,
                    self._key.get_secret_value(),
                    options=SyncClientOptions(
                        httpx_client=http,
                        auto_refresh_token=False,
                        persist_session=False,
                        postgrest_client_retry=False,
                    ),
                )
            return self._client

    def prepare(self) -> None:
        """Import and build the client (no request is made)."""
        self._get_client()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        return write(events, self._call) if events else []

    def _call(self, events: Sequence[StatusEvent]) -> Any:
        """``job_status_write``'s answer for ``events``: one round trip."""
        # a field no event has is left out (the function's default is null); every value is
        # JSON as it is (the event made its floats finite and its texts valid)
        arrays = write_arrays(events)
        params = {
            name: array
            for i, ((name, _attribute), array) in enumerate(zip(WRITE_PARAMS, arrays, strict=True))
            if array is not None or i < REQUIRED_PARAMS
        }
        return self._call_rpc(RPC_FUNCTION, params, events=len(events))

    def cancel_requests(self, since: dt.datetime, after_job_id: str, limit: int) -> list[CancelRequest]:
        args = {"since": since.isoformat(), "after_job_id": after_job_id, "max_rows": limit}
        rows = self._rpc(CANCEL_REQUESTS_FUNCTION, args)
        try:
            return [
                CancelRequest(
                    str(row["job_id"]),
                    dt.datetime.fromisoformat(row["cancel_requested_at"]),
                    bool(row["live"]),
                )
                for row in rows
            ]
        except (TypeError, KeyError, ValueError) as exc:
            raise PermanentStoreError(
                f"unexpected answer from {CANCEL_REQUESTS_FUNCTION}", reason="bad_response"
            ) from exc

    def stamp_cancels(self, requests: Sequence[tuple[str, dt.datetime]]) -> list[str]:
        args = {
            "job_ids": [job_id for job_id, _ in requests],
            "requested_ats": [when.isoformat() for _, when in requests],
        }
        return [str(job_id) for job_id in self._rpc(STAMP_CANCELS_FUNCTION, args)]

    def retention_lag(self) -> float:
        # a function returning a scalar: PostgREST answers the bare JSON number
        lag = self._call_rpc(RETENTION_LAG_FUNCTION, {})
        if type(lag) not in (int, float) or not 0 <= lag < float("inf"):
            raise PermanentStoreError(
                f"unexpected answer from {RETENTION_LAG_FUNCTION}", reason="bad_response"
            )
        return float(lag)

    def _rpc(self, function: str, args: dict[str, Any]) -> list[Any]:
        """A function answering a JSON array, other than job_status_write: one POST, errors
        classified as for it."""
        data = self._call_rpc(function, args)
        if not isinstance(data, list):
            raise PermanentStoreError(f"unexpected answer from {function}", reason="bad_response")
        return data

    def _call_rpc(self, function: str, args: dict[str, Any], *, events: int = 0) -> Any:
        """One POST to ``function``, its answer as JSON; errors classified (``events``: how many
        status events the request carries, for a batch too large)."""
        from postgrest.exceptions import APIError

        self._local.status = None
        try:
            data = self._get_client().rpc(function, args).execute().data
        except httpx.TimeoutException as exc:
            raise TransientStoreError(
                f"Supabase did not answer within {self._timeout}s ({type(exc).__name__})", reason="timeout"
            ) from exc
        except httpx.RequestError as exc:
            raise TransientStoreError(
                f"cannot reach Supabase: {type(exc).__name__}: {self._clean(str(exc))}", reason="connection"
            ) from exc
        except APIError as exc:
            raise self._error_for(getattr(self._local, "status", None), exc, events) from exc
        except UnicodeError as exc:  # a text the client cannot encode
            raise RejectedBatchError(f"{type(exc).__name__}: a text cannot be encoded") from exc
        return data

    def _error_for(self, status: int | None, exc: Any, events: int) -> StoreError:
        """Classified by the SQLSTATE when PostgREST passed one on, as the Postgres store does
        (PostgREST's status says 500 for a deadlock and a bug alike, 400 for a data error and a
        ``raise``), else by PostgREST's own code or the HTTP status (a gateway's answers carry
        no code)."""
        code = str(exc.code or "")
        text = f"PostgREST answered HTTP {status or '?'} ({code or 'no code'}): {self._clean(exc.message)}"
        if status == 413:  # a gateway's body limit
            return BatchTooLargeError(text, events=events, reason="payload_too_large")
        if _is_sqlstate(code):
            if code in _TRANSIENT_SQLSTATES or code.startswith(_TRANSIENT_SQLSTATE_CLASSES):
                return TransientStoreError(text, reason=_reason_for_sqlstate(code))
            if code.startswith("54"):  # program_limit_exceeded and the like: smaller batches pass
                return BatchTooLargeError(text, events=events, reason="program_limit")
            if code.startswith(("22", "23")):  # the batch's content is to blame
                return RejectedBatchError(text)
            return PermanentStoreError(text)
        if code in _TRANSIENT_PGRST:
            return TransientStoreError(text, reason="connection")
        if status == 408:
            return TransientStoreError(text, reason="http_408")
        if status == 429:
            return TransientStoreError(text, reason="http_429")
        if status is None or status >= 500:
            return TransientStoreError(text, reason="http_5xx")
        if status in (400, 409):  # PostgREST's answers to data errors (SQLSTATE 22, 23) and bad JSON
            return RejectedBatchError(text)
        return PermanentStoreError(text)

    def _clean(self, text: Any) -> str:
        """Server or driver text made safe for a message: no key, nothing long."""
        text = clean_text(str(text or ""), _MAX_DETAIL_CHARS)
        secret = self._key.get_secret_value()
        return text.replace(secret, "[REDACTED]") if secret else text

    def close(self) -> None:
        """Close the HTTP client this store created; the next ``apply`` builds a new one."""
        with self._lock:
            http, self._http, self._client = self._http, None, None
        if http is not None:
            http.close()


def _is_sqlstate(code: str) -> bool:
    """A PostgreSQL error code (five characters), not PostgREST's ``PGRSTxxx`` nor an HTTP
    status; ``PTxyz`` codes are raised to pick an HTTP status, so the status decides."""
    return len(code) == 5 and code.isascii() and code.isalnum() and not code.startswith("PT")


def _reason_for_sqlstate(code: str) -> str:
    if code in ("57014", "55P03"):  # statement_timeout (or a cancel), lock_timeout
        return "timeout"
    if code.startswith("40"):
        return "conflict"
    return "connection"
