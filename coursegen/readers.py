"""Where :mod:`coursegen.jobs` reads ``job_status`` rows: PostgreSQL (psycopg) or Supabase's REST
API (the real ``supabase`` client), both with service credentials.

Acting for a user (``*_for`` methods) they call the SQL functions that check ownership
(``public.user_job_status``, ``user_job_list``, ``user_job_cancel``): another owner's job is
not there, exactly as an unknown one. The operator's methods (``get``, ``list``,
``request_cancel``) read the table itself and see every job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
import psycopg
from psycopg.rows import dict_row

from middleware.conninfo import check_conninfo, describe_conninfo
from middleware.events import Owner, Status

from .errors import JobsError, ServiceUnavailable
from .settings import ConfigurationError, Settings

#: what a producer configured with Redis alone is told when it tries to read statuses
NO_STATUS_SOURCE_MESSAGE = (
    "reading job status needs DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY; "
    "with REDIS_URL alone jobs can be submitted but not followed"
)

COLUMNS = (
    "job_id",
    "tenant_id",
    "user_id",
    "actor_name",
    "queue_name",
    "status",
    "progress",
    "progress_message",
    "attempt",
    "result",
    "error_type",
    "error_message",
    "next_retry_at",
    "enqueued_at",
    "started_at",
    "finished_at",
    "cancel_requested_at",
    "created_at",
    "updated_at",
)

Row = dict[str, Any]


class StatusReader(Protocol):
    # acting for one owner: ownership checked in SQL
    def get_for(self, owner: Owner, job_id: str) -> Row | None: ...

    def list_for(self, owner: Owner, *, status: Status | None, limit: int) -> list[Row]: ...

    def cancel_for(self, owner: Owner, job_id: str) -> Row | None: ...

    # the operator: every job
    def get(self, job_id: str) -> Row | None: ...

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[Row]: ...

    def request_cancel(self, job_id: str) -> Row | None: ...

    def owner_problem(self, tenant_id: str, user_id: str) -> str | None: ...

    def close(self) -> None: ...


_COLUMNS_SQL = ", ".join(f"{c}::text" if c == "status" else c for c in COLUMNS)
_SELECT = f"select {_COLUMNS_SQL} from public.job_status"
_CANCEL_COLUMNS = "status::text, cancel_requested_at, stamped"


class PostgresReader:
    """Reads rows with psycopg; one connection, opened on first use."""

    def __init__(self, conninfo: str, *, timeout: float = 5.0) -> None:
        check_conninfo(conninfo)  # InvalidConninfoError (a ValueError) never quotes it
        self._conninfo = conninfo
        self._where = describe_conninfo(conninfo)
        self._timeout = timeout
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the conninfo: it may hold a password
        return f"PostgresReader(timeout={self._timeout})"

    def _run(self, sql: str, params: Mapping[str, Any] | tuple[Any, ...]) -> list[Row]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._conninfo,
                        autocommit=True,
                        prepare_threshold=None,
                        connect_timeout=max(1, int(self._timeout)),
                        row_factory=dict_row,
                    )
                return self._conn.execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                self._drop()
                raise ServiceUnavailable(f"the database at {self._where}", type(exc).__name__) from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- acting for an owner ---------------------------------------------------------------

    def get_for(self, owner: Owner, job_id: str) -> Row | None:
        rows = self._run(
            f"select {_COLUMNS_SQL} from public.user_job_status(%s, %s, %s)",
            (owner.user_id, owner.tenant_id, job_id),
        )
        return rows[0] if rows else None

    def list_for(self, owner: Owner, *, status: Status | None, limit: int) -> list[Row]:
        return self._run(
            f"select {_COLUMNS_SQL} from public.user_job_list(%s, %s, %s::public.job_state, %s)",
            (owner.user_id, owner.tenant_id, status.value if status else None, limit),
        )

    def cancel_for(self, owner: Owner, job_id: str) -> Row | None:
        rows = self._run(
            f"select {_CANCEL_COLUMNS} from public.user_job_cancel(%s, %s, %s)",
            (owner.user_id, owner.tenant_id, job_id),
        )
        return rows[0] if rows else None

    # -- the operator ----------------------------------------------------------------------

    def get(self, job_id: str) -> Row | None:
        rows = self._run(_SELECT + " where job_id = %s", (job_id,))
        return rows[0] if rows else None

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[Row]:
        return self._run(
            _SELECT + " where (%(status)s::public.job_state is null or status = %(status)s::public.job_state)"
            " and (%(user)s::uuid is null or user_id = %(user)s::uuid)"
            " and (%(tenant)s::uuid is null or tenant_id = %(tenant)s::uuid)"
            " order by created_at desc, job_id desc limit %(limit)s",
            {
                "status": status.value if status else None,
                "user": user_id,
                "tenant": tenant_id,
                "limit": limit,
            },
        )

    def request_cancel(self, job_id: str) -> Row | None:
        rows = self._run(f"select {_CANCEL_COLUMNS} from public.job_status_request_cancel(%s)", (job_id,))
        return rows[0] if rows else None

    def owner_problem(self, tenant_id: str, user_id: str) -> str | None:
        rows = self._run("select public.job_owner_problem(%s, %s) as problem", (tenant_id, user_id))
        return rows[0]["problem"] if rows else None

    def close(self) -> None:
        with self._lock:
            self._drop()


class SupabaseReader:
    """Reads rows through Supabase's REST API with the service-role key or a secret key
    (``sb_secret_...``; both bypass RLS). ``timeout`` stays above the API's statement_timeout
    (8 s on Supabase), as for the status store: a cancel request is a write."""

    def __init__(
        self, url: str, service_key: str, *, timeout: float = 10.0, http_client: httpx.Client | None = None
    ) -> None:
        self._url = url
        self._key = service_key
        self._timeout = timeout
        self._given_http = http_client
        self._http: httpx.Client | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SupabaseReader(timeout={self._timeout})"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from supabase.lib.client_options import SyncClientOptions

                from supabase import create_client

                http = self._given_http
                if http is None:
                    http = self._http = httpx.Client(timeout=httpx.Timeout(self._timeout))
                self._client = create_client(
                    self._url,
                    self._key,
                    options=SyncClientOptions(
                        httpx_client=http, auto_refresh_token=False, persist_session=False
                    ),
                )
            return self._client

    def _call(self, build: Callable[[Any], Any]) -> Any:
        from postgrest.exceptions import APIError

        try:
            return build(self._get_client()).execute().data
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable("Supabase", f"no answer within {self._timeout:g}s") from exc
        except httpx.RequestError as exc:
            raise ServiceUnavailable("Supabase", type(exc).__name__) from exc
        except APIError as exc:
            code = str(exc.code or "")
            # PostgREST's "database unreachable" codes, and the SQLSTATEs the status store
            # retries (connection, rollback, resources, operator intervention, system, lock timeout)
            if code.startswith(("PGRST00", "08", "40", "53", "57", "58", "55P03")):
                raise ServiceUnavailable("Supabase", f"PostgREST {code}") from exc
            raise JobsError(f"Supabase refused the request ({code or 'no code'})") from exc

    def _rpc(self, function: str, args: dict[str, Any]) -> list[Row]:
        rows = self._call(lambda c: c.rpc(function, args))
        return list(rows) if isinstance(rows, list) else []

    # -- acting for an owner ---------------------------------------------------------------

    def get_for(self, owner: Owner, job_id: str) -> Row | None:
        args = {"acting_user_id": owner.user_id, "acting_tenant_id": owner.tenant_id, "job_id": job_id}
        rows = self._rpc("user_job_status", args)
        return rows[0] if rows else None

    def list_for(self, owner: Owner, *, status: Status | None, limit: int) -> list[Row]:
        args: dict[str, Any] = {
            "acting_user_id": owner.user_id,
            "acting_tenant_id": owner.tenant_id,
            "max_rows": limit,
        }
        if status is not None:
            args["only_status"] = status.value
        return _newest_first(self._rpc("user_job_list", args), limit)

    def cancel_for(self, owner: Owner, job_id: str) -> Row | None:
        args = {"acting_user_id": owner.user_id, "acting_tenant_id": owner.tenant_id, "job_id": job_id}
        rows = self._rpc("user_job_cancel", args)
        return rows[0] if rows else None

    # -- the operator ----------------------------------------------------------------------

    def get(self, job_id: str) -> Row | None:
        rows = self._call(lambda c: c.table("job_status").select(",".join(COLUMNS)).eq("job_id", job_id))
        return rows[0] if rows else None

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[Row]:
        def build(client: Any) -> Any:
            query = client.table("job_status").select(",".join(COLUMNS))
            if status is not None:
                query = query.eq("status", status.value)
            if user_id is not None:
                query = query.eq("user_id", user_id)
            if tenant_id is not None:
                query = query.eq("tenant_id", tenant_id)
            return query.order("created_at", desc=True).limit(limit)

        return _newest_first(self._call(build), limit)

    def request_cancel(self, job_id: str) -> Row | None:
        rows = self._call(lambda c: c.rpc("job_status_request_cancel", {"job_id": job_id}))
        return rows[0] if rows else None

    def owner_problem(self, tenant_id: str, user_id: str) -> str | None:
        args = {"tenant_id": tenant_id, "user_id": user_id}
        problem = self._call(lambda c: c.rpc("job_owner_problem", args))
        return problem if isinstance(problem, str) else None

    def close(self) -> None:
        with self._lock:
            http, self._http, self._client = self._http, None, None
        if http is not None:
            http.close()


def _newest_first(rows: list[Row], limit: int) -> list[Row]:
    """PostgREST keeps no order through JSON aggregation we may rely on: sort as the SQL does."""
    rows.sort(key=lambda row: (row.get("created_at") or "", row["job_id"]), reverse=True)
    return list(rows[:limit])


def reader_from_settings(settings: Settings) -> StatusReader:
    """Supabase when ``SUPABASE_URL`` is set, else PostgreSQL with ``DATABASE_URL``."""
    kind = settings.status_store()
    if kind == "supabase":
        assert settings.supabase_url is not None and settings.supabase_service_role_key is not None
        return SupabaseReader(
            settings.supabase_url,
            settings.supabase_service_role_key.get_secret_value(),
            timeout=settings.supabase_timeout,
        )
    if kind == "postgres":
        return PostgresReader(settings.require_database_url(), timeout=settings.store_timeout)
    raise ConfigurationError(NO_STATUS_SOURCE_MESSAGE)


__all__ = [
    "COLUMNS",
    "NO_STATUS_SOURCE_MESSAGE",
    "PostgresReader",
    "StatusReader",
    "SupabaseReader",
    "reader_from_settings",
]
