"""Every error this package raises; one root, data as attributes, driver errors in __cause__."""

from __future__ import annotations

from typing import Any

from dramatiq.middleware import MiddlewareError


class StatusSyncError(Exception):
    """Job status sync failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidOwnerError(StatusSyncError, MiddlewareError, ValueError):
    """A tracked job must name its owner: a tenant_id and a user_id, both UUIDs.

    Subclasses ``MiddlewareError`` because Dramatiq swallows any other exception raised in
    ``before_enqueue`` and enqueues the message anyway; raised at ``send()``, nothing is enqueued.
    """

    def __init__(self, actor_name: str, problem: str) -> None:
        self.actor_name = actor_name
        self.problem = problem
        super().__init__(f"cannot send {actor_name}: {problem}")


class InstallError(StatusSyncError, ValueError):
    """The status system's middleware cannot be installed on this broker as asked (see
    :func:`middleware.install`)."""


class ProducerOnlyError(StatusSyncError, MiddlewareError):
    """This configuration may send jobs but not run them; a worker refuses to boot with it.

    ``reason`` says what to configure. Subclasses ``MiddlewareError`` because Dramatiq logs and
    ignores any other exception raised in ``before_worker_boot``; this one stops the worker.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreError(StatusSyncError):
    """The status store could not apply a batch."""

    #: short, label-safe name of what went wrong (timeout, connection, http_5xx, ...)
    reason: str = "error"

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TransientStoreError(StoreError):
    """The store is unreachable or overloaded; the same batch may succeed later."""

    reason = "transient"


class PermanentStoreError(StoreError):
    """The store refused the batch as a whole; sending it again will not help.

    Raised as such for what the batch cannot fix (no such function, a key the store refuses):
    the writer keeps the events (outbox) until an operator fixes the store.
    """

    reason = "permanent"


class RejectedBatchError(PermanentStoreError):
    """The store refused the batch for what it holds (SQLSTATE class 22 or 23, a text the
    driver cannot encode, PostgREST's 400): the writer splits the batch until the bad events
    stand alone, rejects those and writes the others."""

    reason = "rejected_batch"


class InvalidConninfoError(StatusSyncError, ValueError):
    """A PostgreSQL connection string that cannot be used.

    ``problem`` says what is wrong without quoting the string: it may hold a password.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid PostgreSQL connection string: {problem}")


class BatchTooLargeError(RejectedBatchError):
    """The batch is too large for the store or for what stands in front of it; smaller ones pass.

    A :class:`RejectedBatchError`, so the writer sends it in halves; an event too large on its
    own is rejected (and replaced by a plain one that says why). ``events`` is the size of the
    refused batch. Reasons: ``payload_too_large`` (HTTP 413 from a gateway), ``answer_truncated``
    (the batch was applied but the answer was cut short, by PostgREST's ``db-max-rows``: the
    events it does not name are of unknown fate), ``program_limit`` (SQLSTATE class 54, such as
    a value too large to build).
    """

    reason = "payload_too_large"

    def __init__(self, message: str, *, events: int, reason: str | None = None) -> None:
        self.events = events
        super().__init__(message, reason=reason)


class InvalidPayloadError(StatusSyncError, MiddlewareError, ValueError):
    """A message's payload does not match the model its actor declares (``payload_model``).

    ``errors`` holds pydantic's validation errors (without the input values, which may be large
    or secret). Subclasses ``MiddlewareError`` so that ``send()`` raises it and enqueues nothing;
    at run time the job fails with it and is not retried.
    """

    def __init__(self, actor_name: str, errors: list[dict[str, Any]]) -> None:
        self.actor_name = actor_name
        self.errors = errors
        shown = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ())) or 'payload'}: {error.get('msg', '?')}"
            for error in errors[:10]
        )
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        count = f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"invalid payload for {actor_name}: {count}: {shown}{more}")


class JobCancelled(BaseException):
    """Cancellation of the running job was requested; raised at its next progress checkpoint.

    A ``BaseException``, like ``asyncio.CancelledError``, so that an actor's ``except Exception``
    cannot swallow it. The status middleware records the job as ``cancelled`` and adds this
    class to every tracked actor's ``throws``, so ``Retries`` never retries it.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")
