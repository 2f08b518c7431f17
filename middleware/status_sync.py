"""JobStatusMiddleware: Dramatiq hooks -> status events.

Put it on a broker with :func:`middleware.install`, which places it first (see
:mod:`middleware.wiring` for why). Hooks only build an event and hand it to the writer; a
failure in a hook is logged and counted, and never touches the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message, Middleware
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage

from .errors import InvalidOwnerError, JobCancelled
from .events import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_PROGRESS_MESSAGE_CHARS,
    Identity,
    Owner,
    Status,
    StatusEvent,
    event_time,
    make_identity,
    storable_name,
)
from .message_fields import (
    OwnerExtractor,
    attempt_of,
    check_owner,
    class_name,
    error_fields,
    owner_from_payload,
    progress_percent,
    seconds_from_ms,
    unwrapped,
)
from .redaction import clean_text
from .sent import SENT, SentJobs
from .storable import storable_text
from .sync_metrics import get_metrics
from .validation import add_throws
from .writer import StatusWriter

logger = logging.getLogger(__name__)

#: message option set on a tracked message when it is first enqueued
SENT_OPTION = "status_sent"
#: the option Dramatiq's Retries sets on every copy it re-enqueues
_RETRY_MARK = "traceback"
#: (owner, actor, queue) combinations whose checked texts a middleware keeps
_MAX_NAMES = 10_000
#: error_type of a job's final event when the real one could not be built (its row still ends)
UNBUILDABLE_TYPE = "StatusEventUnbuildable"


class _AttemptState:
    """What one worker thread knows about the message it is processing.

    A plain object with slots, one per thread (:class:`_PerThread`): a hook fetches it once and
    then sets about ten fields, each five times cheaper than on a ``threading.local``."""

    __slots__ = (
        "attempt",
        "bad_progress",
        "cancel_checked_at",
        "cancelled",
        "fresh",
        "identity",
        "job_id",
        "progress",
        "progress_at",
        "retry_at",
        "started_at",
    )

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.identity: Identity | None = None
        self.attempt = 0
        self.started_at: float | None = None
        self.retry_at: float | None = None
        self.cancelled = False
        self.progress = -1
        self.progress_at = 0.0
        self.bad_progress = False  # a percent that is not a number was reported (and logged)
        self.cancel_checked_at = 0.0
        self.fresh: Identity | None = None  # set by before_enqueue for after_enqueue


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.state = _AttemptState()


class JobStatusMiddleware(Middleware):
    """Mirrors the lifecycle of tracked actors' messages into a status store.

    Parameters:
      writer: the process's :class:`StatusWriter`.
      owner_of: extracts the job's owner from a message (default: the payload's
        ``tenant_id`` and ``user_id``).
      track_all: track every actor; otherwise only actors declared with ``track_status=True``.
      max_result_bytes: a result whose JSON is larger is stored as a summary (``_truncated``).
      is_cancel_requested: ``job_id -> bool``, consulted before a message runs (a job whose
        cancellation was requested is skipped and ends ``cancelled``) and, at most every
        ``cancel_check_interval`` seconds, at the running job's progress checkpoints
        (:meth:`check_cancelled` raises :class:`~middleware.errors.JobCancelled`, which ends
        the job ``cancelled`` and is never retried).
      sent: where each job this process announces is noted with its owner and writer, so that
        a producer can read its own job at once (:mod:`middleware.sent`; None: nowhere).
    """

    def __init__(
        self,
        writer: StatusWriter,
        *,
        owner_of: OwnerExtractor = owner_from_payload,
        track_all: bool = False,
        is_cancel_requested: Callable[[str], bool] | None = None,
        progress_interval: float = 0.25,
        cancel_check_interval: float = 0.5,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        sent: SentJobs | None = SENT,
    ) -> None:
        self.writer = writer
        self.sent = sent
        self.owner_of = owner_of
        self.track_all = track_all
        self.is_cancel_requested = is_cancel_requested
        self.progress_interval = progress_interval
        self.cancel_check_interval = cancel_check_interval
        self.max_result_bytes = max_result_bytes
        self._local = _PerThread()
        self._tracked: dict[str, bool] = {}
        self._names: dict[tuple[Any, ...], tuple[Owner, str, str]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"track_status"}

    def _is_tracked(self, broker: Broker, actor_name: str) -> bool:
        tracked = self._tracked.get(actor_name)
        if tracked is None:
            try:
                options = broker.get_actor(actor_name).options
            except ActorNotFound:
                return self.track_all
            tracked = self._tracked[actor_name] = bool(options.get("track_status", self.track_all))
        return tracked

    def _identity(self, message: Message[Any], owner: Owner | None = None) -> Identity | None:
        """What every event of this message repeats: read once per message, not per event."""
        raw = unwrapped(message)
        if owner is None:
            owner = self.owner_of(raw)
        if owner is None:
            get_metrics().failures.labels("no_owner").inc()
            logger.error(
                "Tracked message has no owner; its status is not recorded.",
                extra={"action": "sync_no_owner", "reason": "no_owner", "job_id": raw.message_id},
            )
            return None
        enqueued_at = seconds_from_ms(raw.message_timestamp)
        if type(owner[0]) is not str or type(owner[1]) is not str:
            return make_identity(raw.message_id, owner, raw.actor_name, q_name(raw.queue_name), enqueued_at)
        # owners and actors repeat from message to message: their checked form is kept
        key = (owner[0], owner[1], raw.actor_name, raw.queue_name)
        names = self._names.get(key)
        if names is None:
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            # a delayed message sits on "<queue>.DQ": the row names the actor's queue
            _, stored_owner, actor, queue, _ = make_identity(
                "-", owner, raw.actor_name, q_name(raw.queue_name), None
            )
            names = self._names[key] = (stored_owner, actor, queue)
        return (storable_name(raw.message_id), *names, enqueued_at)

    def _submit(self, identity: Identity | None, status: Status, attempt: int, **fields: Any) -> None:
        if identity is None:
            return
        self.writer.submit(
            StatusEvent.of(
                identity, status, attempt, event_time(), max_result_bytes=self.max_result_bytes, **fields
            )
        )

    def _hook_failed(self, hook: str, message: Message[Any]) -> None:
        logger.exception(
            "Job status hook %s failed; the job is unaffected.",
            hook,
            extra={"action": "sync_hook_error", "reason": "hook", "job_id": message.message_id},
        )
        try:
            get_metrics().failures.labels("hook").inc()
        except Exception:  # metrics must never turn a logged failure into a crash
            logger.debug("could not count a hook failure", exc_info=True)

    def _cancel_requested(self, message: Message[Any], job_id: str) -> bool:
        """The flag, or False when it cannot be read (logged and counted; the job runs)."""
        if self.is_cancel_requested is None:
            return False
        try:
            return bool(self.is_cancel_requested(job_id))
        except Exception:  # noqa: BLE001 - an unreadable flag never stops the job's status
            self._hook_failed("is_cancel_requested", message)
            return False

    def check_cancelled(self, message: Message[Any]) -> None:
        """Raise :class:`JobCancelled` when cancellation of the running job was requested.

        Throttled: the flag is read at most every ``cancel_check_interval`` seconds per job
        (and was read when the job started). A failure to read it is logged, never raised.
        """
        state = self._local.state
        if self.is_cancel_requested is None or state.job_id != message.message_id:
            return
        now = time.monotonic()
        if now - state.cancel_checked_at < self.cancel_check_interval:
            return
        state.cancel_checked_at = now
        if self._cancel_requested(message, state.job_id):
            state.cancelled = True
            raise JobCancelled(message.message_id)

    def report_progress(self, message: Message[Any], percent: int, text: str | None = None) -> bool:
        """Record progress of the message this thread is running (see middleware.progress).

        Throttled: nothing unless the percentage changed, and at most one event every
        ``progress_interval`` seconds (100% always goes through). True when an event was made.
        """
        state = self._local.state
        if state.job_id != message.message_id:
            return False
        if type(percent) is not int or not 0 <= percent <= 100:
            percent = progress_percent(percent)
        if percent is None:  # progress is news, never a reason to fail the job: ignored
            if not state.bad_progress:
                state.bad_progress = True
                logger.warning(
                    "Progress of job %s ignored: the percent is not a finite number.",
                    state.job_id,
                    extra={"action": "sync_bad_progress", "job_id": state.job_id},
                )
            return False
        now = time.monotonic()
        if percent == state.progress or (percent < 100 and now - state.progress_at < self.progress_interval):
            return False
        state.progress, state.progress_at = percent, now
        self._submit(
            state.identity,
            Status.ACTIVE,
            state.attempt,
            started_at=state.started_at,
            progress=percent,
            progress_message=None
            if text is None
            else clean_text(storable_text(text), MAX_PROGRESS_MESSAGE_CHARS),
        )
        return True

    # -- hooks, in lifecycle order --------------------------------------------------------

    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        self._tracked.pop(actor.actor_name, None)
        if actor.options.get("track_status", self.track_all):
            add_throws(actor, JobCancelled)  # a cancelled job is never retried

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        state = self._local.state
        state.fresh = None
        if not self._is_tracked(broker, message.actor_name):
            return
        if SENT_OPTION in message.options or _RETRY_MARK in message.options:
            # announced already: a delayed message back from the delay queue, or a copy that
            # Retries re-enqueued (it stamps the traceback; a producer's own options, even
            # "retries", do not skip the owner check)
            return
        try:
            owner = self.owner_of(message)
        except Exception as exc:
            raise InvalidOwnerError(message.actor_name, f"could not read the owner: {exc}") from exc
        problem = check_owner(owner)
        if problem is not None:
            raise InvalidOwnerError(message.actor_name, problem)
        # Marks the message as announced: Dramatiq strips "eta" from a delayed message when it
        # moves back from the delay queue, so only a mark of our own tells that enqueue apart.
        message.options[SENT_OPTION] = 1
        state.fresh = self._identity(message, owner)  # for after_enqueue: owner read once

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        try:
            state = self._local.state
            fresh, state.fresh = state.fresh, None
            if fresh is not None:
                self._submit(fresh, Status.PENDING, 0)
                if self.sent is not None:
                    self.sent.add(fresh[0], fresh[1], self.writer)
            elif (
                "retries" in message.options
                and delay is not None
                and self._is_tracked(broker, message.actor_name)
            ):
                # Retries re-enqueued it from this worker thread: remember when it runs again
                state.retry_at = seconds_from_ms(message.options["eta"])
        except Exception:  # noqa: BLE001 - hooks never fail the job; logged and counted
            self._hook_failed("after_enqueue", message)

    def before_process_message(self, broker: Broker, message: Message[Any]) -> None:
        state = self._local.state
        state.job_id = None
        state.cancelled = False
        state.retry_at = None
        state.progress, state.progress_at = -1, 0.0
        state.bad_progress = False
        state.cancel_checked_at = time.monotonic()
        try:
            raw = unwrapped(message)
            if not self._is_tracked(broker, raw.actor_name):
                return
            state.identity = identity = self._identity(raw)
            if identity is None:
                return
            state.job_id = job_id = identity[0]
            state.attempt = attempt_of(raw.options.get("retries"))
            state.started_at = event_time()
            if self._cancel_requested(message, job_id):
                state.cancelled = True
            else:  # the active event is made only if the job still runs at the writer's next flush
                self.writer.started((identity, state.attempt, state.started_at))
        except Exception:  # noqa: BLE001 - hooks never fail the job; logged and counted
            self._hook_failed("before_process_message", message)
        if state.cancelled:
            message.fail()
            raise SkipMessage("cancellation was requested before the job started")

    def after_process_message(
        self,
        broker: Broker,
        message: Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        state = self._local.state
        if state.job_id != unwrapped(message).message_id:
            return
        state.job_id = None
        identity = state.identity  # read once when the message started
        try:
            if exception is None:
                self._submit(
                    identity, Status.COMPLETED, state.attempt, started_at=state.started_at, result=result
                )
                return
            if isinstance(exception, JobCancelled):
                self._submit(
                    identity,
                    Status.CANCELLED,
                    state.attempt,
                    started_at=state.started_at,
                    progress=max(state.progress, 0),
                )
                return
            error = error_fields(exception)
            if state.retry_at is not None and not message.failed:
                self._submit(
                    identity,
                    Status.RETRYING,
                    state.attempt,
                    started_at=state.started_at,
                    next_retry_at=state.retry_at,
                    **error,
                )
            else:
                self._submit(identity, Status.FAILED, state.attempt, started_at=state.started_at, **error)
        except BaseException as exc:  # noqa: BLE001 - hooks never fail the job, and a job always ends:
            # whatever the result or exception did to the event, a plain one says how it ended
            self._hook_failed("after_process_message", message)
            self._submit_plain(identity, state, message, exception, exc)

    def _submit_plain(
        self,
        identity: Identity | None,
        state: _AttemptState,
        message: Message[Any],
        exception: BaseException | None,
        problem: BaseException,
    ) -> None:
        """The job's outcome without its result or error texts, saying why (see
        :func:`~middleware.delivery.replacement_for`, which does the same for a rejected event)."""
        retry_at = None
        if exception is None:
            status = Status.COMPLETED
        elif isinstance(exception, JobCancelled):
            status = Status.CANCELLED
        elif state.retry_at is not None and not message.failed:
            status, retry_at = Status.RETRYING, state.retry_at
        else:
            status = Status.FAILED
        try:
            self._submit(
                identity,
                status,
                state.attempt,
                started_at=state.started_at,
                next_retry_at=retry_at,
                error_type=UNBUILDABLE_TYPE,
                error_message=f"the job's status event could not be built ({class_name(type(problem))})",
            )
        except BaseException:  # nothing more to try; logged
            logger.exception(
                "Could not record how job %s ended.",
                message.message_id,
                extra={"action": "sync_hook_error", "reason": "hook", "job_id": message.message_id},
            )

    def after_skip_message(self, broker: Broker, message: Message[Any]) -> None:
        state = self._local.state
        if state.job_id != message.message_id:
            return
        state.job_id = None
        try:
            status = Status.CANCELLED if state.cancelled else Status.SKIPPED
            self._submit(state.identity, status, state.attempt)
        except Exception:  # noqa: BLE001 - hooks never fail the job; logged and counted
            self._hook_failed("after_skip_message", message)

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        # before the worker threads start: the store's imports must not stall the first jobs
        self.writer.prepare()

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self.writer.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        # Worker threads may still finish messages after this: only flush here.
        self.writer.flush(timeout=self.writer.close_timeout)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        # The last point before a dramatiq worker process exits: it leaves through os._exit
        # (multiprocessing), so atexit handlers would never run there.
        if not self.writer.close():
            logger.error(
                "Some status events could not be flushed at shutdown.",
                extra={"action": "sync_shutdown_incomplete"},
            )
