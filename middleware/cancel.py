"""Cancellation flags the workers read cheaply: one Redis key per job on the broker's Redis.

A producer that cancels a job calls :meth:`RedisCancelFlags.request`; workers consult
:meth:`RedisCancelFlags.is_requested` (wired as ``JobStatusMiddleware(is_cancel_requested=...)``)
when they pick a message up and, throttled, at each progress checkpoint of a running job. The
durable record of the request is the row's ``cancel_requested_at``; the flag expires on its own
after ``ttl`` seconds (longer than any job stays queued or runs).
"""

from __future__ import annotations

from typing import Any

DEFAULT_PREFIX = "job_status:cancel:"
#: three days: longer than a job waits in a queue or in retries in any sane setup
DEFAULT_TTL = 3 * 24 * 3600


class RedisCancelFlags:
    """``SET <prefix><job_id> 1 EX <ttl>`` to request, ``EXISTS`` to check."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, ttl: int = DEFAULT_TTL) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"RedisCancelFlags(prefix={self.prefix!r}, ttl={self.ttl})"

    def key(self, job_id: str) -> str:
        return self.prefix + job_id

    def request(self, job_id: str) -> None:
        """Flag the job; raises ``redis.RedisError`` when Redis cannot take it."""
        self.client.set(self.key(job_id), b"1", ex=self.ttl)

    def is_requested(self, job_id: str) -> bool:
        """Whether cancellation of the job was requested (one ``EXISTS``)."""
        return bool(self.client.exists(self.key(job_id)))

    __call__ = is_requested
