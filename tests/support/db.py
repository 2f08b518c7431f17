"""Small database helpers for tests: owners to attach jobs to, rows to read back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from middleware.events import Owner

ROW_COLUMNS = (
    "job_id, tenant_id::text, user_id::text, actor_name, queue_name, status::text, progress, "
    "progress_message, attempt, result, error_type, error_message, next_retry_at, enqueued_at, "
    "started_at, finished_at, cancel_requested_at, event_at"
)


def create_owner(conninfo: str, *, tenant_name: str = "Acme", email: str | None = None) -> Owner:
    """A fresh organization and user, as Supabase would hold them."""
    tenant_id, user_id = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("insert into public.organizations (id, name) values (%s, %s)", (tenant_id, tenant_name))
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)",
            (user_id, email or f"{user_id.hex[:8]}@example.test"),
        )
    return Owner(str(tenant_id), str(user_id))


def fetch_rows(conninfo: str, job_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """job_status rows by job_id (all of them, or those of ``job_ids``)."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        if job_ids is None:
            rows = conn.execute(f"select {ROW_COLUMNS} from public.job_status").fetchall()
        else:
            rows = conn.execute(
                f"select {ROW_COLUMNS} from public.job_status where job_id = any(%s)", (job_ids,)
            ).fetchall()
    return {row["job_id"]: row for row in rows}


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def database_url_for(admin_url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)


def create_database(admin_url: str, template: str | None) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if template:
            conn.execute(f'create database "{name}" template "{template}"')
        else:
            conn.execute(f'create database "{name}"')
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
