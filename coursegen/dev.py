"""``coursegen dev``: the whole stack on this machine, behind ``make demo``.

Starts an embedded Redis (Valkey) and PostgreSQL, migrates, seeds one organization and one
user, starts a real ``dramatiq coursegen.actors`` worker, sends courses built from the bundled
sample documents (and one request too thin to become a course), prints every change of their
status rows, then stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DEMO_TENANT = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
DEMO_USER = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
SAMPLES = Path(__file__).resolve().parent / "samples"
TERMINAL = {"completed", "failed", "cancelled", "skipped"}


def _say(text: str) -> None:
    print(text, flush=True)


def _seed(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "insert into public.organizations (id, name) values (%s, 'Demo school') on conflict do nothing",
            (DEMO_TENANT,),
        )
        conn.execute(
            "insert into auth.users (id, email) values (%s, 'demo@example.test') on conflict do nothing",
            (DEMO_USER,),
        )


def _payloads(jobs: int) -> list[dict[str, Any]]:
    docs = sorted(SAMPLES.glob("*.md"))
    payloads = []
    for i in range(max(jobs, 1)):
        doc = docs[i % len(docs)]
        payloads.append(
            {
                "tenant_id": str(DEMO_TENANT),
                "user_id": str(DEMO_USER),
                "title": doc.stem.replace("-", " ").title(),
                "sources": [{"title": doc.stem, "text": doc.read_text(encoding="utf-8")}],
            }
        )
    payloads.append(
        {
            "tenant_id": str(DEMO_TENANT),
            "user_id": str(DEMO_USER),
            "title": "Too thin",
            "sources": [{"title": "note", "text": "Just a few words."}],
        }
    )
    return payloads


def _watch(conninfo: str, titles: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    seen: dict[str, tuple[Any, ...]] = {}
    rows: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        while time.monotonic() - started < timeout:
            for row in conn.execute(
                "select job_id, status::text as status, progress, progress_message, attempt, error_message "
                "from public.job_status where job_id = any(%s)",
                (list(titles),),
            ):
                rows[row["job_id"]] = row
                key = (row["status"], row["progress"], row["progress_message"])
                if seen.get(row["job_id"]) != key:
                    seen[row["job_id"]] = key
                    bar = "#" * (row["progress"] // 10)
                    detail = row["progress_message"] or row["error_message"] or ""
                    _say(
                        f"  {time.monotonic() - started:6.2f}s  {row['job_id'][:8]}  "
                        f"{titles[row['job_id']][:18]:<18}  {row['status']:<9} "
                        f"[{bar:<10}] {row['progress']:3d}%  {detail}"
                    )
            if len(rows) == len(titles) and all(r["status"] in TERMINAL for r in rows.values()):
                break
            time.sleep(0.1)
    return rows


def run_demo(workdir: str, *, jobs: int = 3, pace: float = 0.4, keep: bool = False) -> int:
    from .local import LocalPostgres, LocalRedis
    from .migrate import migrate

    root = Path(workdir).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    redis_server = LocalRedis(root / "redis")
    postgres = LocalPostgres(root / "postgres")
    worker: subprocess.Popen[bytes] | None = None
    try:
        _say("Starting embedded Redis and PostgreSQL...")
        redis_server.start()
        postgres.start()
        conninfo = postgres.url()
        _say(f"  redis:    {redis_server.url}")
        _say(f"  postgres: {conninfo} (PostgreSQL {postgres.version})")
        applied = migrate(conninfo)
        _say(f"Migrated: {', '.join(applied) or 'up to date'}")
        _seed(conninfo)

        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": conninfo,
            "COURSEGEN_DEMO_PACE": str(pace),
        }
        log_path = root / "worker.log"
        dramatiq_bin = Path(sys.executable).with_name("dramatiq")
        command = [str(dramatiq_bin), "coursegen.actors", "--processes", "1", "--threads", "4"]
        _say(f"Starting the worker: {' '.join(command[-5:])} (log: {log_path})")
        with log_path.open("wb") as log:
            worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        os.environ.update({k: env[k] for k in ("REDIS_URL", "DATABASE_URL")})
        from . import actors

        titles = {}
        for payload in _payloads(jobs):
            message = actors.generate_course.send(payload)
            titles[message.message_id] = payload["title"]
        actors.status_middleware.writer.flush(timeout=10)
        _say(f"Sent {len(titles)} jobs. Status rows as they change (job_status in PostgreSQL):")
        rows = _watch(conninfo, titles, timeout=60 + 10 * pace * len(titles))

        _say("Final rows:")
        for job_id, title in titles.items():
            row = rows.get(job_id) or {"status": "missing", "attempt": "-"}
            detail = row.get("error_message") or ""
            _say(f"  {job_id[:8]}  {title[:18]:<18}  {row['status']:<9}  attempt {row['attempt']}  {detail}")
        complete = len(rows) == len(titles) and all(r["status"] in TERMINAL for r in rows.values())
        return 0 if complete else 1
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        postgres.stop()
        redis_server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        _say("Stopped the worker, Redis and PostgreSQL.")
