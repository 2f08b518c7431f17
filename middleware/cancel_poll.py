"""CancelPoll: a cancellation requested in the database reaches the workers' flags in about a second.

Workers honour cancellation through flags on the broker's Redis (:mod:`middleware.cancel`),
which ``coursegen.jobs`` sets. A request may also be made where only the database sees it:
``public.cancel_job`` from a browser, ``job_status_request_cancel``, a plain ``update ... set
cancel_requested_at = now()`` in Supabase Studio. This copies those into the flags.

The cost trade-off: every worker process asking the database every second would cost the
database one query per second per process (and the Supabase store has no connection, only
HTTP). Instead one process of the fleet at a time asks. Each worker's writer thread tries a
Redis lease every ``interval`` seconds (``SET <key> NX PX <interval>``); the one that gets it
reads the stamps made since a watermark kept in Redis, through its own store
(``public.job_status_cancel_requests``, over a partial index of the stamped rows), and adds the
live jobs among them to the flag set. The fleet costs the database about one query per
``interval`` whatever its size; a process one Redis ``SET`` per ``interval`` (the lease holder
two or three calls more). The Redis flag stays the fast path of ``coursegen.jobs.cancel``.

The watermark is the latest ``cancel_requested_at`` read. A stamp is its transaction's start
time and may commit after a later one was read, so each poll reads again from ``overlap``
seconds before the watermark; a job flagged already is not flagged twice. With no watermark (a
new Redis), a poll starts ``lookback`` seconds back.

Jobs a producer flagged before their row existed (``RedisCancelFlags.request(row_missing=True)``)
get their rows stamped by the lease holder once the rows exist, with the time of the request
(``public.job_status_stamp_cancels``); after ``lookback`` seconds they are forgotten.

The lease holder also reads how far behind retention is (``public.job_status_retention_lag``,
through the store's ``retention_lag``) at most once per ``lag_interval`` for the whole fleet (a
second Redis lease, ``<key>:retention_lag``, held that long), and sets the gauge
``job_status_retention_lag_seconds``: a pg_cron job that stopped, or a ``coursegen purge`` that
nobody runs any more, shows as a lag that grows (alert ``JobStatusRetentionBehind``). A failed
read is logged (at most once a minute) and counted (``job_status_retention_lag_reads{outcome=
"failed"}``); it changes nothing else: the cancel poll goes on, and the fleet tries again after
``lag_interval``.

Runs in the writer thread of worker processes (:class:`~middleware.writer.StatusWriter`'s
``cancel_poll``), with the store the writer built there. A failed poll never stops the writer:
it is logged (at most once a minute) and counted, and the next one waits longer (up to a minute).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .cancel import RedisCancelFlags
from .errors import StoreError
from .stores.base import CancelSource, RetentionLagSource
from .sync_metrics import SyncMetrics

logger = logging.getLogger(__name__)

DEFAULT_KEY = "job_status:cancel_poll"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_MAX_BACKOFF = 60.0
_LOG_EVERY = 60.0

# Moves the watermark (epoch microseconds) forward, never back: two pollers may overlap when a
# poll outlives its lease.
_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


def _warn(exc: Exception, action: str, what: str) -> None:
    """A failed turn's warning: the error's class and text (a traceback only for the unexpected)."""
    import redis

    logger.warning(
        "%s (%s: %s)",
        what,
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, StoreError | redis.RedisError),
        extra={"action": action, "reason": getattr(exc, "reason", "error")},
    )


@dataclass(frozen=True)
class PollResult:
    """What one turn did. ``polled``: this process held the lease and read the store."""

    polled: bool
    read: int = 0  # stamps read (live or not)
    copied: int = 0  # jobs newly flagged
    stamped: int = 0  # unstamped jobs whose rows now exist
    lag: float | None = None  # the retention lag, when this turn read it


class CancelPoll:
    """Copies the database's cancellation requests into ``flags`` (see the module docstring)."""

    def __init__(
        self,
        flags: RedisCancelFlags,
        *,
        interval: float = 1.0,
        overlap: float = 10.0,
        lookback: float = 86_400.0,
        page: int = 500,
        max_pages: int = 10,
        key: str = DEFAULT_KEY,
        lag_interval: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lag_interval and lag_interval < 60:
            raise ValueError("lag_interval: 0 (off) or at least 60 seconds")
        self.flags = flags
        self.interval = interval
        self.overlap = overlap
        self.lookback = lookback
        self.page = page
        self.max_pages = max_pages
        self.key = key
        self.watermark_key = key + ":watermark"
        self.lag_interval = lag_interval
        self.lag_key = key + ":retention_lag"
        self._clock = clock
        self._advance: Any = None
        self._next = 0.0
        self._failures = 0
        self._logged_at = -_LOG_EVERY
        self._unsupported = False
        self._lag_logged_at = -_LOG_EVERY

    def __repr__(self) -> str:
        return f"CancelPoll(key={self.key!r}, interval={self.interval})"

    def maybe_poll(self, get_store: Callable[[], Any], metrics: SyncMetrics) -> PollResult | None:
        """Take a turn if one is due (every ``interval`` seconds); None when not due. Never raises."""
        now = time.monotonic()
        if self._unsupported or now < self._next:
            return None
        try:
            store = get_store()
            if not isinstance(store, CancelSource):
                self._unsupported = True
                logger.info(
                    "The status store %r cannot be asked for cancellation requests; this process "
                    "does not poll for them.",
                    store,
                    extra={"action": "cancel_poll_unsupported"},
                )
                return None
            result = self.poll(store)
        except Exception as exc:  # noqa: BLE001 - a poll never stops the writer: logged (_warn), counted
            self._failures += 1
            self._next = now + min(_MAX_BACKOFF, self.interval * 2**self._failures)
            metrics.cancel_polls.labels("failed").inc()
            if now - self._logged_at >= _LOG_EVERY:
                self._logged_at = now
                _warn(
                    exc,
                    "cancel_poll_failed",
                    "Could not poll the database for cancellation requests; trying again.",
                )
            return None
        self._failures = 0
        self._next = now + self.interval
        if result.polled:
            metrics.cancel_polls.labels("polled").inc()
            lag = self._read_lag(store, metrics, now)
            if lag is not None:
                result = replace(result, lag=lag)
        if result.copied:
            metrics.cancel_requests_copied.inc(result.copied)
            logger.info(
                "Cancellation requested in the database for %d jobs; flagged for the workers.",
                result.copied,
                extra={"action": "cancel_poll_copied", "jobs": result.copied},
            )
        return result

    def _read_lag(self, store: Any, metrics: SyncMetrics, now: float) -> float | None:
        """The retention lag, read and exported when the fleet's turn for it has come and this
        process took it; None otherwise. Never raises."""
        if not self.lag_interval or not isinstance(store, RetentionLagSource):
            return None
        try:
            token = f"{socket.gethostname()}:{os.getpid()}"
            if not self.flags.client.set(self.lag_key, token, nx=True, px=int(self.lag_interval * 1000)):
                return None
            lag = store.retention_lag()
        except Exception as exc:  # noqa: BLE001 - nor does the lag's read: logged (_warn), counted
            metrics.retention_lag_reads.labels("failed").inc()
            if now - self._lag_logged_at >= _LOG_EVERY:
                self._lag_logged_at = now
                _warn(
                    exc,
                    "retention_lag_failed",
                    "Could not read how far behind retention is; the fleet tries again in "
                    f"{self.lag_interval:.0f} s.",
                )
            return None
        metrics.retention_lag.set(lag)
        metrics.retention_lag_read_at.set(self._clock())
        metrics.retention_lag_reads.labels("read").inc()
        if lag > 0:
            logger.debug("Retention is %.0f s behind.", lag, extra={"action": "retention_lag", "lag": lag})
        return lag

    def poll(self, store: CancelSource) -> PollResult:
        """One turn: take the lease, or leave it to the process that has it. Raises
        ``redis.RedisError`` and :class:`~middleware.errors.StoreError`."""
        client = self.flags.client
        token = f"{socket.gethostname()}:{os.getpid()}"
        if not client.set(self.key, token, nx=True, px=max(1, int(self.interval * 1000))):
            return PollResult(polled=False)
        pipe = client.pipeline(transaction=False)
        pipe.get(self.watermark_key)
        pipe.zrange(self.flags.unstamped_key, 0, self.page - 1, withscores=True)
        watermark, unstamped = pipe.execute()
        if watermark is not None:
            since = _EPOCH + _MICROSECOND * int(watermark) - dt.timedelta(seconds=self.overlap)
        else:
            since = _EPOCH + dt.timedelta(seconds=self._clock() - self.lookback)
        read = copied = 0
        newest: dt.datetime | None = None
        after = ""
        for _ in range(self.max_pages):
            rows = store.cancel_requests(since, after, self.page)
            read += len(rows)
            copied += self.flags.request_missing([row.job_id for row in rows if row.live])
            if rows:
                since, after = rows[-1].requested_at, rows[-1].job_id
                newest = since
            if len(rows) < self.page:
                break
        if newest is not None:
            if self._advance is None:
                self._advance = client.register_script(_ADVANCE)
            self._advance(keys=[self.watermark_key], args=[(newest - _EPOCH) // _MICROSECOND])
        stamped = self._stamp(store, unstamped)
        return PollResult(polled=True, read=read, copied=copied, stamped=stamped)

    def _stamp(self, store: CancelSource, unstamped: list[tuple[Any, float]]) -> int:
        """Stamp the rows of jobs flagged before their row existed, with their request's time."""
        if not unstamped:
            return 0
        requests = [
            (
                member.decode() if isinstance(member, bytes) else str(member),
                _EPOCH + dt.timedelta(seconds=when),
            )
            for member, when in unstamped
        ]
        found = store.stamp_cancels(requests)
        pipe = self.flags.client.pipeline(transaction=False)
        if found:
            pipe.zrem(self.flags.unstamped_key, *found)
        pipe.zremrangebyscore(self.flags.unstamped_key, "-inf", self._clock() - self.lookback)
        pipe.execute()
        return len(found)


__all__ = ["DEFAULT_KEY", "CancelPoll", "PollResult"]
