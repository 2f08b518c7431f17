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
``cancel_requested_at``; the set keeps the latest ``max_entries`` requests. A request made in the
database alone reaches the set through the fleet's poller (:mod:`middleware.cancel_poll`), which
also stamps the rows of jobs flagged before their row existed (``request(row_missing=True)``).
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
#: jobs flagged before their row existed, by when: the cancel poller stamps their rows
UNSTAMPED_SUFFIX = ":unstamped"

# INCR the sequence and add the job with it atomically: a reader that has seen sequence n never
# misses a request numbered below n.
_REQUEST = """
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
return seq
"""

# The same for each job not flagged yet (a poller copying the database's requests over again).
_REQUEST_MISSING = """
local added = 0
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[i])
    added = added + 1
  end
end
if added > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[1]) - 1) end
return added
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
        self._scripts: dict[str, Any] = {}
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

    @property
    def unstamped_key(self) -> str:
        return self.key + UNSTAMPED_SUFFIX

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def request(self, job_id: str, *, row_missing: bool = False) -> int:
        """Flag the job; returns the request's sequence number. ``row_missing``: the job has no
        row yet; the cancel poller stamps it once it does. Raises ``redis.RedisError``."""
        keys = [self.key, self.key + ":seq", self.unstamped_key]
        args = [job_id, self.max_entries, repr(time.time()) if row_missing else ""]
        return int(self._script(_REQUEST)(keys=keys, args=args))

    def request_missing(self, job_ids: list[str]) -> int:
        """Flag those of the jobs that are not flagged yet; returns how many were. One call."""
        if not job_ids:
            return 0
        keys = [self.key, self.key + ":seq"]
        return int(self._script(_REQUEST_MISSING)(keys=keys, args=[self.max_entries, *job_ids]))

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
