"""``coursegen dev``: the whole stack on this machine, behind ``make demo``.

Starts an embedded Redis (Valkey) and PostgreSQL, migrates, seeds one organization and one
user, starts a real ``dramatiq coursegen.actors`` worker and generates courses from the bundled
sample documents: one progress bar per job, read from the ``job_status`` rows as they change.
One more request is too thin to become a course (it fails), and one more is cancelled while it
runs. At the end it shows what one of the courses looks like, then stops everything.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import JobStatus, UserJobs

DEMO_TENANT = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
DEMO_USER = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
SAMPLES = Path(__file__).resolve().parent / "samples"
THIN = "Just a few words."


def _say(text: str = "") -> None:
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


def _request(title: str, sources: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    owner = {"tenant_id": str(DEMO_TENANT), "user_id": str(DEMO_USER)}
    return {**owner, "title": title, "sources": sources, **extra}


def _requests(jobs: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, request): courses from the samples, a thin one, and one to cancel."""
    docs = sorted(SAMPLES.glob("*.md"))
    out = []
    for i in range(max(jobs, 1)):
        doc = docs[i % len(docs)]
        title = doc.stem.replace("-", " ").title()
        source = [{"title": doc.stem, "text": doc.read_text(encoding="utf-8")}]
        out.append((title, _request(title, source)))
    out.append(("Too thin", _request("Too thin", [{"title": "note", "text": THIN}])))
    everything = [{"title": d.stem, "text": d.read_text(encoding="utf-8")} for d in docs]
    out.append(("Cancel me", _request("Cancel me", everything, audience="advanced")))
    return out


class _Board:
    """One progress line per job: redrawn in place on a terminal, else printed on change."""

    def __init__(self, labels: dict[str, str]) -> None:
        from .render import progress_line

        self._line = progress_line
        self.labels = labels
        self.tty = sys.stdout.isatty()
        self.lines: dict[str, str] = {job_id: "pending" for job_id in labels}
        self.drawn = False

    def update(self, job: JobStatus) -> None:
        line = self._line(job)
        if self.lines.get(job.job_id) == line:
            return
        self.lines[job.job_id] = line
        if not self.tty:
            _say(f"  {job.job_id[:8]}  {self.labels[job.job_id][:16]:<16}  {line}")

    def draw(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        if self.drawn:
            sys.stdout.write(f"\x1b[{len(self.lines)}A")
        for job_id, line in self.lines.items():
            text = f"  {job_id[:8]}  {self.labels[job_id][:16]:<16}  {line}"
            sys.stdout.write("\x1b[2K" + text[: width - 1] + "\n")
        sys.stdout.flush()
        self.drawn = True


def _follow(jobs: UserJobs, labels: dict[str, str], cancel_id: str, timeout: float) -> dict[str, JobStatus]:
    from .jobs import JobNotFound

    board = _Board(labels)
    latest: dict[str, JobStatus] = {}
    cancel_sent = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in labels:
            try:
                job = jobs.status(job_id)
            except JobNotFound:
                continue
            latest[job_id] = job
            board.update(job)
        board.draw()
        victim = latest.get(cancel_id)
        if not cancel_sent and victim is not None and victim.progress >= 25:
            outcome = jobs.cancel(cancel_id)
            cancel_sent = True
            if not board.tty:
                _say(f"  -> {outcome.describe()}")
        if len(latest) == len(labels) and all(j.finished for j in latest.values()):
            break
        time.sleep(0.1)
    return latest


def _show_course(course: dict[str, Any]) -> None:
    _say(f'What a course looks like: "{course["title"]}" ({course["stats"]["minutes"]} minutes)')
    _say(f"  {course['summary'][:300]}")
    for module in course["modules"]:
        _say(f"  Module: {module['title']}")
        for lesson in module["lessons"]:
            terms = ", ".join(t["term"] for t in lesson["key_terms"][:4])
            _say(f"    - {lesson['title']}  ({len(lesson['quiz'])} questions; key terms: {terms})")
    quiz = next((q for m in course["modules"] for lesson in m["lessons"] for q in lesson["quiz"]), None)
    if quiz is not None:
        _say("  A quiz question:")
        _say(f"    {quiz['prompt']}")
        for i, choice in enumerate(quiz["choices"]):
            mark = "*" if i == quiz["answer"] else " "
            _say(f"     {mark} {chr(97 + i)}) {choice}")


def run_demo(workdir: str, *, jobs: int = 3, pace: float = 0.4, keep: bool = False) -> int:
    from .embedded import LocalPostgres, LocalRedis
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
            "COURSEGEN_STATUS_STORE": "postgres",  # this demo's database, whatever else is set
            "COURSEGEN_DEMO_PACE": str(pace),
            # one worker: every stage's progress shown, a batch every 0.2 s (a fleet waits up
            # to 0.8 s for fuller batches; see COURSEGEN_FLUSH_MAX_WAIT)
            "COURSEGEN_FLUSH_MAX_WAIT": "0.2",
        }
        log_path = root / "worker.log"
        dramatiq_bin = Path(sys.executable).with_name("dramatiq")
        command = [str(dramatiq_bin), "coursegen.actors", "--processes", "1", "--threads", "4"]
        _say(f"Starting the worker: {' '.join(command[-5:])} (log: {log_path})")
        with log_path.open("wb") as log:
            worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        from .jobs import Jobs
        from .settings import Settings

        # other knobs (COURSEGEN_*) still come from the environment
        client = Jobs(Settings(redis_url=redis_server.url, database_url=conninfo, store="postgres"))
        labels: dict[str, str] = {}
        for label, request in _requests(jobs):
            labels[client.submit(request)] = label
        cancel_id = next(job_id for job_id, label in labels.items() if label == "Cancel me")
        _say(f"Submitted {len(labels)} course requests. Their job_status rows as they change:")
        # the demo user follows and cancels their own jobs
        latest = _follow(
            client.as_user(DEMO_USER, DEMO_TENANT), labels, cancel_id, timeout=60 + 10 * pace * len(labels)
        )

        _say()
        _say("Final rows:")
        for job_id, label in labels.items():
            job = latest.get(job_id)
            status = job.status.value if job else "missing"
            attempt = job.attempt if job else "-"
            detail = (job.error_message or "") if job else ""
            _say(f"  {job_id[:8]}  {label[:16]:<16}  {status:<9}  attempt {attempt}  {detail}")
        done = [j for j in latest.values() if j.status.value == "completed" and isinstance(j.result, dict)]
        if done:
            _say()
            _show_course(done[0].result)
        client.close()
        complete = len(latest) == len(labels) and all(j.finished for j in latest.values())
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
