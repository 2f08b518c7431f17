"""Producer API: submit course requests; follow and cancel jobs, acting for their owner.

    from coursegen import jobs

    job_id = jobs.submit({"tenant_id": ..., "user_id": ..., "title": ..., "sources": [...]})
    me = jobs.Jobs(settings).as_user(user_id, tenant_id)   # or the module functions below
    me.status(job_id)                # JobStatus: status, progress, result, error, ...
    me.wait(job_id, timeout=120)     # the JobStatus once the job has finished
    me.cancel(job_id)                # CancelOutcome: requested, or the job had already finished
    me.list()                        # this user's latest jobs in this tenant, newest first

    jobs.status(job_id, user_id=..., tenant_id=...)   # the same through a default Jobs

Reading and cancelling act for a user and tenant, always: another owner's job is treated as an
unknown one (:class:`JobNotFound`, the same message, the same steps: nothing tells the two
apart), and the check is made in SQL (``public.user_job_*``), not only here. An operator who
must see every job asks for it by name, :meth:`Jobs.operator` (``coursegen admin ...``).

``submit`` needs the broker only (``REDIS_URL``): it sends through a broker built from the
:class:`Jobs`' own settings (:func:`coursegen.app.build_app`), never through the global one that
``coursegen.actors`` builds from the environment. Everything else reads the ``job_status`` rows
(:mod:`coursegen.readers`): through Supabase's REST API when ``SUPABASE_URL`` (and the
service-role key) is set, else straight from PostgreSQL with ``DATABASE_URL``. ``cancel`` also
sets the flag the workers read on the broker's Redis (:class:`middleware.cancel.RedisCancelFlags`).

Read-your-writes: a job's ``pending`` row is written by the sending process's writer thread a
moment after ``send()``. When a job is not found and this process sent it (through any app: a
``Jobs``, or ``coursegen.actors.generate_course.send()``; see :mod:`middleware.sent`) for the
owner the caller acts for, that writer is flushed and the row read again. A cancellation that
finds no row even then (the writer could only put it on the outbox) flags the job at once, so
that the workers skip it; the fleet's cancel poller stamps its row once it exists.

The module functions use one :class:`Jobs` built from the environment on first use; build a
:class:`Jobs` yourself to pass other settings.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from middleware.cancel import RedisCancelFlags
from middleware.events import Owner, Status
from middleware.sent import SENT, SentJob

from .course import CourseRequest
from .errors import (
    InvalidRequestError,
    JobNotFound,
    JobsError,
    ServiceUnavailable,
    UnknownOwnerError,
    WaitTimeout,
)
from .readers import (
    COLUMNS,
    NO_STATUS_SOURCE_MESSAGE,
    PostgresReader,
    Row,
    StatusReader,
    SupabaseReader,
    reader_from_settings,
)
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from .app import App

_TIMES = tuple(name for name in COLUMNS if name.endswith("_at"))  # timestamptz columns


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
        """From a row as a reader returns it (other columns are ignored)."""
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
    an earlier call had flagged it). ``finished``: it had ended; nothing was changed. A job this
    process sent whose row is not written yet is flagged as ``pending`` with no
    ``cancel_requested_at``: the row is stamped once it exists."""

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
    return None if value is None else _uuid(name, value)


def _uuid(name: str, value: str | uuid.UUID) -> str:
    """``value`` in the canonical form of a UUID; ``ValueError`` naming ``name`` otherwise."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{name} must be a UUID, got {str(value)[:60]!r}") from None


def _limit(limit: int) -> int:
    return max(1, min(int(limit), 1000))


class Jobs:
    """Submit jobs with one configuration; follow and cancel them through a view:
    :meth:`as_user` (acting for one user of one tenant) or :meth:`operator` (every job).

    ``reader`` and ``cancel_flags`` default to what ``settings`` describes; they and the app
    that sends jobs (its broker and status writer) are created on first use, so building a
    ``Jobs`` opens no connection. :meth:`close` releases them. ``flush_timeout``: how long a
    read of a job this process sent waits for its writer to write the ``pending`` row.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        reader: StatusReader | None = None,
        cancel_flags: RedisCancelFlags | None = None,
        flush_timeout: float = 5.0,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.flush_timeout = flush_timeout
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

    def as_user(self, user_id: str | uuid.UUID, tenant_id: str | uuid.UUID) -> UserJobs:
        """Status, wait, cancel and list acting for this user of this tenant: their jobs only.
        ``ValueError`` unless both are UUIDs."""
        return UserJobs(self, user_id, tenant_id)

    def operator(self) -> OperatorJobs:
        """Status, wait, cancel and list over every tenant's jobs: for operators' tools, never
        on behalf of a user."""
        return OperatorJobs(self)

    def submit(self, request: CourseRequest | Mapping[str, Any], *, flush_timeout: float = 5.0) -> str:
        """Send a ``generate_course`` job; returns its id (``job_status.job_id``).

        Waits up to ``flush_timeout`` seconds for the ``pending`` row to be written (or put on
        the outbox), so that a status read from anywhere finds the job right away.
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


class _View:
    """status, wait and cancel over the jobs a view sees; the reads are the subclass's."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    # -- what the view sees ----------------------------------------------------------------

    def _read(self, job_id: str) -> Row | None:
        raise NotImplementedError

    def _request_cancel(self, job_id: str) -> Row | None:
        raise NotImplementedError

    def _sees(self, owner: Owner) -> bool:
        raise NotImplementedError

    # -- read-your-writes ------------------------------------------------------------------

    def _sent_here(self, job_id: str) -> SentJob | None:
        """The job, when this process sent it for an owner this view sees. Else None, and the
        caller goes on exactly as for an unknown job (nothing flushed)."""
        sent = SENT.get(job_id)
        return sent if sent is not None and self._sees(sent.owner) else None

    def _find(self, job_id: str) -> Row | None:
        row = self._read(job_id)
        if row is None and (sent := self._sent_here(job_id)) is not None:
            sent.writer.flush(timeout=self.jobs.flush_timeout)
            row = self._read(job_id)
        return row

    # -- the API ---------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        row = self._find(job_id)
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
        :class:`JobNotFound` (a row written by another process may lag its submission a
        little); past ``timeout``, :class:`WaitTimeout`.
        """
        started = time.monotonic()
        last: JobStatus | None = None
        row = self._find(job_id)
        while True:
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
            row = self._read(job_id)

    def cancel(self, job_id: str) -> CancelOutcome:
        """Request cancellation: stamp ``cancel_requested_at`` and flag the job for the workers.

        A queued job ends ``cancelled`` without running; a running one at its next progress
        checkpoint. A finished job is left alone (``outcome.finished``). Unknown: JobNotFound.
        """
        row = self._request_cancel(job_id)
        if row is None:
            sent = self._sent_here(job_id)
            if sent is None:
                raise JobNotFound(job_id)
            sent.writer.flush(timeout=self.jobs.flush_timeout)
            row = self._request_cancel(job_id)
            if row is None:  # sent from here, its row not written yet: the poller stamps it
                self._flag(job_id, row_missing=True)
                return CancelOutcome(
                    job_id, Status.PENDING, requested=True, already=False, cancel_requested_at=None
                )
        status = Status(row["status"])
        when = row.get("cancel_requested_at")
        if isinstance(when, str):
            when = dt.datetime.fromisoformat(when)
        if status.terminal:
            return CancelOutcome(job_id, status, requested=False, already=False, cancel_requested_at=when)
        self._flag(job_id)
        return CancelOutcome(
            job_id, status, requested=True, already=not row["stamped"], cancel_requested_at=when
        )

    def _flag(self, job_id: str, *, row_missing: bool = False) -> None:
        import redis

        try:
            self.jobs.cancel_flags.request(job_id, row_missing=row_missing)
        except redis.RedisError as exc:
            raise ServiceUnavailable("Redis", type(exc).__name__) from exc


class UserJobs(_View):
    """One user's jobs in one tenant (:meth:`Jobs.as_user`). Another owner's job, another
    tenant's included, is not found, exactly as an unknown one; the SQL functions the readers
    call check the owner."""

    def __init__(self, jobs: Jobs, user_id: str | uuid.UUID, tenant_id: str | uuid.UUID) -> None:
        super().__init__(jobs)
        self.owner = Owner(_uuid("tenant_id", tenant_id), _uuid("user_id", user_id))

    def __repr__(self) -> str:
        return f"UserJobs(user_id={self.owner.user_id!r}, tenant_id={self.owner.tenant_id!r})"

    @property
    def user_id(self) -> str:
        return self.owner.user_id

    @property
    def tenant_id(self) -> str:
        return self.owner.tenant_id

    def _read(self, job_id: str) -> Row | None:
        return self.jobs.reader.get_for(self.owner, job_id)

    def _request_cancel(self, job_id: str) -> Row | None:
        return self.jobs.reader.cancel_for(self.owner, job_id)

    def _sees(self, owner: Owner) -> bool:
        try:
            return Owner(str(uuid.UUID(owner.tenant_id)), str(uuid.UUID(owner.user_id))) == self.owner
        except (ValueError, AttributeError, TypeError):
            return False

    def list(self, *, status: Status | str | None = None, limit: int = 50) -> list[JobStatus]:
        """This user's latest jobs in this tenant, newest first (by when their row was
        created), optionally of one status."""
        rows = self.jobs.reader.list_for(
            self.owner, status=Status(status) if status is not None else None, limit=_limit(limit)
        )
        return [JobStatus.from_row(row) for row in rows]


class OperatorJobs(_View):
    """Every tenant's jobs (:meth:`Jobs.operator`): for operators' tools, never on behalf of a
    user."""

    def __repr__(self) -> str:
        return "OperatorJobs()"

    def _read(self, job_id: str) -> Row | None:
        return self.jobs.reader.get(job_id)

    def _request_cancel(self, job_id: str) -> Row | None:
        return self.jobs.reader.request_cancel(job_id)

    def _sees(self, owner: Owner) -> bool:
        return True

    def list(
        self,
        *,
        status: Status | str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
    ) -> list[JobStatus]:
        """The latest jobs of every tenant, newest first (by when their row was created),
        optionally of one status, user or tenant."""
        rows = self.jobs.reader.list(
            status=Status(status) if status is not None else None,
            user_id=_check_uuid("user_id", user_id),
            tenant_id=_check_uuid("tenant_id", tenant_id),
            limit=_limit(limit),
        )
        return [JobStatus.from_row(row) for row in rows]


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


def status(job_id: str, *, user_id: str, tenant_id: str) -> JobStatus:
    """The job's status, acting for this user of this tenant."""
    return default_jobs().as_user(user_id, tenant_id).status(job_id)


def wait(job_id: str, timeout: float = 300.0, *, user_id: str, tenant_id: str) -> JobStatus:
    """Wait for the job to finish, acting for this user of this tenant."""
    return default_jobs().as_user(user_id, tenant_id).wait(job_id, timeout)


def cancel(job_id: str, *, user_id: str, tenant_id: str) -> CancelOutcome:
    """Cancel the job, acting for this user of this tenant."""
    return default_jobs().as_user(user_id, tenant_id).cancel(job_id)


def list_jobs(
    *, user_id: str, tenant_id: str, status: Status | str | None = None, limit: int = 50
) -> list[JobStatus]:
    """This user's latest jobs in this tenant, newest first."""
    return default_jobs().as_user(user_id, tenant_id).list(status=status, limit=limit)


def operator() -> OperatorJobs:
    """Every tenant's jobs, through the default :class:`Jobs`: for operators' tools only."""
    return default_jobs().operator()


__all__ = [
    "COLUMNS",
    "NO_STATUS_SOURCE_MESSAGE",
    "CancelOutcome",
    "InvalidRequestError",
    "JobNotFound",
    "JobStatus",
    "Jobs",
    "JobsError",
    "OperatorJobs",
    "PostgresReader",
    "ServiceUnavailable",
    "StatusReader",
    "SupabaseReader",
    "UnknownOwnerError",
    "UserJobs",
    "WaitTimeout",
    "cancel",
    "default_jobs",
    "list_jobs",
    "operator",
    "parse_request",
    "status",
    "submit",
    "wait",
]
