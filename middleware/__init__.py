"""App-agnostic job status sync for any Dramatiq broker.

Hooks turn a message's lifecycle into :class:`~middleware.events.StatusEvent` objects; a
background :class:`~middleware.writer.StatusWriter` coalesces and batches them into a
:class:`~middleware.stores.base.StatusStore`. The state machine itself lives in SQL
(``supabase/migrations``); Python only reports what happened.

This package never imports ``coursegen``.
"""

from .cancel import RedisCancelFlags
from .errors import (
    BatchTooLargeError,
    InvalidOwnerError,
    InvalidPayloadError,
    JobCancelled,
    PermanentStoreError,
    StatusSyncError,
    StoreError,
    TransientStoreError,
)
from .events import Owner, Status, StatusEvent
from .status_sync import JobStatusMiddleware
from .validation import PayloadValidation
from .writer import StatusWriter

__all__ = [
    "BatchTooLargeError",
    "InvalidOwnerError",
    "InvalidPayloadError",
    "JobCancelled",
    "JobStatusMiddleware",
    "Owner",
    "PayloadValidation",
    "PermanentStoreError",
    "RedisCancelFlags",
    "Status",
    "StatusEvent",
    "StatusSyncError",
    "StatusWriter",
    "StoreError",
    "TransientStoreError",
]
