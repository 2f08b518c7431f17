"""App-agnostic job status sync for any Dramatiq broker.

Hooks turn a message's lifecycle into :class:`~middleware.events.StatusEvent` objects; a
background :class:`~middleware.writer.StatusWriter` coalesces and batches them into a
:class:`~middleware.stores.base.StatusStore`. The state machine itself lives in SQL
(``supabase/migrations``); Python only reports what happened.

This package never imports ``coursegen``.
"""

from .errors import (
    InvalidOwnerError,
    PermanentStoreError,
    StatusSyncError,
    StoreError,
    TransientStoreError,
)
from .events import Owner, Status, StatusEvent
from .status_sync import JobStatusMiddleware
from .writer import StatusWriter

__all__ = [
    "InvalidOwnerError",
    "JobStatusMiddleware",
    "Owner",
    "PermanentStoreError",
    "Status",
    "StatusEvent",
    "StatusSyncError",
    "StatusWriter",
    "StoreError",
    "TransientStoreError",
]
