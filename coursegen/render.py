"""Text rendering for the terminal: progress bars, status lines, tables. No I/O here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from middleware.events import Status

BAR_WIDTH = 24


def bar(percent: int, width: int = BAR_WIDTH) -> str:
    """``[#########---------------]``."""
    filled = max(0, min(width, round(width * percent / 100)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def outcome_detail(status: Status, result: Any, error_type: str | None, error_message: str | None) -> str:
    """One phrase about how a job ended (or what it is doing)."""
    if status is Status.COMPLETED and isinstance(result, dict):
        stats = result.get("stats") or {}
        title = result.get("title")
        parts = [f"{stats[k]} {k}" for k in ("modules", "lessons", "questions") if k in stats]
        text = f'"{title}"' if title else "done"
        if parts:
            text += ": " + ", ".join(parts)
        if result.get("truncated"):
            text += " (stored as an outline: the full course is too large for a job result)"
        return text
    if error_type or error_message:
        return f"{error_type or 'error'}: {error_message or ''}".strip()
    if status is Status.CANCELLED:
        return "stopped on request"
    if status is Status.SKIPPED:
        return "skipped before it ran (too old, or refused by a middleware)"
    return ""


def progress_line(job: Any) -> str:
    """``active     [#####-----]  40%  lessons: writing lessons of module 1/3``."""
    detail = job.progress_message or ""
    if job.status.terminal:
        detail = outcome_detail(job.status, job.result, job.error_type, job.error_message)
    elif job.status is Status.RETRYING:
        detail = f"attempt {job.attempt} failed ({job.error_type}); retrying"
        if job.next_retry_at is not None:
            detail += f" at {when(job.next_retry_at)}"
    elif job.cancel_requested_at is not None:
        detail = (detail + " (cancellation requested)").strip()
    return f"{job.status.value:<9} {bar(job.progress)} {job.progress:3d}%  {detail}".rstrip()


def when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_block(job: Any) -> str:
    """The human form of ``coursegen status``."""
    lines = [
        ("job", f"{job.job_id}  ({job.actor_name} on {job.queue_name})"),
        ("status", progress_line(job)),
        ("attempt", str(job.attempt)),
        ("owner", f"tenant {job.tenant_id}, user {job.user_id}"),
        ("enqueued", when(job.enqueued_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.cancel_requested_at is not None:
        lines.append(("cancel", f"requested {when(job.cancel_requested_at)}"))
    if job.error_type or job.error_message:
        lines.append(("error", f"{job.error_type}: {job.error_message}"))
    lines.append(("updated", when(job.updated_at)))
    return "\n".join(f"{name:<9} {value}" for name, value in lines)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], max_width: int = 60) -> str:
    """A plain left-aligned table; cells longer than ``max_width`` are cut with an ellipsis."""
    cut = [[c if len(c) <= max_width else c[: max_width - 1] + "\u2026" for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cut]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cut]
    return "\n".join(out)
