"""The ``coursegen`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import ConfigurationError, load_settings

if TYPE_CHECKING:
    from .jobs import JobStatus, OperatorJobs, UserJobs

logger = logging.getLogger("coursegen")

# Exit codes (also in `coursegen --help`)
EXIT_OK = 0
EXIT_FAILED = 1  # the job failed; or nothing was cancelled (it had finished); or migrate failed
EXIT_CONFIG = 2  # missing or invalid configuration, invalid request, bad arguments
EXIT_UNREACHABLE = 3  # Redis, PostgreSQL or Supabase cannot be reached
EXIT_UNKNOWN_JOB = 4
EXIT_CANCELLED = 5  # watch: the job was cancelled or skipped
EXIT_TIMEOUT = 124  # watch: still running when --timeout ran out

EXIT_CODES_HELP = """\
exit codes:
  0    success (watch: the job completed)
  1    the job failed (watch); nothing to cancel, the job had finished (cancel)
  2    missing or invalid configuration, invalid request or arguments
  3    a service (Redis, PostgreSQL, Supabase) cannot be reached
  4    no such job
  5    the job was cancelled or skipped (watch)
  124  the job was still running when --timeout ran out (watch)

environment: REDIS_URL (submit, cancel, outbox), DATABASE_URL or SUPABASE_URL with
SUPABASE_SERVICE_ROLE_KEY (status, watch, jobs, cancel; migrate and purge need DATABASE_URL)

status, watch, jobs and cancel act for the user and tenant given (--user, --tenant): another
user's job is "no such job". `coursegen admin ...` sees every tenant's jobs (operators only)."""


def _fail(command: str, message: str, code: int) -> int:
    print(f"coursegen {command}: {message}", file=sys.stderr)
    return code


# -- migrate, dev ---------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from middleware.conninfo import describe_conninfo

    from .migrate import MigrationError, migrate

    conninfo = load_settings().require_database_url()
    try:
        applied = migrate(conninfo)
    except psycopg.OperationalError as exc:
        where = describe_conninfo(conninfo)
        return _fail(
            "migrate", f"cannot reach the database at {where} ({type(exc).__name__})", EXIT_UNREACHABLE
        )
    except MigrationError as exc:
        print(f"coursegen migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if applied:
        print("applied: " + ", ".join(applied))
    else:
        print("nothing to apply: the database is up to date")
    print(_retention_line(conninfo))
    return EXIT_OK


def _retention_line(conninfo: str) -> str:
    """Whether pg_cron runs retention here, or `coursegen purge` has to."""
    import psycopg

    from .retention import CRON_JOB, scheduled

    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            schedule = scheduled(conn)
    except psycopg.Error:
        schedule = None
    if schedule is not None:
        return f"retention: scheduled by pg_cron (job {CRON_JOB}, {schedule})"
    return (
        "retention: not scheduled here (no pg_cron for this database): run `coursegen purge` "
        "from a scheduler (README, Retention)"
    )


def _cmd_purge(args: argparse.Namespace) -> int:
    from .retention import RetentionError, describe, run

    conninfo = load_settings().require_database_url()
    try:
        counts, used = run(
            conninfo,
            older_than=args.older_than,
            expire_after=args.expire_after,
            keep_tombstones=args.keep_tombstones,
            batch_size=args.batch,
        )
    except RetentionError as exc:
        code = {"unreachable": EXIT_UNREACHABLE, "invalid": EXIT_CONFIG}.get(exc.reason, EXIT_FAILED)
        return _fail("purge", str(exc), code)
    print(f"expired: {counts.expired} (unfinished, no news for {describe(used.expire_after)})")
    print(f"purged: {counts.purged} (finished more than {describe(used.keep_finished)} ago)")
    print(f"tombstones dropped: {counts.tombstones_dropped} (older than {describe(used.keep_tombstones)})")
    return EXIT_OK


def _cmd_dev(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, jobs=args.jobs, pace=args.pace, keep=args.keep)


# -- jobs -----------------------------------------------------------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    from .jobs import Jobs

    sources = []
    for name in args.files:
        try:
            if name == "-":
                text, title = sys.stdin.read(), "stdin"
            else:
                path = Path(name)
                text, title = path.read_text(encoding="utf-8"), path.stem
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            return _fail("submit", f"cannot read {name}: {reason}", EXIT_CONFIG)
        sources.append({"title": title, "text": text})
    request: dict[str, Any] = {
        "tenant_id": args.tenant,
        "user_id": args.user,
        "audience": args.audience,
        "sources": sources,
    }
    if args.title is not None:
        request["title"] = args.title
    if args.modules is not None:
        request["modules"] = args.modules
    job_id = Jobs(load_settings()).submit(request)
    print(job_id)
    return EXIT_OK


def _view(args: argparse.Namespace) -> UserJobs | OperatorJobs:
    """Acting for --user in --tenant; or, under `coursegen admin`, the operator's view."""
    from .jobs import Jobs

    jobs = Jobs(load_settings())
    if args.admin:
        return jobs.operator()
    return jobs.as_user(args.user, args.tenant)


def _cmd_status(args: argparse.Namespace) -> int:
    from .render import status_block

    job = _view(args).status(args.job_id)
    if args.json:
        print(json.dumps(job.as_dict(), indent=2, ensure_ascii=False))
    else:
        print(status_block(job))
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from middleware.events import Status

    from .render import progress_line

    tty = sys.stdout.isatty()
    shown = [0]

    def show(job: JobStatus) -> None:
        line = progress_line(job)
        if tty:
            pad = max(0, shown[0] - len(line))
            sys.stdout.write("\r" + line + " " * pad)
            shown[0] = len(line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    final = _view(args).wait(
        args.job_id, timeout=args.timeout, interval=args.interval, missing_grace=2.0, on_change=show
    )
    if tty:
        sys.stdout.write("\n")
    if final.status is Status.COMPLETED:
        return EXIT_OK
    if final.status is Status.FAILED:
        return EXIT_FAILED
    return EXIT_CANCELLED


def _cmd_jobs(args: argparse.Namespace) -> int:
    from .jobs import OperatorJobs
    from .render import outcome_detail, table, when

    view = _view(args)
    if isinstance(view, OperatorJobs):
        listed = view.list(status=args.status, user_id=args.user, tenant_id=args.tenant, limit=args.limit)
    else:
        listed = view.list(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([job.as_dict() for job in listed], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not listed:
        print("no jobs")
        return EXIT_OK
    rows = [
        [
            job.job_id,
            job.status.value,
            f"{job.progress}%",
            str(job.attempt),
            when(job.updated_at),
            (
                outcome_detail(job.status, job.result, job.error_type, job.error_message)
                if job.status.terminal
                else job.progress_message or ""
            ),
        ]
        for job in listed
    ]
    print(table(["JOB", "STATUS", "PROGRESS", "ATTEMPT", "UPDATED", "DETAIL"], rows))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    outcome = _view(args).cancel(args.job_id)
    print(outcome.describe())
    return EXIT_OK if outcome.requested else EXIT_FAILED


def _cmd_outbox(args: argparse.Namespace) -> int:
    """The status outbox on the broker's Redis: its depth, and its dead letters."""
    import datetime as dt

    import redis

    from middleware.errors import TransientStoreError
    from middleware.outbox import MAX_DEAD_LETTERS, RedisOutbox

    settings = load_settings()
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.store_timeout,
        socket_connect_timeout=settings.store_timeout,
    )
    outbox = RedisOutbox(client)
    if args.limit < 1:
        return _fail("outbox", "--limit must be at least 1", EXIT_CONFIG)
    count = None if args.all else args.limit
    jobs = args.job  # None: every job's
    try:
        if args.action == "stats":
            depth, dead = outbox.depth(), outbox.dead_depth()
            if depth < 0 or dead < 0:
                return _fail("outbox", "cannot reach Redis", EXIT_UNREACHABLE)
            print(f"waiting: {depth}\ndead letters: {dead}")
        elif args.action == "list":
            for letter in outbox.dead_letters(0, count or MAX_DEAD_LETTERS, jobs=jobs):
                when = dt.datetime.fromtimestamp(letter.dead_at, dt.UTC).isoformat(timespec="seconds")
                if args.json:
                    print(json.dumps({"reason": letter.reason, "dead_at": when, "entry": letter.entry}))
                else:
                    print(f"{when}  {letter.reason}\n    {letter.entry[:300]}")
        elif args.action == "requeue":
            print(f"requeued: {outbox.requeue_dead(count, jobs=jobs)}")
        else:
            print(f"dropped: {outbox.drop_dead(count, jobs=jobs)}")
    except TransientStoreError:
        return _fail("outbox", "cannot reach Redis", EXIT_UNREACHABLE)
    finally:
        client.close()
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:

    from .course import MAX_MODULES, Audience

    parser = argparse.ArgumentParser(
        prog="coursegen",
        description="Generate courses in the background and follow their status.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    submit = command(
        "submit",
        "send source documents to be turned into a course; prints the job id",
        "Send FILEs (markdown or plain text, UTF-8; '-' reads stdin) as one course request and "
        "print the job's id. Needs REDIS_URL; the workers do the rest.",
    )
    submit.add_argument("files", nargs="+", metavar="FILE", help="source documents (1 to 20, 2 MiB in all)")
    submit.add_argument("--title", help="the course's title (default: the first document's heading)")
    submit.add_argument("--tenant", required=True, metavar="ID", help="organization id (UUID)")
    submit.add_argument("--user", required=True, metavar="ID", help="user id (UUID) the job belongs to")
    submit.add_argument(
        "--audience",
        choices=[a.value for a in Audience],
        default=Audience.INTERMEDIATE.value,
        help="how much each lesson holds (default: %(default)s)",
    )
    submit.add_argument(
        "--modules", type=int, metavar="N", help=f"number of modules, 1 to {MAX_MODULES} (default: automatic)"
    )
    submit.set_defaults(func=_cmd_submit)

    _job_commands(command, admin=False)

    admin = command(
        "admin",
        "operator mode: status, watch, jobs and cancel over every tenant's jobs",
        "The operator's view: every tenant's jobs, with the service credentials of the "
        "environment. For operators' tools and incidents, never on behalf of a user (the "
        "commands without `admin` act for --user in --tenant).",
    )
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    def admin_command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return admin_commands.add_parser(
            name,
            help=help_text,
            description=description + " Operator mode: any tenant's job.",
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    _job_commands(admin_command, admin=True)

    outbox = command(
        "outbox",
        "inspect the status outbox; list, requeue or drop its dead letters (reads REDIS_URL)",
        "The status outbox on the broker's Redis holds status events the store could not take "
        "yet; its dead letters hold the entries that can never be written as they are (not an "
        "event, rejected by the store, failing every drain), each with the reason. `stats` "
        "counts both; `list` shows the dead letters, oldest first; `requeue` puts them back in "
        "the outbox (after fixing their cause: say, creating a missing tenant); `drop` forgets "
        "them. list, requeue and drop take the oldest --limit N, or --all, of every job or of "
        "the --job given. Each letter is moved in one step: whatever fails, or whoever else "
        "requeues at the same time, it is in the dead letters or in the outbox, once. "
        "Prints how many were requeued or dropped.",
    )
    outbox.add_argument("action", choices=["stats", "list", "requeue", "drop"])
    outbox.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N dead letters (default: 20)"
    )
    outbox.add_argument("--all", action="store_true", help="every dead letter (there when it starts)")
    outbox.add_argument(
        "--job",
        action="append",
        metavar="JOB_ID",
        help="only this job's dead letters (repeat for several jobs)",
    )
    outbox.add_argument("--json", action="store_true", help="list: one JSON object per line")
    outbox.set_defaults(func=_cmd_outbox)

    migrate = command(
        "migrate",
        "apply pending database migrations (reads DATABASE_URL)",
        "Apply supabase/migrations to DATABASE_URL, recording versions as the Supabase CLI "
        "does. On plain PostgreSQL (no auth schema) the local Supabase base is applied first.",
    )
    migrate.set_defaults(func=_cmd_migrate)

    purge = command(
        "purge",
        "end unfinished jobs without news, delete old finished ones (reads DATABASE_URL)",
        "Retention, where pg_cron does not run it (`coursegen migrate` says which): rows "
        "unfinished with no news for --expire-after end 'failed' (Expired); rows finished more "
        "than --older-than ago are deleted, each leaving a tombstone so that a late event "
        "cannot bring its job back; tombstones go after --keep-tombstones. Each runs in "
        "batches of --batch rows, one transaction each, until none is left; the counts are "
        "printed. Defaults: the row of public.job_status_retention, which the pg_cron job "
        "reads too (30 days, 7 days, 30 days, 5000 unless changed there). Intervals as "
        "PostgreSQL reads them: '30 days', '7d', '12h'. Run it every 15 minutes to an hour.",
    )
    purge.add_argument("--older-than", metavar="INTERVAL", help="purge rows finished longer ago than this")
    purge.add_argument(
        "--expire-after", metavar="INTERVAL", help="end unfinished rows that had no news for this long"
    )
    purge.add_argument("--keep-tombstones", metavar="INTERVAL", help="drop tombstones older than this")
    purge.add_argument("--batch", type=int, metavar="N", help="rows per statement (1 to 100000)")
    purge.set_defaults(func=_cmd_purge)

    dev = command(
        "dev",
        "run the whole stack locally (embedded Redis and PostgreSQL) and generate a few courses",
        "Start an embedded Redis and PostgreSQL, migrate, start a real `dramatiq "
        "coursegen.actors` worker, send course requests built from the bundled samples, and "
        "show their progress bars until they end.",
    )
    dev.add_argument("--workdir", default=".coursegen/dev", help="where the servers keep their data")
    dev.add_argument("--jobs", type=int, default=3, help="how many courses to generate")
    dev.add_argument("--pace", type=float, default=0.4, help="seconds per pipeline stage, to watch")
    dev.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    dev.set_defaults(func=_cmd_dev)
    return parser


def _job_commands(command: Callable[[str, str, str], argparse.ArgumentParser], *, admin: bool) -> None:
    """status, watch, jobs and cancel: acting for --user in --tenant (both required), or, under
    `coursegen admin`, over every tenant's jobs."""
    from middleware.events import Status

    def owner(parser: argparse.ArgumentParser) -> None:
        if not admin:
            parser.add_argument("--user", required=True, metavar="ID", help="acting for this user (UUID)")
            parser.add_argument("--tenant", required=True, metavar="ID", help="in this organization (UUID)")
        parser.set_defaults(admin=admin)

    status = command(
        "status",
        "show a job's status",
        "Show a job's row: status, progress, attempt, times, error. Needs DATABASE_URL, or "
        "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.",
    )
    status.add_argument("job_id", metavar="JOB_ID")
    owner(status)
    status.add_argument("--json", action="store_true", help="the whole row as JSON, result included")
    status.set_defaults(func=_cmd_status)

    watch = command(
        "watch",
        "follow a job with a live progress bar until it ends",
        "Follow a job until it ends, with a progress bar (one line per change when the output "
        "is not a terminal). The exit code tells how it ended.",
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    owner(watch)
    watch.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds")
    watch.add_argument("--interval", type=float, default=0.25, metavar="S", help="poll every S seconds")
    watch.set_defaults(func=_cmd_watch)

    jobs = command(
        "jobs",
        "list the latest jobs as a table",
        "List the latest jobs, newest first, optionally of one status"
        + (", user or tenant." if admin else ": the user's, in the tenant."),
    )
    owner(jobs)
    jobs.add_argument("--status", choices=[s.value for s in Status], help="only jobs in this status")
    if admin:
        jobs.add_argument("--user", metavar="ID", help="only this user's jobs")
        jobs.add_argument("--tenant", metavar="ID", help="only this organization's jobs")
    jobs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs (default: 20)")
    jobs.add_argument("--json", action="store_true", help="the rows as JSON")
    jobs.set_defaults(func=_cmd_jobs)

    cancel = command(
        "cancel",
        "cancel a queued or running job",
        "Request cancellation: a queued job ends 'cancelled' without running, a running one at "
        "its next progress checkpoint. A finished job is left alone (exit code 1).",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    owner(cancel)
    cancel.set_defaults(func=_cmd_cancel)


def main(argv: Sequence[str] | None = None) -> int:
    from .jobs import InvalidRequestError, JobNotFound, JobsError, ServiceUnavailable, WaitTimeout

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = args.command if args.command != "admin" else f"admin {args.admin_command}"
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        return _fail(command, str(exc), EXIT_CONFIG)
    except InvalidRequestError as exc:
        return _fail(command, str(exc), EXIT_CONFIG)
    except ValueError as exc:  # bad ids given on the command line
        return _fail(command, str(exc), EXIT_CONFIG)
    except JobNotFound as exc:
        return _fail(command, str(exc), EXIT_UNKNOWN_JOB)
    except ServiceUnavailable as exc:
        return _fail(command, str(exc), EXIT_UNREACHABLE)
    except WaitTimeout as exc:
        if sys.stdout.isatty():
            print()
        return _fail(command, str(exc), EXIT_TIMEOUT)
    except JobsError as exc:
        return _fail(command, str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
