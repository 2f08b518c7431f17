"""The StatusStore protocol every store implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from ..events import StatusEvent

APPLIED = "applied"
STALE = "stale"
REJECTED = "rejected"


class Outcome(NamedTuple):
    """What became of one event: applied, stale (the row already held newer news) or rejected."""

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
    raises :class:`~middleware.errors.TransientStoreError` when the batch may succeed later
    and :class:`~middleware.errors.PermanentStoreError` when the batch as a whole was refused.
    A bad event is never a reason to raise: it comes back as a rejected outcome.

    A store may also have ``prepare()``: called once at worker boot (see
    :meth:`~middleware.writer.StatusWriter.prepare`) to import and build what ``apply`` needs,
    without a network round trip.
    """

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]: ...

    def close(self) -> None: ...


def encode_batch(events: Sequence[StatusEvent], max_result_bytes: int) -> str:
    """The JSON array ``job_status_apply`` takes."""
    return "[" + ",".join(event.to_json(max_result_bytes) for event in events) + "]"
