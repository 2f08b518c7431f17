"""The ``coursegen`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .settings import ConfigurationError, load_settings

logger = logging.getLogger("coursegen")


def _cmd_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from .migrate import MigrationError, migrate

    settings = load_settings()
    try:
        applied = migrate(settings.require_database_url())
    except psycopg.OperationalError as exc:
        print(f"coursegen migrate: cannot reach the database ({type(exc).__name__})", file=sys.stderr)
        return 3
    except MigrationError as exc:
        print(f"coursegen migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        print("applied: " + ", ".join(applied))
    else:
        print("nothing to apply: the database is up to date")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_demo

    return run_demo(args.workdir, jobs=args.jobs, pace=args.pace, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coursegen",
        description="Generate courses in the background and follow their status.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations (reads DATABASE_URL)",
        description="Apply supabase/migrations to DATABASE_URL, recording versions as the Supabase CLI "
        "does. On plain PostgreSQL (no auth schema) the local Supabase base is applied first.",
    )
    migrate.set_defaults(func=_cmd_migrate)

    dev = commands.add_parser(
        "dev",
        help="run the whole stack locally (embedded Redis and PostgreSQL) and send a few jobs",
        description="Start an embedded Redis and PostgreSQL, migrate, start a real `dramatiq "
        "coursegen.actors` worker, send jobs and print their status rows as they change.",
    )
    dev.add_argument("--workdir", default=".coursegen/dev", help="where the servers keep their data")
    dev.add_argument("--jobs", type=int, default=3, help="how many courses to generate")
    dev.add_argument("--pace", type=float, default=0.4, help="seconds per pipeline stage, to watch")
    dev.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    dev.set_defaults(func=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"coursegen {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
