"""The StatusStore protocol every store implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from ..events import StatusEvent

APPLIED = "applied"
STALE = "stale"
REJECTED = "rejected"
#: the event was rejected and a summary of it written in its place (the writer's doing, never a
#: store's answer: see middleware.delivery)
REPLACED = "replaced"


class Outcome(NamedTuple):
    """What became of one event: applied, stale (the row already held newer news), rejected
    (with a reason), or replaced (rejected, and a summary written instead)."""

    job_id: str
    outcome: str
    reason: str | None = None

    @property
    def rejected(self) -> bool:
        return self.outcome == REJECTED


@runtime_checkable
class StatusStore(Protocol):
    """Applies batches of status events through ``public.job_status_apply``.

    ``apply`` makes one round trip and returns one :class:`Outcome` per event, in order. It
    raises :class:`~middleware.errors.TransientStoreError` when the store cannot be reached
    (the batch may succeed later), :class:`~middleware.errors.RejectedBatchError` when the
    batch was refused for what it holds (the writer then isolates the bad events), and
    :class:`~middleware.errors.PermanentStoreError` when the store refuses any batch (no such
    function, a refused key). An event the store can judge on its own comes back as a rejected
    outcome instead.

    A store may also have ``prepare()``: called once at worker boot (see
    :meth:`~middleware.writer.StatusWriter.prepare`) to import and build what ``apply`` needs,
    without a network round trip.
    """

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]: ...

    def close(self) -> None: ...


def encode_batch(events: Sequence[StatusEvent]) -> str:
    """The JSON array ``job_status_apply`` takes."""
    return "[" + ",".join(event.to_json() for event in events) + "]"
