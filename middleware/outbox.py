"""A durable spill of unsent events: a Redis list on the broker's Redis.

The writer spills a batch here when the store stays unreachable past its retries, and
producers without store credentials push their ``pending`` events here directly. Any worker's
writer drains it when the store answers again. Events are idempotent in the store, so
draining twice or out of order is harmless; an event is only removed from the list together
with being handed to the store, and put back if the store fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from .errors import TransientStoreError
from .events import DEFAULT_MAX_RESULT_BYTES, StatusEvent
from .stores.base import APPLIED, Outcome

logger = logging.getLogger(__name__)

DEFAULT_KEY = "job_status:outbox"


class RedisOutbox:
    """Events as JSON strings in one Redis list (``RPUSH`` to spill, ``LPOP count`` to drain)."""

    def __init__(
        self,
        client: Any,
        key: str = DEFAULT_KEY,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.client = client
        self.key = key
        self._max_result_bytes = max_result_bytes

    def __repr__(self) -> str:
        return f"RedisOutbox(key={self.key!r})"

    def push(self, events: Sequence[StatusEvent]) -> None:
        """Append events; raises TransientStoreError when Redis cannot take them."""
        if not events:
            return
        items = [event.to_json(self._max_result_bytes) for event in events]
        self._push_raw(items)

    def _push_raw(self, items: Sequence[str | bytes]) -> None:
        import redis

        try:
            self.client.rpush(self.key, *items)
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox push failed: {type(exc).__name__}", reason="outbox") from exc

    def take(self, count: int) -> list[tuple[bytes | str, StatusEvent]]:
        """Remove and return up to ``count`` events, with their raw form for :meth:`put_back`.

        An entry that cannot be decoded is logged and dropped (it can never be applied).
        """
        import redis

        try:
            raw = self.client.lpop(self.key, count) or []
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox read failed: {type(exc).__name__}", reason="outbox") from exc
        taken = []
        for item in raw:
            try:
                taken.append((item, StatusEvent.from_dict(json.loads(item))))
            except (ValueError, KeyError, TypeError):
                logger.error(
                    "Dropping an undecodable outbox entry (%d bytes).",
                    len(item),
                    extra={"action": "outbox_drop"},
                )
        return taken

    def put_back(self, raw: Sequence[bytes | str]) -> None:
        """Return entries taken by :meth:`take` that could not be applied."""
        if raw:
            self._push_raw(raw)

    def depth(self) -> int:
        import redis

        try:
            return int(self.client.llen(self.key))
        except redis.RedisError:
            return -1


class OutboxStore:
    """A StatusStore that only spills to the outbox: for producers configured with Redis alone.

    ``send()`` stays one Redis call; the producer's writer pushes the ``pending`` events in the
    background and the workers' writers drain them into the real store.
    """

    def __init__(self, outbox: RedisOutbox) -> None:
        self.outbox = outbox

    def __repr__(self) -> str:
        return f"OutboxStore({self.outbox!r})"

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        self.outbox.push(events)
        return [Outcome(event.job_id, APPLIED) for event in events]

    def close(self) -> None:
        return None
