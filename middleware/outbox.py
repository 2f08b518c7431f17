"""A durable spill of unsent events: a Redis list on the broker's Redis, with dead letters.

The writer spills a batch here when the store stays unreachable past its retries, and
producers without store credentials push their ``pending`` events here directly. Any worker's
writer drains it (:mod:`middleware.drain`) when the store answers again. Events are idempotent
in the store, so draining twice or out of order is harmless.

Every move of entries between lists is one Lua script, so that an entry is always in exactly one
of them, whatever fails when, and each script may run twice: redis-py runs a command again after a
connection error, and one whose answer was lost had run already. Draining never loses an entry,
even to a worker killed mid-drain: :meth:`RedisOutbox.take` moves a batch from the list into a
claim, a list of its own with a lease in a sorted set (run again, it answers the same claim);
:meth:`RedisOutbox.settle` then deletes the claim, returning the entries the store could not take
to the list and moving the ones that can never be written to the dead letters (run again, or
after the claim went back to the list, it does nothing). A claim whose lease ran out (its worker
died) goes back to the list at the next ``take`` by any worker.

Every entry is checked when it is read (:func:`parse_entry`: a pydantic model of the event);
one that is not JSON, nests too deep, has a field of the wrong type or an owner that is not a
UUID never blocks another: it goes to the dead letters (``<key>:dead``) with the reason, where
``coursegen outbox`` lists, requeues or drops it. Requeueing and dropping name the very letters
they read: each is taken out of the dead letters (and put in the list) only if it is still there,
in one script, so two operators at once, or one whose command is retried, never move a letter
twice nor lose one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import TransientStoreError
from .events import MAX_ATTEMPT, Owner, Status, StatusEvent
from .storable import MAX_TIME, MIN_TIME, storable_text
from .stores.base import APPLIED, Outcome

logger = logging.getLogger(__name__)

DEFAULT_KEY = "job_status:outbox"
#: an entry longer than this is not parsed: it goes to the dead letters
MAX_ENTRY_BYTES = 4 * 1024 * 1024
#: dead letters kept (the oldest are trimmed past this)
MAX_DEAD_LETTERS = 100_000


#: KEYS: the list, the leases. ARGV: count, the new claim's key, lease (ms). Server time only.
_TAKE = """
if redis.call('EXISTS', ARGV[2]) == 1 then
  -- this call ran already and its answer was lost: the same claim, not a second batch in it
  return redis.call('LRANGE', ARGV[2], 0, -1)
end
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

#: KEYS: the list, the dead letters, the leases, the claim. ARGV: dead letters kept, the number of
#: entries to put back, those entries, then the dead letters to add.
_SETTLE = """
if redis.call('ZREM', KEYS[3], KEYS[4]) == 0 then
  -- settled already (this call ran and its answer was lost), or the lease ran out and its
  -- entries went back to the list: each entry is there, once
  return 0
end
redis.call('DEL', KEYS[4])
local back = tonumber(ARGV[2])
for i = 3, 2 + back, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, 2 + back)))
end
if #ARGV > 2 + back then
  for i = 3 + back, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
end
return 1
"""

#: KEYS: the dead letters, the list, this operation's answer. ARGV: how long the answer is kept
#: (ms), "requeue" or "drop", then the dead letters as read (requeue: each followed by the entry
#: to put in the list). A letter no longer there (moved by another operator) is skipped. The
#: answer, the number moved, is kept for a call run again after its answer was lost.
_MOVE_DEAD = """
local done = redis.call('GET', KEYS[3])
if done then
  return tonumber(done)
end
local requeue = ARGV[2] == 'requeue'
local step = requeue and 2 or 1
local moved = 0
for i = 3, #ARGV, step do
  local gone
  if redis.call('LINDEX', KEYS[1], 0) == ARGV[i] then
    redis.call('LPOP', KEYS[1])  -- the usual case, oldest first: no scan of the list
    gone = 1
  else
    gone = redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
  if gone == 1 then
    moved = moved + 1
    if requeue then
      redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    end
  end
end
redis.call('SET', KEYS[3], moved, 'PX', ARGV[1])
return moved
"""

#: dead letters named per script call (a requeue or a drop), and their bytes at most
_MOVE_CHUNK = 200
_MOVE_CHUNK_BYTES = 16 * 1024 * 1024
#: how long a requeue's or drop's answer is kept in Redis, for a call run again
_ANSWER_MS = 10 * 60 * 1000

_Time = Annotated[float, Field(ge=MIN_TIME, le=MAX_TIME, allow_inf_nan=False)]
_Name = Annotated[str, Field(min_length=1, max_length=255)]


class OutboxEntry(BaseModel):
    """What an outbox entry must hold: an event as :meth:`StatusEvent.to_json` wrote it, and
    ``_tries``, the drains that failed on it unexpectedly."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    job_id: _Name
    status: Status
    attempt: Annotated[int, Field(ge=0, le=MAX_ATTEMPT, strict=True)]
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    actor_name: _Name
    queue_name: _Name
    event_at: _Time
    enqueued_at: _Time | None = None
    started_at: _Time | None = None
    next_retry_at: _Time | None = None
    progress: Annotated[int, Field(ge=0, le=100, strict=True)] | None = None
    progress_message: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    result: Any = None
    tries: Annotated[int, Field(ge=0, strict=True)] = Field(0, alias="_tries")

    @field_validator("event_at", "enqueued_at", "started_at", "next_retry_at", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a time is a number of seconds, not a boolean")
        return value

    def event(self) -> StatusEvent:
        return StatusEvent(
            self.job_id,
            self.status,
            self.attempt,
            Owner(str(self.tenant_id), str(self.user_id)),
            self.actor_name,
            self.queue_name,
            self.event_at,
            enqueued_at=self.enqueued_at,
            started_at=self.started_at,
            next_retry_at=self.next_retry_at,
            progress=self.progress,
            progress_message=self.progress_message,
            error_type=self.error_type,
            error_message=self.error_message,
            result=self.result,
        )


class BadEntry(ValueError):
    """An outbox entry that can never be written; ``reason`` says why (no entry text in it)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def parse_entry(raw: bytes | str) -> tuple[StatusEvent, int]:
    """(the event, its ``_tries``) of an outbox entry; :class:`BadEntry` when it has none."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise BadEntry(f"too_large: {len(raw)} bytes")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise BadEntry("not_json: nested too deep") from None
    except (ValueError, TypeError) as exc:  # includes UnicodeDecodeError
        raise BadEntry(f"not_json: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise BadEntry(f"not_an_event: a JSON {type(doc).__name__}")
    try:
        entry = OutboxEntry.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'entry'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise BadEntry(storable_text(f"invalid: {problems}", 500)) from None
    except RecursionError:
        raise BadEntry("invalid: nested too deep") from None
    return entry.event(), entry.tries


def entry_with_tries(event: StatusEvent, tries: int) -> str:
    """The outbox entry of ``event`` noting ``tries`` failed drains."""
    return event.to_json()[:-1] + f',"_tries":{int(tries)}}}'


@dataclass
class Claim:
    """Entries taken from the outbox: held under ``key`` until :meth:`RedisOutbox.settle`, or
    until the lease runs out."""

    key: str | None
    raw: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class DeadLetter:
    """An entry that will not be written: why, since when, and the entry as it was."""

    reason: str
    dead_at: float
    entry: str


class RedisOutbox:
    """Events as JSON strings in one Redis list (``RPUSH`` to spill; claims with a lease to
    drain) and the dead letters beside it (see the module docstring).

    Parameters:
      lease_seconds: how long a claim may stay unanswered before another worker takes its
        entries again; longer than a drain's store call can take.
    """

    def __init__(self, client: Any, key: str = DEFAULT_KEY, *, lease_seconds: float = 60.0) -> None:
        self.client = client
        self.key = key
        self.leases_key = f"{key}:leases"
        self.dead_key = f"{key}:dead"
        self.lease_seconds = lease_seconds
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisOutbox(key={self.key!r})"

    def push(self, events: Sequence[StatusEvent]) -> None:
        """Append events; raises TransientStoreError when Redis cannot take them."""
        if events:
            self._call("push", self.client.rpush, self.key, *[event.to_json() for event in events])

    def take(self, count: int) -> Claim:
        """Claim up to ``count`` entries (first returning expired claims to the list)."""
        claim_key = f"{self.key}:claim:{uuid.uuid4().hex}"
        raw = self._call(
            "read",
            self._script("take", _TAKE),
            keys=[self.key, self.leases_key],
            args=[max(1, int(count)), claim_key, int(self.lease_seconds * 1000)],
        )
        return Claim(claim_key, list(raw)) if raw else Claim(None)

    def settle(
        self,
        claim: Claim,
        *,
        put_back: Sequence[bytes | str] = (),
        dead: Sequence[tuple[bytes | str, str]] = (),
    ) -> None:
        """End ``claim``: ``put_back`` entries return to the list, ``dead`` ones (entry, reason)
        go to the dead letters, the rest are forgotten (written). One script, which does nothing
        when the claim is no longer held (settled already, or its lease ran out and its entries
        went back to the list). Raises TransientStoreError when Redis cannot be told (the lease
        then runs out and every entry comes back, which is harmless)."""
        if claim.key is None:
            return
        now = time.time()
        letters = [_letter(raw, reason, now) for raw, reason in dead]
        self._call(
            "update",
            self._script("settle", _SETTLE),
            keys=[self.key, self.dead_key, self.leases_key, claim.key],
            args=[MAX_DEAD_LETTERS, len(put_back), *put_back, *letters],
        )

    def bury(self, letters: Sequence[tuple[str, str]]) -> None:
        """Add (entry, reason) dead letters: events the store rejected and nothing could
        replace. Raises TransientStoreError when Redis cannot take them."""
        if letters:
            now = time.time()
            items = [_letter(entry, reason, now) for entry, reason in letters]

            def run() -> None:
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.rpush(self.dead_key, *items)
                    pipe.ltrim(self.dead_key, -MAX_DEAD_LETTERS, -1)
                    pipe.execute()

            self._call("update", run)

    def depth(self) -> int:
        """Entries waiting in the list (claimed ones are being applied), or -1 if Redis is down."""
        return self._length(self.key)

    def dead_depth(self) -> int:
        """Dead letters kept, or -1 if Redis is down."""
        return self._length(self.dead_key)

    # -- dead letters (coursegen outbox) ---------------------------------------------------------

    def dead_letters(
        self, start: int = 0, count: int = 20, *, jobs: Collection[str] | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, from index ``start`` (of those of ``jobs``, when given)."""
        raw = self._read_dead(count, jobs, start=start)
        return [_dead_letter(item) for item in raw]

    def requeue_dead(self, count: int | None = None, *, jobs: Collection[str] | None = None) -> int:
        """Move up to ``count`` (None: all there are now) dead letters, oldest first, of
        ``jobs`` when given, back to the outbox; returns how many. An entry comes back as it
        was, without its ``_tries``. Each letter is moved in one script (see the module
        docstring): a failure at any point leaves it in the dead letters or in the list."""
        return self._move_dead("requeue", count, jobs)

    def drop_dead(self, count: int | None = None, *, jobs: Collection[str] | None = None) -> int:
        """Forget up to ``count`` (None: all there are now) dead letters, oldest first, of
        ``jobs`` when given; returns how many."""
        return self._move_dead("drop", count, jobs)

    def _move_dead(self, mode: str, count: int | None, jobs: Collection[str] | None) -> int:
        if count is None:  # all: those there now, not those buried while this runs
            count = int(self._call("read", self.client.llen, self.dead_key))
        script = self._script("move_dead", _MOVE_DEAD)
        moved = 0
        while moved < count:
            letters = self._read_dead(min(count - moved, _MOVE_CHUNK), jobs)
            if not letters:
                break
            stalled = True
            for chunk in _chunks(letters):
                args: list[bytes | str] = []
                for letter in chunk:
                    args += [letter, _requeued_entry(letter)] if mode == "requeue" else [letter]
                answer = f"{self.dead_key}:done:{uuid.uuid4().hex}"
                done = int(
                    self._call(
                        "update",
                        script,
                        keys=[self.dead_key, self.key, answer],
                        args=[_ANSWER_MS, mode, *args],
                    )
                )
                moved += done
                stalled = stalled and not done
            if stalled:  # another operator moved what this one read: it is done
                break
        return moved

    def _read_dead(self, count: int, jobs: Collection[str] | None, *, start: int = 0) -> list[bytes]:
        """Up to ``count`` dead letters as stored, oldest first, from the ``start``-th of those
        of ``jobs`` (every letter when None)."""
        if count <= 0:
            return []
        if jobs is None:
            return list(self._call("read", self.client.lrange, self.dead_key, start, start + count - 1))
        wanted = set(jobs)
        found: list[bytes] = []
        index = 0
        while len(found) < start + count:
            page = self._call("read", self.client.lrange, self.dead_key, index, index + 999)
            found += [item for item in page if _job_of(item) in wanted]
            if len(page) < 1000:
                break
            index += len(page)
        return found[start : start + count]

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(source)
        return script

    def _length(self, key: str) -> int:
        import redis

        try:
            return int(self.client.llen(key))
        except redis.RedisError:
            return -1

    @staticmethod
    def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise TransientStoreError(f"outbox {what} failed: {type(exc).__name__}", reason="outbox") from exc


def _letter(raw: bytes | str, reason: str, now: float) -> str:
    return json.dumps(
        {"reason": reason, "dead_at": now, "entry": _text(raw)[:MAX_ENTRY_BYTES]}, ensure_ascii=False
    )


def _text(raw: bytes | str) -> str:
    """An entry as text for a dead letter (bytes that are not UTF-8 are replaced)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _dead_letter(item: bytes) -> DeadLetter:
    try:
        doc = json.loads(item)
        return DeadLetter(str(doc["reason"]), float(doc["dead_at"]), str(doc["entry"]))
    except (ValueError, TypeError, KeyError):
        return DeadLetter("unreadable dead letter", 0.0, _text(item))


def _requeued_entry(item: bytes) -> str:
    """What a dead letter puts back in the outbox: its entry as an event would write it (no
    ``_tries``), or as it was when it is not one (the next drain buries it again)."""
    entry = _dead_letter(item).entry
    try:
        return parse_entry(entry)[0].to_json()
    except BadEntry:
        return entry


def _job_of(item: bytes) -> str | None:
    """The job a dead letter's entry names, if it names one."""
    try:
        job_id = json.loads(_dead_letter(item).entry).get("job_id")
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None
    return job_id if isinstance(job_id, str) else None


def _chunks(letters: list[bytes]) -> Iterator[list[bytes]]:
    """``letters`` in runs of at most ``_MOVE_CHUNK_BYTES`` (a letter larger than that alone)."""
    chunk: list[bytes] = []
    size = 0
    for letter in letters:
        if chunk and size + 2 * len(letter) > _MOVE_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(letter)
        size += 2 * len(letter)  # the letter, and the entry it puts back
    if chunk:
        yield chunk


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


__all__ = ["BadEntry", "Claim", "DeadLetter", "OutboxEntry", "OutboxStore", "RedisOutbox", "parse_entry"]
