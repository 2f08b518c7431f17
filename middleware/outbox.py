"""A durable spill of unsent events: a Redis list on the broker's Redis.

The writer spills a batch here when the store stays unreachable past its retries, and
producers without store credentials push their ``pending`` events here directly. Any worker's
writer drains it when the store answers again. Events are idempotent in the store, so
draining twice or out of order is harmless.

Draining never loses an event, even to a worker killed mid-drain: :meth:`RedisOutbox.take`
moves a batch (in one Lua script) from the list into a claim, a list of its own with a lease
in a sorted set. The claim is deleted once the store took the batch (:meth:`RedisOutbox.done`)
or its entries go back to the list when it did not (:meth:`RedisOutbox.put_back`); a claim whose
lease ran out (its worker died) goes back to the list at the next ``take`` by any worker.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import TransientStoreError
from .events import DEFAULT_MAX_RESULT_BYTES, StatusEvent
from .stores.base import APPLIED, Outcome

logger = logging.getLogger(__name__)

DEFAULT_KEY = "job_status:outbox"


#: KEYS: the list, the leases. ARGV: count, the new claim's key, lease (ms). Server time only.
_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, 100)
for _, claim in ipairs(expired) do
  local items = redis.call('LRANGE', claim, 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('DEL', claim)
  redis.call('ZREM', KEYS[2], claim)
end
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then
  return {}
end
for i = 1, #items, 1000 do  -- unpack() is bounded by Lua's stack: RPUSH in chunks
  redis.call('RPUSH', ARGV[2], unpack(items, i, math.min(i + 999, #items)))
end
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[2])
return items
"""


@dataclass
class Claim:
    """Entries taken from the outbox: held under ``key`` until :meth:`RedisOutbox.done` or
    :meth:`RedisOutbox.put_back`, or until the lease runs out."""

    key: str | None
    events: list[StatusEvent] = field(default_factory=list)
    raw: list[bytes | str] = field(default_factory=list)  # the decodable entries, as stored

    def __len__(self) -> int:
        return len(self.events)


class RedisOutbox:
    """Events as JSON strings in one Redis list (``RPUSH`` to spill; claims with a lease to
    drain, see the module docstring).

    Parameters:
      lease_seconds: how long a claim may stay unanswered before another worker takes its
        entries again; longer than a drain's store call can take.
    """

    def __init__(
        self,
        client: Any,
        key: str = DEFAULT_KEY,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        lease_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.key = key
        self.leases_key = f"{key}:leases"
        self.lease_seconds = lease_seconds
        self._max_result_bytes = max_result_bytes
        self._take_script: Any = None

    def __repr__(self) -> str:
        return f"RedisOutbox(key={self.key!r})"

    def push(self, events: Sequence[StatusEvent]) -> None:
        """Append events; raises TransientStoreError when Redis cannot take them."""
        if not events:
            return
        items = [event.to_json(self._max_result_bytes) for event in events]
        import redis

        try:
            self.client.rpush(self.key, *items)
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox push failed: {type(exc).__name__}", reason="outbox") from exc

    def take(self, count: int) -> Claim:
        """Claim up to ``count`` events (first returning expired claims to the list).

        An entry that cannot be decoded is logged and left out: it goes away with the claim.
        """
        import redis

        claim_key = f"{self.key}:claim:{uuid.uuid4().hex}"
        try:
            if self._take_script is None:
                self._take_script = self.client.register_script(_TAKE)
            raw = self._take_script(
                keys=[self.key, self.leases_key],
                args=[max(1, int(count)), claim_key, int(self.lease_seconds * 1000)],
            )
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox read failed: {type(exc).__name__}", reason="outbox") from exc
        if not raw:
            return Claim(None)
        claim = Claim(claim_key)
        for item in raw:
            try:
                claim.events.append(StatusEvent.from_dict(json.loads(item)))
            except (ValueError, KeyError, TypeError):
                logger.error(
                    "Dropping an undecodable outbox entry (%d bytes).",
                    len(item),
                    extra={"action": "outbox_drop"},
                )
                continue
            claim.raw.append(item)
        return claim

    def done(self, claim: Claim) -> None:
        """The store took the claimed events: forget them. Raises TransientStoreError when
        Redis cannot be told (the lease then runs out and the events are applied again, which
        is harmless)."""
        if claim.key is None:
            return
        self._finish(claim, put_back=False)

    def put_back(self, claim: Claim) -> None:
        """The store did not take the claimed events: return them to the list."""
        if claim.key is None:
            return
        self._finish(claim, put_back=True)

    def _finish(self, claim: Claim, *, put_back: bool) -> None:
        import redis

        assert claim.key is not None
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if put_back and claim.raw:
                    pipe.rpush(self.key, *claim.raw)
                pipe.delete(claim.key)
                pipe.zrem(self.leases_key, claim.key)
                pipe.execute()
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox update failed: {type(exc).__name__}", reason="outbox") from exc

    def depth(self) -> int:
        """Events waiting in the list (claimed ones are being applied), or -1 if Redis is down."""
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
