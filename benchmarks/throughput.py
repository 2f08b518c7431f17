"""Throughput benchmark: what status sync costs a saturated Dramatiq worker (`make bench`).

Embedded Redis (Valkey) and PostgreSQL (default settings, fsync on), the real `dramatiq` CLI
with `-p 2 -t 8`, N no-op tracked jobs enqueued before the worker starts, then drained; the
same work with the status middleware left out (COURSEGEN_STATUS_SYNC=0) and put in,
alternating, several rounds each; and the same with the status written through Supabase's REST
API (the real supabase client against the PostgREST stand-in of tests/support/postgrest.py,
served over HTTP from this process). One JSON line per run, then a summary:

* jobs per second (median per mode) at saturation: the clock runs from the moment a tenth of
  the jobs is done (every worker process has booted by then) to the last acknowledgement; and
  the ratio sync-on / sync-off. Also the ratio with the sync-on clock stopped when the last
  status row was written, if that came after the last acknowledgement (`persisted`): the status
  writes of the last flush interval fall after the last acknowledgement, a share of the timed
  work that shrinks as N grows;
* database transactions per job (pg_stat_database.xact_commit delta over the worker's run,
  less the benchmark's own queries);
* rows `completed` (must equal N), status lag p50/p99 (completed event -> row written);
* peak RSS (VmHWM) of the worker processes;
* for the Supabase mode, HTTP requests per job;
* the CPU time the hypervisor took from this VM during each run (steal), to tell a noisy
  run from a slow one;
* CPU time per job while the clock runs, by process: the workers, PostgreSQL, Redis and this
  process (which serves the Supabase stand-in), and how busy the machine's CPUs were. The
  difference between the modes is what status sync costs in CPU, whatever the throughput: on a
  machine whose cores are all busy the ratio falls towards CPU off / CPU on.
"""

from __future__ import annotations

import argparse
import contextlib
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

from coursegen.embedded import LocalPostgres, LocalRedis
from coursegen.migrate import migrate
from tests.support.postgrest import PostgrestStandIn, serve, service_key

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"
MSGS_KEY = f"dramatiq:{QUEUE}.msgs"
#: off: no status middleware; on: statuses to PostgreSQL; supabase: through the REST API;
#: quiet: as on, with the Realtime Broadcast triggers of job_status disabled (what they cost)
MODES = ("off", "on", "supabase", "quiet")


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
    http_requests_per_job: float | None = None
    steal_percent: float | None = None
    #: CPU microseconds per job while the clock ran, by process group (see _cpu_groups)
    cpu_us_per_job: dict[str, float] | None = None
    machine_busy_percent: float | None = None
    #: sync modes: from the clock's start to the last acknowledgement or the last status row
    #: written (``max(updated_at)``), whichever came later
    persisted_seconds: float | None = None
    jobs_per_second_persisted: float | None = None


class Bench:
    def __init__(self, workdir: Path, processes: int, threads: int) -> None:
        self.workdir = workdir
        self.processes = processes
        self.threads = threads
        self.redis = LocalRedis(workdir / "redis")
        self.postgres = LocalPostgres(workdir / "postgres")
        self._redis_pid: int | None = None

    def __enter__(self) -> Bench:
        # one stack: whatever started is stopped again, also when a later step fails
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.redis)
            stack.enter_context(self.postgres)
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
            self._redis_pid = int(self.client.info("server")["process_id"])
            self.stand_in = PostgrestStandIn(self.url)
            stack.callback(self.stand_in.close)
            self.supabase_url = stack.enter_context(serve(self.stand_in))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def env(self, mode: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COURSEGEN_", "SUPABASE_")) and k != "DATABASE_URL"
        }
        if mode == "supabase":
            env.update(SUPABASE_URL=self.supabase_url, SUPABASE_SERVICE_ROLE_KEY=service_key())
        else:
            env.update(DATABASE_URL=self.url)
        env.update(
            REDIS_URL=self.redis.url,
            COURSEGEN_STATUS_SYNC="0" if mode == "off" else "1",
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
        sync = mode != "off"
        env = self.env(mode)
        self.client.flushall()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("truncate public.job_status")
            # Realtime keeps broadcast messages for days in daily partitions; here each run
            # starts from an empty table, as each starts from an empty job_status
            if conn.execute("select to_regclass('realtime.messages')").fetchone()[0]:  # type: ignore[index]
                conn.execute("truncate realtime.messages")
            trigger = "disable" if mode == "quiet" else "enable"
            conn.execute(f"alter table public.job_status {trigger} trigger user")

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
        self.stand_in.reset_counts()
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
            # the clock starts once a tenth of the jobs is done: by then every worker process
            # has booted (they start one after the other, and a slower import would be counted)
            warmup = n // 10
            started = finished = None
            deadline = time.monotonic() + 60 + n / 200
            while finished is None:
                left = self.client.hlen(MSGS_KEY)
                now = time.perf_counter()
                if started is None and left <= n - warmup:
                    started, steal_start, started_wall = now, _steal_ticks(), time.time()
                    groups = self._cpu_groups(worker.pid)  # every process exists by now
                    cpu_start, machine_start = _cpu_ticks(groups), _machine_ticks()
                if left == 0:
                    finished, steal_end = now, _steal_ticks()
                    cpu_end, machine_end = _cpu_ticks(groups), _machine_ticks()
                if time.monotonic() > deadline:
                    worker.kill()
                    raise RuntimeError(f"worker did not drain {n} jobs in time ({left} left)")
                # only HLEN while the clock runs: listing processes to read their RSS here took
                # ~3 ms a time, a quarter of a core taken from the workers; VmHWM is a
                # high-water mark, read once the jobs are done
                time.sleep(0.01)

            rows_completed = lag_p50 = lag_p99 = last_write = None
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
                # updated_at is now() of the writing transaction: same host, same clock
                last_write = conn.execute(
                    "select extract(epoch from max(updated_at))::float8 from public.job_status"
                ).fetchone()[0]  # type: ignore[index]
                own_queries += 1
            peak_rss = _peak_rss(worker.pid)
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
        persisted = None if last_write is None else max(seconds, last_write - started_wall)
        requests = self.stand_in.requests
        steal = (steal_end - steal_start) / _TICKS / seconds / (os.cpu_count() or 1)
        per_job = 1e6 / _TICKS / (n - warmup)  # ticks -> µs per timed job
        cpu = {name: round((cpu_end[name] - start) * per_job, 1) for name, start in cpu_start.items()}
        busy, total = (end - start for start, end in zip(machine_start, machine_end, strict=True))
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
            http_requests_per_job=round(requests / n, 4) if mode == "supabase" else None,
            steal_percent=round(100 * steal, 1),
            cpu_us_per_job=cpu,
            machine_busy_percent=round(100 * busy / max(total, 1), 1),
            persisted_seconds=None if persisted is None else round(persisted, 3),
            jobs_per_second_persisted=None if persisted is None else round((n - warmup) / persisted, 1),
        )

    def _cpu_groups(self, worker_pid: int) -> dict[str, list[int]]:
        """The pids whose CPU time is counted: the worker's processes, the PostgreSQL server
        (postmaster and backends), the Redis server, and this process."""
        groups: dict[str, list[int]] = {"workers": [], "postgres": [], "redis": [], "bench": [os.getpid()]}
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(worker_pid).children(recursive=True)
            groups["workers"] = [worker_pid, *(child.pid for child in children)]
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            postmaster = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            groups["postgres"] = [postmaster, *(c.pid for c in psutil.Process(postmaster).children())]
        if self._redis_pid is not None:
            groups["redis"] = [self._redis_pid]
        return groups


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_TICKS = os.sysconf("SC_CLK_TCK")


def _steal_ticks() -> int:
    """CPU time the hypervisor gave to others while this VM wanted it (all CPUs, in ticks)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def _cpu_ticks(groups: dict[str, list[int]]) -> dict[str, int]:
    """User + system CPU ticks of each group's processes (a process that exited counts 0)."""
    ticks = {}
    for name, pids in groups.items():
        total = 0
        for pid in pids:
            try:
                # the fields after the command name, which may hold spaces: utime, stime are 14, 15
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
        ticks[name] = total
    return ticks


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot; idle and iowait are not busy,
    steal is left out of both."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, _steal = fields
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


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
    """Per N and store: medians of each mode, the ratio against sync off (of the medians, and
    the median of each round's own ratio), and the worst of the per-run checks."""
    by: dict[tuple[int, str], dict[int, Run]] = {}
    for r in runs:
        by.setdefault((r.n, r.mode), {})[r.round] = r
    table = []
    for n in sorted({r.n for r in runs}):
        off = by.get((n, "off"), {})
        for mode in MODES[1:]:
            on = by.get((n, mode), {})
            if not off or not on:
                continue
            off_rate = statistics.median(r.jobs_per_second for r in off.values())
            on_rate = statistics.median(r.jobs_per_second for r in on.values())
            paired = [on[k].jobs_per_second / off[k].jobs_per_second for k in on.keys() & off.keys()]
            persisted = [r.jobs_per_second_persisted or 0.0 for r in on.values()]
            ratio_persisted = None
            if all(persisted):  # every sync-on run has one (off has none)
                ratio_persisted = round(statistics.median(persisted) / off_rate, 3)
            rss_off = max(r.peak_rss_mb for r in off.values())
            rss_on = max(r.peak_rss_mb for r in on.values())
            requests = [r.http_requests_per_job for r in on.values() if r.http_requests_per_job is not None]
            table.append(
                {
                    "n": n,
                    "store": "postgres" if mode == "on" else mode,
                    "rounds": len(paired),
                    "off_jobs_per_second": round(off_rate, 1),
                    "on_jobs_per_second": round(on_rate, 1),
                    "ratio": round(on_rate / off_rate, 3),
                    "paired_ratio_median": round(statistics.median(paired), 3) if paired else None,
                    "ratio_persisted": ratio_persisted,
                    "transactions_per_job": statistics.median(
                        r.transactions_per_job or 0 for r in on.values()
                    ),
                    "http_requests_per_job": statistics.median(requests) if requests else None,
                    "rows_completed_min": min(r.rows_completed or 0 for r in on.values()),
                    "all_rows_completed": all(r.rows_completed == n for r in on.values()),
                    "lag_p50": statistics.median(r.lag_p50 or 0 for r in on.values()),
                    "lag_p99": max(r.lag_p99 or 0 for r in on.values()),
                    "peak_rss_mb_off": rss_off,
                    "peak_rss_mb_on": rss_on,
                    "rss_ratio": round(rss_on / rss_off, 3),
                    "steal_percent_max": max(r.steal_percent or 0 for r in [*off.values(), *on.values()]),
                    **_cpu_summary(list(off.values()), list(on.values())),
                }
            )
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "table": table,
    }


def _cpu_summary(off: list[Run], on: list[Run]) -> dict[str, Any]:
    """Median CPU per job of each process group in both modes, and what sync adds in total."""
    if any(r.cpu_us_per_job is None for r in [*off, *on]):
        return {}

    def medians(runs: list[Run]) -> dict[str, float]:
        names = runs[0].cpu_us_per_job or {}
        out = {name: statistics.median((r.cpu_us_per_job or {})[name] for r in runs) for name in names}
        out["total"] = statistics.median(sum((r.cpu_us_per_job or {}).values()) for r in runs)
        return {name: round(value, 1) for name, value in out.items()}

    cpu_off, cpu_on = medians(off), medians(on)
    added = cpu_on["total"] - cpu_off["total"]
    return {
        "cpu_us_per_job_off": cpu_off,
        "cpu_us_per_job_on": cpu_on,
        "sync_cpu_us_per_job": round(added, 1),
        "sync_cpu_share": round(added / cpu_off["total"], 3) if cpu_off["total"] else None,
        "machine_busy_percent_off": statistics.median(r.machine_busy_percent or 0 for r in off),
        "machine_busy_percent_on": statistics.median(r.machine_busy_percent or 0 for r in on),
    }


#: the targets of issue [5/6], checked on the PostgreSQL rows of the summary
TARGETS = (
    ("ratio >= 0.90", lambda row: row["ratio"] >= 0.90),
    ("<= 0.2 database transactions per job", lambda row: row["transactions_per_job"] <= 0.2),
    ("lag p99 <= 1 s", lambda row: row["lag_p99"] <= 1.0),
    ("every row completed", lambda row: row["all_rows_completed"]),
    ("peak RSS on <= 1.3 x off", lambda row: row["rss_ratio"] <= 1.3),
)


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'N':>7} {'store':>8} {'off j/s':>8} {'on j/s':>8} {'ratio':>6} {'paired':>6} {'tx/job':>7} "
          f"{'req/job':>7} {'done':>4} {'lag p50':>8} {'lag p99':>8} {'RSS off':>7} {'RSS on':>7} "
          f"{'steal':>5}")  # fmt: skip
    for row in summary["table"]:
        requests = row["http_requests_per_job"]
        print(
            f"{row['n']:>7} {row['store']:>8} {row['off_jobs_per_second']:>8.0f} "
            f"{row['on_jobs_per_second']:>8.0f} {row['ratio']:>6.3f} {row['paired_ratio_median'] or 0:>6.3f} "
            f"{row['transactions_per_job']:>7.4f} {'-' if requests is None else f'{requests:.4f}':>7} "
            f"{'yes' if row['all_rows_completed'] else 'NO':>4} "
            f"{row['lag_p50']:>7.3f}s {row['lag_p99']:>7.3f}s "
            f"{row['peak_rss_mb_off']:>5.1f}MB {row['peak_rss_mb_on']:>5.1f}MB "
            f"{row['steal_percent_max']:>4.1f}%"
        )
    postgres = [row for row in summary["table"] if row["store"] == "postgres"]
    if not postgres:
        return
    print()
    for name, check in TARGETS:
        missed = [row["n"] for row in postgres if not check(row)]
        print(f"  {'met' if not missed else 'NOT met'}: {name}" + (f" (N = {missed})" if missed else ""))
    ratios = [row["ratio"] for row in postgres]
    print(f"  ratio by N: {', '.join(f'{r:.3f}' for r in ratios)}")
    persisted = [row.get("ratio_persisted") for row in postgres]
    if all(persisted):
        print(
            f"  ratio by N, sync-on clock stopped at the last status written: "
            f"{', '.join(f'{r:.3f}' for r in persisted)}"
        )
    rows = [row for row in summary["table"] if "sync_cpu_us_per_job" in row]
    if rows:
        print()
        print("  CPU per job while the clock ran, µs (bench: this process, which serves the stand-in):")
        for row in rows:
            off, on = row["cpu_us_per_job_off"], row["cpu_us_per_job_on"]
            parts = ", ".join(f"{name} {off[name]:.0f} -> {on[name]:.0f}" for name in off if name != "total")
            print(
                f"  {row['n']:>7} {row['store']:>8}: off {off['total']:.0f}, on {on['total']:.0f} ({parts}): "
                f"sync adds {row['sync_cpu_us_per_job']:.0f} µs ({100 * (row['sync_cpu_share'] or 0):.0f}%); "
                f"CPUs busy {row['machine_busy_percent_off']:.0f}% off, "
                f"{row['machine_busy_percent_on']:.0f}% on"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,100000", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode and N")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)}")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workdir", default=str(ROOT / ".coursegen" / "bench"))
    parser.add_argument("--out", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    modes = [m for m in MODES if m in args.modes.split(",")]

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runs: list[Run] = []
    with Bench(workdir, args.processes, args.threads) as bench:
        for n in (int(x) for x in args.sizes.split(",")):
            for round_no in range(1, args.rounds + 1):
                # rotate which mode goes first, so drift in the machine hits every mode alike
                shift = (round_no - 1) % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    run = bench.run(mode, n, round_no)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    summary = summarize(runs)
    print(json.dumps(summary, indent=2))
    print()
    print_table(summary)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
