"""The errors of coursegen's producer API (:mod:`coursegen.jobs`): one root, :class:`JobsError`,
data as attributes. An unknown job and another owner's job are the same :class:`JobNotFound`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import JobStatus


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
    """No job has this id, or none the caller may see: acting for a user, another owner's job is
    not found, with the same message, after the same steps, as an unknown one."""

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


__all__ = [
    "InvalidRequestError",
    "JobNotFound",
    "JobsError",
    "ServiceUnavailable",
    "UnknownOwnerError",
    "WaitTimeout",
]
