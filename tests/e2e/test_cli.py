"""The `coursegen` command as a user runs it: submit, watch, status, jobs, cancel against a real
worker, real Redis and PostgreSQL; and one clear line with a distinct exit code for each way it
can go wrong."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from middleware.events import Owner, Status, StatusEvent
from middleware.outbox import RedisOutbox
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import BIN, app_env, dramatiq_worker

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DATA = Path(__file__).resolve().parents[1] / "data"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def coursegen(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "coursegen"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def submit(env: dict[str, str], owner: Owner, *args: str) -> str:
    done = coursegen(env, "submit", *args, "--tenant", owner.tenant_id, "--user", owner.user_id)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert UUID.match(job_id), done.stdout
    return job_id


def acting(owner: Owner) -> tuple[str, ...]:
    return ("--user", owner.user_id, "--tenant", owner.tenant_id)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_submit_watch_status_jobs_and_cancel(database_url: str, redis_url: str, tmp_path: Path) -> None:
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    worker_env = {**env, "COURSEGEN_DEMO_PACE": "1"}  # about five seconds a course
    thin = tmp_path / "thin.txt"
    thin.write_text("Far too short for a course.", encoding="utf-8")
    with dramatiq_worker(worker_env, tmp_path / "worker.log", threads=2) as worker:
        course = submit(env, owner, str(DATA / "printing-press.md"), "--title", "Print", "--modules", "3")
        watched = coursegen(env, "watch", course, *acting(owner))
        assert watched.returncode == 0, watched.stderr
        lines = watched.stdout.strip().splitlines()
        assert lines[0].startswith(("pending", "active"))
        assert any(
            re.match(r"active +\[#+-+\] +\d+%  (ingest|outline|lessons|quizzes):", line) for line in lines
        )
        assert lines[-1].startswith("completed ") and '"Print": 3 modules' in lines[-1]

        status = coursegen(env, "status", course, *acting(owner))
        assert status.returncode == 0
        assert f"job       {course}  (generate_course on course-generation)" in status.stdout
        assert re.search(r"^status +completed +\[#{24}\] 100%", status.stdout, re.M)
        as_json = json.loads(coursegen(env, "status", course, "--json", *acting(owner)).stdout)
        assert (as_json["status"], as_json["attempt"], as_json["user_id"]) == ("completed", 1, owner.user_id)
        assert len(as_json["result"]["modules"]) == 3

        failing = submit(env, owner, str(thin))
        watched = coursegen(env, "watch", failing, *acting(owner))
        assert watched.returncode == 1
        assert "CourseGenerationError: the sources hold 6 words" in watched.stdout.splitlines()[-1]

        running = submit(env, owner, str(DATA / "honeybees.txt"), str(DATA / "python-execution-model.txt"))
        wait_for(
            lambda: fetch_rows(database_url, [running]).get(running, {}).get("status") == "active",
            timeout=30,
            what="the job to start",
        )
        cancelled = coursegen(env, "cancel", running, *acting(owner))
        assert cancelled.returncode == 0
        assert cancelled.stdout.strip() == f"cancellation requested for job {running} (it was active)"
        watched = coursegen(env, "watch", running, *acting(owner))
        assert watched.returncode == 5 and watched.stdout.splitlines()[-1].startswith("cancelled ")

        again = coursegen(env, "cancel", course, *acting(owner))
        assert again.returncode == 1
        assert again.stdout.strip() == f"job {course} already finished (completed); nothing to cancel"
        assert worker.stop() == 0

    table = coursegen(env, "jobs", *acting(owner))
    assert table.returncode == 0
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == ["JOB", "STATUS", "PROGRESS", "ATTEMPT", "UPDATED", "DETAIL"]
    assert [row.split()[:2] for row in rows] == [
        [running, "cancelled"],
        [failing, "failed"],
        [course, "completed"],
    ]
    only_failed = coursegen(env, "jobs", "--status", "failed", "--json", *acting(owner))
    assert [job["job_id"] for job in json.loads(only_failed.stdout)] == [failing]
    stranger = ("--user", str(uuid.uuid4()), "--tenant", owner.tenant_id)
    assert coursegen(env, "jobs", *stranger).stdout.strip() == "no jobs"
    # the operator's view: every tenant's jobs, filtered as asked
    every_failed = coursegen(env, "admin", "jobs", "--status", "failed", "--json")
    assert [job["job_id"] for job in json.loads(every_failed.stdout)] == [failing]
    admin_status = json.loads(coursegen(env, "admin", "status", course, "--json").stdout)
    assert admin_status["user_id"] == owner.user_id


def test_another_users_job_is_no_such_job_for_every_command(database_url: str, redis_url: str) -> None:
    """bob (same organization) and carol (another one) get exactly what an unknown job gets:
    the same line, the same exit code; alice's job is untouched."""
    alice = create_owner(database_url)
    bob = Owner(alice.tenant_id, create_owner(database_url).user_id)
    carol = create_owner(database_url, tenant_name="Globex")
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    job = submit(env, alice, str(DATA / "honeybees.txt"))  # no worker: it stays pending
    for command in ("status", "watch", "cancel"):
        unknown = coursegen(env, command, "no-such-job", *acting(bob))
        one_line_error(unknown, 4, f"coursegen {command}: no job no-such-job")
        for stranger in (bob, carol):
            done = coursegen(env, command, job, *acting(stranger))
            one_line_error(done, 4, f"coursegen {command}: no job {job}")
            assert done.stderr.replace(job, "no-such-job") == unknown.stderr
    # alice in carol's organization is not alice in hers
    wrong_tenant = ("--user", alice.user_id, "--tenant", carol.tenant_id)
    one_line_error(coursegen(env, "status", job, *wrong_tenant), 4, f"no job {job}")
    for stranger in (bob, carol):
        assert coursegen(env, "jobs", *acting(stranger)).stdout.strip() == "no jobs"
    row = fetch_rows(database_url, [job])[job]
    assert (row["status"], row["cancel_requested_at"]) == ("pending", None)
    assert coursegen(env, "status", job, *acting(alice)).returncode == 0


def test_every_command_explains_itself() -> None:
    env = app_env()
    top = coursegen(env, "--help")
    assert top.returncode == 0
    for command in (
        "submit",
        "status",
        "watch",
        "jobs",
        "cancel",
        "admin",
        "outbox",
        "migrate",
        "purge",
        "dev",
    ):
        assert command in top.stdout
        done = coursegen(env, command, "--help")
        assert done.returncode == 0 and "exit codes:" in done.stdout, command
    assert "--tenant ID" in coursegen(env, "submit", "--help").stdout
    for command in ("status", "watch", "jobs", "cancel"):
        usage = coursegen(env, command, "--help").stdout
        assert "--user ID --tenant ID" in usage, command  # required: never the operator's view
        admin = coursegen(env, "admin", command, "--help")
        assert admin.returncode == 0 and "Operator mode" in admin.stdout, command
    missing = coursegen(env, "status", "some-job")
    assert missing.returncode == 2 and "--user" in missing.stderr


def test_errors_are_one_clear_line_with_their_own_exit_code(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    owner = ("--tenant", str(uuid.uuid4()), "--user", str(uuid.uuid4()))
    doc = str(DATA / "honeybees.txt")

    acting_for = owner[2:] + owner[:2]  # --user ..., --tenant ...
    for command in ("status", "watch", "cancel"):
        one_line_error(
            coursegen(env, command, "no-such-job", *acting_for), 4, f"coursegen {command}: no job no-such-job"
        )
        one_line_error(
            coursegen(env, "admin", command, "no-such-job"),
            4,
            f"coursegen admin {command}: no job no-such-job",
        )

    redis_only = app_env(REDIS_URL=redis_url)
    for args in (("status", "x"), ("jobs",), ("cancel", "x"), ("watch", "x")):
        one_line_error(
            coursegen(redis_only, *args, *acting_for),
            2,
            "DATABASE_URL",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
        )

    no_database = app_env(
        REDIS_URL=redis_url, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/x"
    )
    one_line_error(
        coursegen(no_database, "status", "x", *acting_for), 3, "coursegen status: cannot reach the database"
    )
    one_line_error(coursegen(no_database, "jobs", *acting_for), 3, "cannot reach the database")
    no_redis = app_env(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    one_line_error(coursegen(no_redis, "submit", doc, *owner), 3, "coursegen submit: cannot reach Redis")

    bad_owner = ("--tenant", "acme", "--user", str(uuid.uuid4()))
    one_line_error(
        coursegen(env, "submit", doc, *bad_owner),
        2,
        "invalid course request: tenant_id: Input should be a valid UUID",
    )
    one_line_error(
        coursegen(env, "submit", doc, *owner, "--modules", "40"), 2, "modules: Input should be less"
    )
    one_line_error(
        coursegen(env, "submit", str(tmp_path / "missing.md"), *owner), 2, "cannot read", "missing.md"
    )
    one_line_error(coursegen(env, "jobs", "--user", "bob", "--tenant", owner[1]), 2, "user_id must be a UUID")
    one_line_error(coursegen(env, "admin", "jobs", "--tenant", "acme"), 2, "tenant_id must be a UUID")
    bad_setting = {**env, "COURSEGEN_MAX_RETRIES": "lots"}
    one_line_error(
        coursegen(bad_setting, "submit", doc, *owner), 2, "invalid configuration", "COURSEGEN_MAX_RETRIES"
    )


def test_purge_expires_purges_and_says_how_many(database_url: str, empty_database_url: str) -> None:
    owner = create_owner(database_url)
    now = time.time()
    finished = [f"finished-{i}-{uuid.uuid4()}" for i in range(3)]
    quiet, busy = f"quiet-{uuid.uuid4()}", f"busy-{uuid.uuid4()}"
    store = PostgresStatusStore(database_url)
    try:
        store.apply(
            [StatusEvent(job, Status.COMPLETED, 1, owner, "a", "q", now - 40 * 86400) for job in finished]
            + [
                StatusEvent(quiet, Status.ACTIVE, 1, owner, "a", "q", now - 9 * 86400),
                StatusEvent(busy, Status.ACTIVE, 1, owner, "a", "q", now),
            ]
        )
    finally:
        store.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update public.job_status set created_at = now() - interval '40 days',"
            " updated_at = now() - interval '9 days' where job_id <> %s",
            (busy,),
        )
    env = app_env(DATABASE_URL=database_url)

    # the database's settings (30 days, 7 days, 30 days), in batches of two until done
    done = coursegen(env, "purge", "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "expired: 1 (unfinished, no news for 7 days)",
        "purged: 3 (finished more than 30 days ago)",
        "tombstones dropped: 0 (older than 30 days)",
    ]
    rows = fetch_rows(database_url)
    assert set(rows) == {quiet, busy}
    assert (rows[quiet]["status"], rows[quiet]["error_type"]) == ("failed", "Expired")
    assert coursegen(env, "purge").stdout.splitlines()[:2] == [
        "expired: 0 (unfinished, no news for 7 days)",
        "purged: 0 (finished more than 30 days ago)",
    ]

    # one run's horizons from the command line
    done = coursegen(env, "purge", "--older-than", "0", "--expire-after", "12h", "--keep-tombstones", "0s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "expired: 0 (unfinished, no news for 12:00:00)",
        "purged: 1 (finished more than 0 days ago)",
        "tombstones dropped: 4 (older than 0 days)",
    ]
    assert set(fetch_rows(database_url)) == {busy}

    one_line_error(
        coursegen(env, "purge", "--older-than", "lately"), 2, "--older-than: 'lately' is not an interval"
    )
    one_line_error(coursegen(env, "purge", "--expire-after", "0"), 2, "--expire-after must be positive")
    one_line_error(coursegen(env, "purge", "--batch", "0"), 2, "batch size")
    one_line_error(coursegen(app_env(), "purge"), 2, "DATABASE_URL is not set")
    unreachable = app_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    one_line_error(coursegen(unreachable, "purge"), 3, "coursegen purge: cannot reach the database")
    one_line_error(
        coursegen(app_env(DATABASE_URL=empty_database_url), "purge"), 1, "run `coursegen migrate` first"
    )


# -- coursegen outbox ------------------------------------------------------------------------------


def dead_letters_of(owner: Owner, count: int, prefix: str) -> list[StatusEvent]:
    now = time.time()
    return [
        StatusEvent(
            f"{prefix}-{i}-{uuid.uuid4()}",
            Status.COMPLETED,
            1,
            owner,
            "generate_course",
            "course-generation",
            now + i,
            result={"n": i},
        )
        for i in range(count)
    ]


def test_outbox_requeue_and_drop_and_the_requeued_letters_are_written(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """An operator lists the dead letters, requeues one job's, drops the oldest, requeues the
    rest; a worker then drains what was requeued into the table, and the letter that is no event
    goes back to the dead letters."""
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url)
    client = redis.Redis.from_url(redis_url)
    outbox = RedisOutbox(client)
    first, second, third = dead_letters_of(owner, 3, "dead")
    outbox.bury([(event.to_json(), "rejected: unknown_tenant") for event in (first, second, third)])
    outbox.bury([("{not an event", "not_json: JSONDecodeError")])

    stats = coursegen(env, "outbox", "stats")
    assert (stats.returncode, stats.stdout) == (0, "waiting: 0\ndead letters: 4\n")
    listed = coursegen(env, "outbox", "list", "--json", "--job", second.job_id)
    assert listed.returncode == 0
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (letter["reason"], json.loads(letter["entry"])["job_id"]) == (
        "rejected: unknown_tenant",
        second.job_id,
    )

    requeued = coursegen(env, "outbox", "requeue", "--job", second.job_id)
    assert (requeued.returncode, requeued.stdout, requeued.stderr) == (0, "requeued: 1\n", "")
    dropped = coursegen(env, "outbox", "drop", "--limit", "1")
    assert (dropped.returncode, dropped.stdout) == (0, "dropped: 1\n")
    assert coursegen(env, "outbox", "stats").stdout == "waiting: 1\ndead letters: 2\n"
    rest = coursegen(env, "outbox", "requeue", "--all")
    assert (rest.returncode, rest.stdout) == (0, "requeued: 2\n")
    assert coursegen(env, "outbox", "requeue", "--all").stdout == "requeued: 0\n"
    assert coursegen(env, "outbox", "drop", "--all").stdout == "dropped: 0\n"
    assert coursegen(env, "outbox", "stats").stdout == "waiting: 3\ndead letters: 0\n"

    one_line_error(
        coursegen(env, "outbox", "requeue", "--limit", "0"), 2, "coursegen outbox: --limit must be"
    )
    one_line_error(coursegen(env, "outbox", "drop", "--limit", "-1"), 2, "--limit must be at least 1")
    no_redis = app_env(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    for action in ("requeue", "drop"):
        one_line_error(
            coursegen(no_redis, "outbox", action, "--all"), 3, "coursegen outbox: cannot reach Redis"
        )

    worker_env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    with dramatiq_worker(worker_env, tmp_path / "worker.log") as worker:
        rows = wait_for(
            lambda: len(found := fetch_rows(database_url, [second.job_id, third.job_id])) == 2 and found,
            timeout=60,
            what="the requeued letters written by the worker",
        )
        wait_for(lambda: outbox.depth() == 0 and outbox.dead_depth() == 1, timeout=30, what="the drain")
        assert worker.stop() == 0
    assert {row["status"] for row in rows.values()} == {"completed"}
    assert rows[third.job_id]["result"] == {"n": 2}
    assert first.job_id not in fetch_rows(database_url), "dropped"
    [junk] = outbox.dead_letters()
    assert (junk.entry, junk.reason.split(":")[0]) == ("{not an event", "not_json")
    client.close()


def test_two_outbox_requeues_at_once_move_each_letter_once(redis_url: str) -> None:
    owner = Owner(str(uuid.uuid4()), str(uuid.uuid4()))
    client = redis.Redis.from_url(redis_url)
    outbox = RedisOutbox(client)
    letters = dead_letters_of(owner, 2000, "twice")
    outbox.bury([(event.to_json(), "rejected: unknown_tenant") for event in letters])
    env = app_env(REDIS_URL=redis_url)

    command = [str(BIN / "coursegen"), "outbox", "requeue", "--all"]
    operators = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [operator.communicate(timeout=60)[0] for operator in operators]

    assert [operator.returncode for operator in operators] == [0, 0]
    counts = [int(re.fullmatch(r"requeued: (\d+)\n", output)[1]) for output in outputs]  # type: ignore[index]
    assert sum(counts) == 2000, outputs
    waiting = [json.loads(raw)["job_id"] for raw in client.lrange(outbox.key, 0, -1)]
    assert sorted(waiting) == sorted(event.job_id for event in letters), "each letter once"
    assert outbox.dead_depth() == 0
    client.close()
