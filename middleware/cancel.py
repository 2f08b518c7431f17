"""Cancellation flags the workers read cheaply, kept on the broker's Redis.

A producer that cancels a job calls :meth:`RedisCancelFlags.request`; workers consult
:meth:`RedisCancelFlags.is_requested` (wired as ``JobStatusMiddleware(is_cancel_requested=...)``)
when they pick a message up and, throttled, at each progress checkpoint of a running job.

Requests live in one sorted set, scored by a sequence number. Each worker process keeps a copy of
the flagged job ids and fetches only what was added since, at most every ``refresh`` seconds: a
worker pays one Redis call per interval, not one per message (a per-message ``EXISTS`` would cost
more CPU than the whole status sync budget of a short job). The price: a job cancelled less than
``refresh`` seconds before a worker picks it up starts, and stops at its first checkpoint. With
``refresh=0`` every call asks Redis. The durable record of a request is the row's
``cancel_requested_at``; the set keeps the latest ``max_entries`` requests.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any

DEFAULT_KEY = "job_status:cancel_requests"
DEFAULT_REFRESH = 0.5
DEFAULT_MAX_ENTRIES = 100_000

# INCR the sequence and add the job with it atomically: a reader that has seen sequence n never
# misses a request numbered below n.
_REQUEST = """
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
return seq
"""


class RedisCancelFlags:
    """Cancellation requests: ``request(job_id)`` on producers, ``is_requested(job_id)`` on
    workers (answered from a local copy refreshed at most every ``refresh`` seconds)."""

    def __init__(
        self,
        client: Any,
        *,
        key: str = DEFAULT_KEY,
        refresh: float = DEFAULT_REFRESH,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.client = client
        self.key = key
        self.refresh = refresh
        self.max_entries = max_entries
        self._script: Any = None
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (flags := ref()) and flags._reset())

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._seen = 0.0  # the highest sequence number fetched
        self._next_refresh = 0.0

    def __repr__(self) -> str:
        return f"RedisCancelFlags(key={self.key!r}, refresh={self.refresh})"

    def request(self, job_id: str) -> int:
        """Flag the job; returns the request's sequence number. Raises ``redis.RedisError``."""
        if self._script is None:
            self._script = self.client.register_script(_REQUEST)
        return int(self._script(keys=[self.key, self.key + ":seq"], args=[job_id, self.max_entries]))

    def is_requested(self, job_id: str) -> bool:
        """Whether cancellation of the job was requested (as of at most ``refresh`` seconds ago).

        Raises ``redis.RedisError`` when a due refresh cannot reach Redis.
        """
        if time.monotonic() >= self._next_refresh:
            self._fetch()
        return job_id in self._known

    __call__ = is_requested

    def _fetch(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_refresh:
                return  # another thread just did it
            rows = self.client.zrangebyscore(self.key, f"({self._seen}", "+inf", withscores=True)
            for member, score in rows:
                self._known.add(member.decode() if isinstance(member, bytes) else member)
                self._seen = max(self._seen, score)
            if len(self._known) > 2 * self.max_entries:  # long-lived process: forget trimmed ones
                self._known = {
                    m.decode() if isinstance(m, bytes) else m for m in self.client.zrange(self.key, 0, -1)
                }
            self._next_refresh = now + self.refresh
