"""SentJobs: the jobs this process sent lately, and the writer that holds each one's first status.

Read-your-writes for producers. A job's ``pending`` row is written by the writer thread up to a
flush interval after ``send()``; a producer that looks its job up at once (status, wait,
cancel) would miss it. :class:`~middleware.status_sync.JobStatusMiddleware` notes each job it
announces here (one dict entry, about a microsecond on ``send()``); a reader that misses a job
asks :meth:`SentJobs.get` and, when this process sent it, flushes that writer and reads again.
The owner is kept too, so that a reader acting for a user flushes nothing for another user's job
and answers exactly as for an unknown one.

Process-wide (:data:`SENT`): any app, any broker, any ``StatusWriter`` of the process. It keeps
the latest ``max_jobs`` sends and starts empty in a forked child (whose writers start empty).
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import TYPE_CHECKING, NamedTuple

from .events import Owner

if TYPE_CHECKING:
    from .writer import StatusWriter


class SentJob(NamedTuple):
    owner: Owner
    writer: StatusWriter


class SentJobs:
    """job id -> :class:`SentJob`, for the latest ``max_jobs`` jobs sent by this process."""

    def __init__(self, max_jobs: int = 10_000) -> None:
        self.max_jobs = max_jobs
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (sent := ref()) and sent._reset())

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[str, SentJob] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job_id: str, owner: Owner, writer: StatusWriter) -> None:
        with self._lock:
            self._jobs[job_id] = SentJob(owner, writer)
            if len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)

    def get(self, job_id: str) -> SentJob | None:
        with self._lock:
            return self._jobs.get(job_id)


#: the process's registry, which every JobStatusMiddleware fills by default
SENT = SentJobs()

__all__ = ["SENT", "SentJob", "SentJobs"]
