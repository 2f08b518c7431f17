"""Producer API: submit course requests, follow their jobs, cancel them.

    from coursegen import jobs

    job_id = jobs.submit({"tenant_id": ..., "user_id": ..., "title": ..., "sources": [...]})
    jobs.status(job_id)              # JobStatus: status, progress, result, error, ...
    jobs.wait(job_id, timeout=120)   # the JobStatus once the job has finished
    jobs.cancel(job_id)              # CancelOutcome: requested, or the job had already finished
    jobs.list_jobs(user_id=...)      # the latest jobs, newest first

``submit`` needs the broker only (``REDIS_URL``): it sends through a broker built from the
:class:`Jobs`' own settings (:func:`coursegen.app.build_app`), never through the global one that
``coursegen.actors`` builds from the environment. Everything else reads the ``job_status`` rows:
through Supabase's REST API when ``SUPABASE_URL`` (and the service-role key) is set, else
straight from PostgreSQL with ``DATABASE_URL``. ``cancel`` also sets the flag the workers read on
the broker's Redis (:class:`middleware.cancel.RedisCancelFlags`).

The module functions use one :class:`Jobs` built from the environment on first use; build a
:class:`Jobs` yourself to pass other settings.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from middleware.cancel import RedisCancelFlags
from middleware.conninfo import check_conninfo, describe_conninfo
from middleware.events import Status

from .course import CourseRequest
from .settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

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
_TIMES = tuple(name for name in COLUMNS if name.endswith("_at"))  # timestamptz columns


# -- errors -------------------------------------------------------------------------------


class JobsError(Exception):
    """A job could not be submitted, read or cancelled."""


class InvalidRequestError(JobsError, ValueError):
    """The course request is invalid; ``errors`` holds pydantic's validation errors."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', '?')}" for e in errors
        )
        super().__init__(f"invalid course request: {shown}")


class UnknownOwnerError(JobsError, ValueError):
    """The job's tenant or user does not exist: it could never get a status row."""

    def __init__(self, problem: str, tenant_id: str, user_id: str) -> None:
        self.problem = problem
        self.tenant_id = tenant_id
        self.user_id = user_id
        who = f"tenant {tenant_id}" if problem == "unknown_tenant" else f"user {user_id}"
        super().__init__(f"unknown owner: no {who} (create it first)")


class JobNotFound(JobsError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id}")


class ServiceUnavailable(JobsError):
    """A service the call needs (Redis, PostgreSQL, Supabase) cannot be reached."""

    def __init__(self, service: str, detail: str) -> None:
        self.service = service
        self.detail = detail
        super().__init__(f"cannot reach {service} ({detail})")


class WaitTimeout(JobsError, TimeoutError):
    """The job did not finish in time; ``last`` is its latest known status (or None)."""

    def __init__(self, job_id: str, timeout: float, last: JobStatus | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.last = last
        state = last.status.value if last is not None else "unknown"
        super().__init__(f"job {job_id} did not finish within {timeout:g}s (last seen: {state})")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatus:
    """One ``job_status`` row."""

    job_id: str
    status: Status
    progress: int
    progress_message: str | None
    attempt: int
    actor_name: str
    queue_name: str
    tenant_id: str
    user_id: str
    result: Any
    error_type: str | None
    error_message: str | None
    next_retry_at: dt.datetime | None
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobStatus:
        values = {name: row.get(name) for name in COLUMNS}
        values["status"] = Status(values["status"])
        values["tenant_id"] = str(values["tenant_id"])
        values["user_id"] = str(values["user_id"])
        values["progress"] = int(values["progress"] or 0)
        values["attempt"] = int(values["attempt"] or 0)
        for name in _TIMES:
            value = values[name]
            if isinstance(value, str):
                values[name] = dt.datetime.fromisoformat(value)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: times in ISO 8601, the status as its name."""
        out = asdict(self)
        out["status"] = self.status.value
        for name in _TIMES:
            if out[name] is not None:
                out[name] = out[name].isoformat()
        return out


@dataclass(frozen=True)
class CancelOutcome:
    """What :func:`cancel` did. ``requested``: the job was live and is now flagged (``already``:
    an earlier call had flagged it). ``finished``: it had ended; nothing was changed."""

    job_id: str
    status: Status
    requested: bool
    already: bool
    cancel_requested_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return not self.requested

    def describe(self) -> str:
        if not self.requested:
            return f"job {self.job_id} already finished ({self.status.value}); nothing to cancel"
        if self.already:
            return f"cancellation of job {self.job_id} was already requested (it is {self.status.value})"
        return f"cancellation requested for job {self.job_id} (it was {self.status.value})"


# -- where the rows are read ----------------------------------------------------------------


class StatusReader(Protocol):
    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[dict[str, Any]]: ...

    def request_cancel(self, job_id: str) -> dict[str, Any] | None: ...

    def owner_problem(self, tenant_id: str, user_id: str) -> str | None: ...

    def close(self) -> None: ...


_SELECT = (
    "select " + ", ".join(f"{c}::text" if c == "status" else c for c in COLUMNS) + " from public.job_status"
)


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

    def _run(self, sql: str, params: Mapping[str, Any] | tuple[Any, ...]) -> list[dict[str, Any]]:
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

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run(_SELECT + " where job_id = %s", (job_id,))
        return rows[0] if rows else None

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[dict[str, Any]]:
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

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run(
            "select status::text, cancel_requested_at, stamped from public.job_status_request_cancel(%s)",
            (job_id,),
        )
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

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._call(lambda c: c.table("job_status").select(",".join(COLUMNS)).eq("job_id", job_id))
        return rows[0] if rows else None

    def list(
        self, *, status: Status | None, user_id: str | None, tenant_id: str | None, limit: int
    ) -> list[dict[str, Any]]:
        def build(client: Any) -> Any:
            query = client.table("job_status").select(",".join(COLUMNS))
            if status is not None:
                query = query.eq("status", status.value)
            if user_id is not None:
                query = query.eq("user_id", user_id)
            if tenant_id is not None:
                query = query.eq("tenant_id", tenant_id)
            return query.order("created_at", desc=True).limit(limit)

        rows = self._call(build)
        rows.sort(key=lambda row: (row.get("created_at") or "", row["job_id"]), reverse=True)
        return list(rows[:limit])

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
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


# -- the API --------------------------------------------------------------------------------


def parse_request(request: CourseRequest | Mapping[str, Any]) -> CourseRequest:
    """A :class:`CourseRequest` from a mapping; :class:`InvalidRequestError` when invalid."""
    if isinstance(request, CourseRequest):
        return request
    try:
        return CourseRequest.model_validate(request)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise InvalidRequestError([dict(e) for e in errors]) from None


def _check_uuid(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{name} must be a UUID, got {str(value)[:60]!r}") from None


class Jobs:
    """Submit, follow and cancel jobs with one configuration.

    ``reader`` and ``cancel_flags`` default to what ``settings`` describes; they and the app
    that sends jobs (its broker and status writer) are created on first use, so building a
    ``Jobs`` opens no connection. :meth:`close` releases them.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        reader: StatusReader | None = None,
        cancel_flags: RedisCancelFlags | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._reader = reader
        self._flags = cancel_flags
        self._app: App | None = None
        self._lock = threading.Lock()

    @property
    def reader(self) -> StatusReader:
        with self._lock:
            if self._reader is None:
                self._reader = reader_from_settings(self.settings)
            return self._reader

    @property
    def cancel_flags(self) -> RedisCancelFlags:
        with self._lock:
            if self._flags is None:
                import redis

                client = redis.Redis.from_url(
                    self.settings.redis_url.get_secret_value(),
                    socket_timeout=self.settings.store_timeout,
                    socket_connect_timeout=self.settings.store_timeout,
                )
                self._flags = RedisCancelFlags(client)
            return self._flags

    @property
    def app(self) -> App:
        """The broker (built from these settings) and actors that :meth:`submit` sends through."""
        with self._lock:
            if self._app is None:
                from .app import build_app

                self._app = build_app(self.settings)
            return self._app

    def submit(self, request: CourseRequest | Mapping[str, Any], *, flush_timeout: float = 5.0) -> str:
        """Send a ``generate_course`` job; returns its id (``job_status.job_id``).

        Waits up to ``flush_timeout`` seconds for the ``pending`` row to be written (or put on
        the outbox), so that :meth:`status` finds the job right away.
        """
        import redis

        parsed = parse_request(request)
        if self.settings.status_store() != "outbox":  # the database is reachable: ask it first
            problem = self.reader.owner_problem(str(parsed.tenant_id), str(parsed.user_id))
            if problem is not None:
                raise UnknownOwnerError(problem, str(parsed.tenant_id), str(parsed.user_id))
        payload = parsed.payload()
        app = self.app
        try:
            message = app.generate_course.send(payload)
        except redis.RedisError as exc:
            raise ServiceUnavailable("Redis", type(exc).__name__) from exc
        if flush_timeout > 0:
            app.flush(timeout=flush_timeout)
        return message.message_id

    def status(self, job_id: str) -> JobStatus:
        row = self.reader.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        return JobStatus.from_row(row)

    def wait(
        self,
        job_id: str,
        timeout: float = 300.0,
        *,
        interval: float = 0.5,
        missing_grace: float = 5.0,
        on_change: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job has finished; returns its final status.

        ``on_change`` is called with every status that differs from the previous one (status,
        progress or message). A job not found after ``missing_grace`` seconds raises
        :class:`JobNotFound` (its row may lag its submission a little); past ``timeout``,
        :class:`WaitTimeout`.
        """
        started = time.monotonic()
        last: JobStatus | None = None
        while True:
            row = self.reader.get(job_id)
            now = time.monotonic() - started
            if row is None:
                if last is None and now >= missing_grace:
                    raise JobNotFound(job_id)
            else:
                current = JobStatus.from_row(row)
                key = (current.status, current.progress, current.progress_message)
                if on_change is not None and (
                    last is None or key != (last.status, last.progress, last.progress_message)
                ):
                    on_change(current)
                last = current
                if current.finished:
                    return current
            if now >= timeout:
                raise WaitTimeout(job_id, timeout, last)
            time.sleep(min(interval, max(0.0, timeout - now)) or 0.01)

    def cancel(self, job_id: str) -> CancelOutcome:
        """Request cancellation: stamp ``cancel_requested_at`` and flag the job for the workers.

        A queued job ends ``cancelled`` without running; a running one at its next progress
        checkpoint. A finished job is left alone (``outcome.finished``). Unknown: JobNotFound.
        """
        import redis

        row = self.reader.request_cancel(job_id)
        if row is None:
            raise JobNotFound(job_id)
        status = Status(row["status"])
        when = row.get("cancel_requested_at")
        if isinstance(when, str):
            when = dt.datetime.fromisoformat(when)
        if status.terminal:
            return CancelOutcome(job_id, status, requested=False, already=False, cancel_requested_at=when)
        try:
            self.cancel_flags.request(job_id)
        except redis.RedisError as exc:
            raise ServiceUnavailable("Redis", type(exc).__name__) from exc
        return CancelOutcome(
            job_id, status, requested=True, already=not row["stamped"], cancel_requested_at=when
        )

    def list(
        self,
        *,
        status: Status | str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
    ) -> list[JobStatus]:
        """The latest jobs, newest first (by when their row was created), optionally of one
        status, user or tenant."""
        rows = self.reader.list(
            status=Status(status) if status is not None else None,
            user_id=_check_uuid("user_id", user_id),
            tenant_id=_check_uuid("tenant_id", tenant_id),
            limit=max(1, min(int(limit), 1000)),
        )
        return [JobStatus.from_row(row) for row in rows]

    def close(self) -> None:
        """Write the statuses of the jobs submitted (the writer's last batches) and close
        every connection."""
        with self._lock:
            reader, self._reader = self._reader, None
            flags, self._flags = self._flags, None
            app, self._app = self._app, None
        if app is not None:
            app.close()
        if reader is not None:
            reader.close()
        if flags is not None:
            flags.client.close()


_default: Jobs | None = None
_default_lock = threading.Lock()


def default_jobs() -> Jobs:
    """The :class:`Jobs` the module functions use, built from the environment."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Jobs()
        return _default


def submit(request: CourseRequest | Mapping[str, Any]) -> str:
    return default_jobs().submit(request)


def status(job_id: str) -> JobStatus:
    return default_jobs().status(job_id)


def wait(job_id: str, timeout: float = 300.0) -> JobStatus:
    return default_jobs().wait(job_id, timeout)


def cancel(job_id: str) -> CancelOutcome:
    return default_jobs().cancel(job_id)


def list_jobs(
    *,
    status: Status | str | None = None,
    user_id: str | None = None,
    tenant_id: str | None = None,
    limit: int = 50,
) -> list[JobStatus]:
    return default_jobs().list(status=status, user_id=user_id, tenant_id=tenant_id, limit=limit)
