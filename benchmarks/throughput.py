"""Throughput benchmark: what status sync costs a saturated Dramatiq worker (`make bench`).

Embedded Redis (Valkey) and PostgreSQL (default settings, fsync on), the real `dramatiq` CLI
with `-p 2 -t 8`, N no-op tracked jobs enqueued before the worker starts, then drained; the
same work with the status middleware left out (COURSEGEN_STATUS_SYNC=0) and put in,
alternating, several rounds each. One JSON line per run, then a summary:

* jobs per second (median per mode) at saturation: the clock runs from the moment a tenth of
  the jobs is done (every worker process has booted by then) to the last acknowledgement; and
  the ratio sync-on / sync-off;
* database transactions per job (pg_stat_database.xact_commit delta over the worker's run,
  less the benchmark's own queries);
* rows `completed` (must equal N), status lag p50/p99 (completed event -> row written);
* peak RSS (VmHWM) of the worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from coursegen.local import LocalPostgres, LocalRedis
from coursegen.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"
MSGS_KEY = f"dramatiq:{QUEUE}.msgs"


@dataclass
class Run:
    mode: str
    n: int
    round: int
    seconds: float
    jobs_per_second: float
    transactions_per_job: float | None
    rows_completed: int | None
    lag_p50: float | None
    lag_p99: float | None
    peak_rss_mb: float
    send_seconds: float


class Bench:
    def __init__(self, workdir: Path, processes: int, threads: int) -> None:
        self.workdir = workdir
        self.processes = processes
        self.threads = threads
        self.redis = LocalRedis(workdir / "redis")
        self.postgres = LocalPostgres(workdir / "postgres")

    def __enter__(self) -> Bench:
        self.redis.start()
        self.postgres.start()
        self.url = self.postgres.url()
        migrate(self.url)
        self.tenant_id, self.user_id = str(uuid.uuid4()), str(uuid.uuid4())
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "insert into public.organizations (id, name) values (%s, 'bench')", (self.tenant_id,)
            )
            conn.execute("insert into auth.users (id) values (%s)", (self.user_id,))
            self.dbname = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
        self.client = redis.Redis.from_url(self.redis.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.postgres.stop()
        self.redis.stop()

    def env(self, sync: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSEGEN_", "SUPABASE_"))}
        env.update(
            REDIS_URL=self.redis.url,
            DATABASE_URL=self.url,
            COURSEGEN_STATUS_SYNC="1" if sync else "0",
            PYTHONPATH=str(ROOT),
            # metrics stay on in both modes, as in production, on a port of our own
            dramatiq_prom_db=str(self.workdir / "prometheus"),
            dramatiq_prom_host="127.0.0.1",
            dramatiq_prom_port=str(_free_port()),
        )
        return env

    def _commits(self, conn: psycopg.Connection[Any]) -> int:
        conn.execute("select pg_stat_clear_snapshot()")
        row = conn.execute(
            "select xact_commit from pg_stat_database where datname = %s", (self.dbname,)
        ).fetchone()
        return int(row[0]) if row else 0

    def run(self, mode: str, n: int, round_no: int) -> Run:
        sync = mode == "on"
        env = self.env(sync)
        self.client.flushall()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("truncate public.job_status")

        sent = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.produce", str(n), self.tenant_id, self.user_id],
            env=env,
            cwd=ROOT,
            check=True,
        )
        send_seconds = time.perf_counter() - sent
        assert self.client.hlen(MSGS_KEY) == n, "every message is enqueued before the worker starts"

        own_queries = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            commits_before = self._commits(conn)
            own_queries += 2
            worker = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("dramatiq")),
                    "benchmarks.bench_actors",
                    "--queues",
                    QUEUE,
                    "--processes",
                    str(self.processes),
                    "--threads",
                    str(self.threads),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=(self.workdir / f"worker-{mode}-{n}-{round_no}.log").open("wb"),
            )
            peak_rss = 0
            # the clock starts once a tenth of the jobs is done: by then every worker process
            # has booted (they start one after the other, and a slower import would be counted)
            warmup = n // 10
            started = finished = None
            deadline = time.monotonic() + 60 + n / 200
            while finished is None:
                left = self.client.hlen(MSGS_KEY)
                now = time.perf_counter()
                if started is None and left <= n - warmup:
                    started = now
                if left == 0:
                    finished = now
                if time.monotonic() > deadline:
                    worker.kill()
                    raise RuntimeError(f"worker did not drain {n} jobs in time ({left} left)")
                peak_rss = max(peak_rss, _peak_rss(worker.pid))
                time.sleep(0.01)

            rows_completed = lag_p50 = lag_p99 = None
            if sync:
                rows_deadline = time.monotonic() + 60
                while True:
                    rows_completed = conn.execute(
                        "select count(*) from public.job_status where status = 'completed'"
                    ).fetchone()[0]  # type: ignore[index]
                    own_queries += 1
                    if rows_completed >= n or time.monotonic() > rows_deadline:
                        break
                    time.sleep(0.05)
            peak_rss = max(peak_rss, _peak_rss(worker.pid))
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            time.sleep(1.0)  # backends flush their statistics when they exit
            commits = self._commits(conn) - commits_before - own_queries
            if sync:
                lag_p50, lag_p99 = conn.execute(
                    "select percentile_cont(0.5) within group (order by lag), "
                    "percentile_cont(0.99) within group (order by lag) from ("
                    "  select extract(epoch from updated_at - event_at)::float8 as lag"
                    "  from public.job_status where status = 'completed') as l"
                ).fetchone()  # type: ignore[misc]
        assert started is not None and finished is not None
        seconds = max(finished - started, 1e-6)
        return Run(
            mode=mode,
            n=n,
            round=round_no,
            seconds=round(seconds, 3),
            jobs_per_second=round((n - warmup) / seconds, 1),
            transactions_per_job=round(commits / n, 4),
            rows_completed=rows_completed,
            lag_p50=None if lag_p50 is None else round(lag_p50, 4),
            lag_p99=None if lag_p99 is None else round(lag_p99, 4),
            peak_rss_mb=round(peak_rss / 1024 / 1024, 1),
            send_seconds=round(send_seconds, 2),
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss(pid: int) -> int:
    """Largest VmHWM (peak resident set) among the worker's child processes, in bytes."""
    peak = 0
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def summarize(runs: list[Run]) -> dict[str, Any]:
    by: dict[tuple[int, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.n, r.mode), []).append(r)
    table = []
    for n in sorted({r.n for r in runs}):
        off, on = by.get((n, "off"), []), by.get((n, "on"), [])
        if not off or not on:
            continue
        off_rate = statistics.median(r.jobs_per_second for r in off)
        on_rate = statistics.median(r.jobs_per_second for r in on)
        table.append(
            {
                "n": n,
                "rounds": min(len(off), len(on)),
                "off_jobs_per_second": round(off_rate, 1),
                "on_jobs_per_second": round(on_rate, 1),
                "ratio": round(on_rate / off_rate, 3),
                "transactions_per_job": statistics.median(r.transactions_per_job or 0 for r in on),
                "rows_completed_min": min(r.rows_completed or 0 for r in on),
                "all_rows_completed": all(r.rows_completed == n for r in on),
                "lag_p50": statistics.median(r.lag_p50 or 0 for r in on),
                "lag_p99": max(r.lag_p99 or 0 for r in on),
                "peak_rss_mb_off": max(r.peak_rss_mb for r in off),
                "peak_rss_mb_on": max(r.peak_rss_mb for r in on),
                "rss_ratio": round(max(r.peak_rss_mb for r in on) / max(r.peak_rss_mb for r in off), 3),
            }
        )
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "table": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,100000", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode and N")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workdir", default=str(ROOT / ".coursegen" / "bench"))
    parser.add_argument("--out", help="also write the summary JSON here")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runs: list[Run] = []
    with Bench(workdir, args.processes, args.threads) as bench:
        for n in (int(x) for x in args.sizes.split(",")):
            for round_no in range(1, args.rounds + 1):
                # alternate which mode goes first, so drift in the machine hits both alike
                for mode in ("off", "on") if round_no % 2 else ("on", "off"):
                    run = bench.run(mode, n, round_no)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    summary = summarize(runs)
    print(json.dumps(summary, indent=2))
    print()
    print(f"{'N':>7} {'off j/s':>9} {'on j/s':>9} {'ratio':>6} {'tx/job':>7} {'completed':>9} "
          f"{'lag p50':>8} {'lag p99':>8} {'RSS off':>8} {'RSS on':>8}")  # fmt: skip
    for row in summary["table"]:
        print(
            f"{row['n']:>7} {row['off_jobs_per_second']:>9.0f} {row['on_jobs_per_second']:>9.0f} "
            f"{row['ratio']:>6.3f} {row['transactions_per_job']:>7.4f} "
            f"{'yes' if row['all_rows_completed'] else 'NO':>9} "
            f"{row['lag_p50']:>7.3f}s {row['lag_p99']:>7.3f}s "
            f"{row['peak_rss_mb_off']:>6.1f}MB {row['peak_rss_mb_on']:>6.1f}MB"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
