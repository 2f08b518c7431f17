"""Every error this package raises; one root, data as attributes, driver errors in __cause__."""

from __future__ import annotations

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
    """The store refused the batch as a whole; sending it again will not help."""

    reason = "permanent"
