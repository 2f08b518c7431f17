"""Fleet benchmark: K status writer processes on one database (`make bench-fleet`).

A fleet of worker dynos does not fit on this 2-core machine, its writers do: K processes
(``benchmarks/fleet_writers.py``), each the real ``StatusWriter`` and store fed by a synthetic
job source (pending, active, two progress events and an ending per job; Poisson arrivals), at a
fixed total event rate split across them, against one PostgreSQL (the embedded 18, or another
installation with ``--pg-bindir``), in three modes:

* ``direct``: the PostgreSQL store on the database's own port (a pool of 1-2 connections each);
* ``pgbouncer``: the same through PgBouncer in transaction mode (Debian's package, started here
  as the ``postgres`` OS user, ``--pool-size`` server connections, fewer than the writers from
  K = 16): what Supabase's pooler does;
* ``supabase``: the Supabase store (the real client, one RPC per batch) through the PostgREST
  stand-in, served over HTTP by a process of its own (``benchmarks/stand_in_server.py``) with
  PostgREST's pool of 10 connections. The stand-in is a Python server: past a few hundred
  requests a second it is the bottleneck (its CPU is reported), which PostgREST is not; the
  database's side (transactions, CPU per transaction) is what this mode measures.

and two batching policies: ``fixed`` (a batch every ``flush_interval`` whatever its size: the
writer before issue 19, ``min_batch=1``) and ``adaptive`` (the defaults of ``coursegen.settings``:
fewer than ``flush_min_batch`` jobs wait up to ``flush_max_wait``).

Each run: the writers start, play jobs for ``warmup + window`` seconds, let the jobs under way
end, flush, stay idle, stop. Reported per K, mode and policy, over the window:

* database transactions per second (``pg_stat_database.xact_commit`` of the benchmark's database;
  the benchmark's own queries go to another database), and the writers' store calls per second
  (one transaction each). A busy backend may report its statistics up to 10 s late (it skips a
  report while the shared statistics are locked): in a steady window the two agree within a few
  percent, but a stretch right after a busy one shows commits nobody made then. Hence for the
  idle stretch the transaction ids the cluster hands out (``pg_current_snapshot()``'s xmax, read
  at once; every writing transaction and subtransaction takes one: ``xids_per_second`` in the
  JSON, about four per store call, the function's exception block and the Broadcast trigger's);
* database CPU, all PostgreSQL processes (``/proc/<pid>/schedstat``; exited backends through the
  postmaster's children times), in cores, per event made and per transaction;
* connections held: the database's connections from the writers (direct), PgBouncer, or the REST
  API (``pg_stat_activity``, sampled every second: max), and PgBouncer's clients and server
  connections (``SHOW POOLS``);
* WAL bytes written per event made (``pg_current_wal_lsn()``);
* lag p50/p99: every written event, from its ``event_at`` to the return of the store call that
  wrote it (the writers' own measure); and for the final statuses, ``updated_at - event_at`` of
  the rows (the database's);
* events lost: every job made must end as a row with the status it ended with (counted per
  status); jobs without a final row are lost;
* idle: store calls and transaction ids taken while every writer idles (must be none);
* the CPU of the writers, PgBouncer and the stand-in, and the load average before the run.

One JSON line per run, a table at the end, the goal of issue 19 checked (K = 128, adaptive:
<= 200 transactions/s, lag p99 <= 1 s, nothing lost, nothing asked while idle), and ``--out``
writes the runs as JSON. Options: ``make bench-fleet FLEET_ARGS="--ks 16,128 --modes direct"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.fleet_writers import EVENTS_PER_JOB, FleetConfig
from coursegen.embedded import LocalPgBouncer, LocalPostgres
from coursegen.migrate import migrate
from coursegen.settings import Settings
from tests.support.postgrest import service_key

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "pgbouncer", "supabase")
POLICIES = ("fixed", "adaptive")
KS = (1, 4, 16, 64, 128)
DBNAME = "fleet"
TERMINAL = ("completed", "failed", "cancelled")
#: issue 19's goal, checked on the adaptive runs at K = 128
GOAL_K, GOAL_TPS, GOAL_P99 = 128, 200.0, 1.0
#: past jobs, as a live table holds them
HISTORY_SQL = (
    "insert into public.job_status (job_id, tenant_id, user_id, actor_name, queue_name, status, progress,"
    " attempt, result, event_at, enqueued_at, started_at, finished_at)"
    " select 'history-' || %s || '-' || g, %s, %s, 'generate_course', 'default', 'completed', 100, 1,"
    ' \'{"course": "a past course"}\', t, t, t, t'
    " from generate_series(1, %s) as g, lateral (select now() - g * interval '1 second' as t) as at"
)
_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    mode: str
    policy: str
    k: int
    round: int
    rate: float
    load_before: float
    events_made_per_second: float
    transactions_per_second: float
    xids_per_second: float
    store_calls_per_second: float
    events_per_call: float
    db_cores: float
    db_cpu_us_per_event: float
    db_cpu_us_per_transaction: float
    backend_cpu_us_per_event: float
    backend_cpu_us_per_transaction: float
    wal_bytes_per_event: float
    connections_max: int
    pooler_clients_max: int | None
    pooler_servers_max: int | None
    pooler_maxwait_ms: float | None
    lag_p50: float | None
    lag_p99: float | None
    lag_max: float | None
    call_p50: float | None
    call_p99: float | None
    row_lag_p50: float | None
    row_lag_p99: float | None
    jobs_made: int
    lost: int
    idle_store_calls: int
    idle_xids: int
    idle_autovacuum: bool = False
    machine_busy_percent: float = 0.0
    steal_percent: float = 0.0
    write_failures: dict[str, float] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    db_cores_by_kind: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    at: float
    commits: int
    xid: int
    wal: int  # bytes of WAL written since the cluster began
    db_ns: dict[int, int]
    db_kinds: dict[int, str]
    db_reaped_ns: int
    other_ns: dict[str, int]
    machine: tuple[int, int, int]  # busy, busy + idle, steal: CPU ticks since boot


class FleetBench:
    def __init__(self, workdir: Path, *, bindir: Path | None, pool_size: int, history: int) -> None:
        self.workdir = workdir
        self.history = history
        self.postgres = LocalPostgres(workdir / "postgres", bindir=bindir)
        self.pgbouncer: LocalPgBouncer | None = None
        self.pool_size = pool_size
        self.stand_in: subprocess.Popen[str] | None = None

    def __enter__(self) -> FleetBench:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.postgres)
            admin = self.postgres.url()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"create database {DBNAME}")
            self.url = self.postgres.url(DBNAME)
            migrate(self.url)
            self.owners = []
            with psycopg.connect(self.url, autocommit=True) as conn:
                for i in range(8):  # a few tenants and users, as a fleet serves
                    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
                    conn.execute(
                        "insert into public.organizations (id, name) values (%s, %s)", (tenant, f"t{i}")
                    )
                    conn.execute("insert into auth.users (id) values (%s)", (user,))
                    self.owners.append((tenant, user))
                    # the jobs of the past, as a live table holds them; and statistics: a session
                    # plans job_status_write once, and a plan made on an empty table stays bad
                    conn.execute(HISTORY_SQL, (i, tenant, user, self.history // 8))
                conn.execute("vacuum analyze public.job_status")
            self.monitor = stack.enter_context(psycopg.connect(admin, autocommit=True))
            self.pgbouncer = LocalPgBouncer(
                self.workdir / "pgbouncer", self.postgres.port, pool_size=self.pool_size
            )
            stack.enter_context(self.pgbouncer)
            self.stand_in = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.stand_in_server", self.url],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=(self.workdir / "stand-in.log").open("wb"),
                text=True,
            )
            stack.callback(self._stop_stand_in)
            assert self.stand_in.stdout is not None
            self.supabase_url = self.stand_in.stdout.readline().strip()
            if not self.supabase_url.startswith("http"):
                raise RuntimeError(f"the stand-in did not start: {self.supabase_url!r}")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _stop_stand_in(self) -> None:
        if self.stand_in is not None and self.stand_in.poll() is None:
            self.stand_in.terminate()
            self.stand_in.wait(30)

    # -- one run ------------------------------------------------------------------------------

    def run(self, mode: str, policy: str, k: int, round_no: int, args: argparse.Namespace) -> Run:
        tag = f"r{round_no}-{mode}-{policy}-{k}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                conn.execute("truncate realtime.messages")  # Supabase keeps it a few days
            conn.execute("checkpoint")
        defaults = Settings.model_fields
        out = self.workdir / f"run-{mode}-{policy}-{k}-{round_no}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        url = {"direct": self.url, "supabase": self.supabase_url}.get(mode) or self._pooled_url()
        config = FleetConfig(
            mode=mode,
            k=k,
            rate=args.rate,
            warmup=args.warmup,
            window=args.window,
            idle=args.idle,
            url=url,
            service_key=service_key() if mode == "supabase" else None,
            owners=self.owners,
            flush_interval=defaults["flush_interval"].default,
            min_batch=1 if policy == "fixed" else defaults["flush_min_batch"].default,
            max_wait=defaults["flush_max_wait"].default,
            result_bytes=args.result_bytes,
            out=str(out),
            tag=tag,
            seed=round_no,
        )
        (out / "config.json").write_text(json.dumps(asdict(config)))
        load_before = os.getloadavg()[0]
        fleet = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fleet_writers", str(out / "config.json")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(out / "writers.log").open("wb"),
            text=True,
        )
        try:
            assert fleet.stdout is not None
            line = fleet.stdout.readline().split()
            if not line or line[0] != "go":
                raise RuntimeError(f"the writers did not start ({' '.join(line)}); see {out / 'writers.log'}")
            t0, pids = float(line[1]), [int(p) for p in line[2:]]
            others = {"writers": pids, "pgbouncer": [self.pgbouncer.pid or 0] if self.pgbouncer else []}
            if self.stand_in is not None:
                others["stand_in"] = [self.stand_in.pid]
            _sleep_until(t0 + config.warmup)
            first = self._snapshot(others)
            connections, clients, servers, maxwait = [], [], [], []
            while time.time() < t0 + config.source_end - 0.05:
                connections.append(self._connections("authenticator" if mode == "supabase" else "postgres"))
                if mode == "pgbouncer" and self.pgbouncer is not None:
                    pool = self._pool()
                    clients.append(pool[0])
                    servers.append(pool[1])
                    maxwait.append(pool[2])
                _sleep_until(min(time.time() + 1.0, t0 + config.source_end))
            last = self._snapshot(others)
            _sleep_until(t0 + config.idle_start + 2.0)
            idle_first = self._snapshot({})
            idle_autovacuum = False  # autovacuum's transactions count in xact_commit too
            while time.time() < t0 + config.idle_start + config.idle - 0.2:
                idle_autovacuum = idle_autovacuum or self._autovacuum()
                _sleep_until(min(time.time() + 0.1, t0 + config.idle_start + config.idle - 0.2))
            idle_last = self._snapshot({})
            tail = fleet.stdout.read()
            if fleet.wait(120) != 0:
                raise RuntimeError(f"a writer failed ({tail.strip()}); see {out / 'writers.log'}")
        finally:
            if fleet.poll() is None:
                fleet.kill()
                fleet.wait(10)
        children = [json.loads(path.read_text()) for path in sorted(out.glob("child-*.json"))]
        if len(children) != k:
            raise RuntimeError(f"{len(children)} of {k} writers reported; see {out / 'writers.log'}")
        return self._result(mode, policy, k, round_no, config, load_before, first, last, idle_first,
                            idle_last, idle_autovacuum, connections, clients, servers, maxwait,
                            children)  # fmt: skip

    def _result(
        self,
        mode: str,
        policy: str,
        k: int,
        round_no: int,
        config: FleetConfig,
        load_before: float,
        first: Snapshot,
        last: Snapshot,
        idle_first: Snapshot,
        idle_last: Snapshot,
        idle_autovacuum: bool,
        connections: list[int],
        clients: list[int],
        servers: list[int],
        maxwait: list[float],
        children: list[dict[str, Any]],
    ) -> Run:
        seconds = last.at - first.at
        commits = last.commits - first.commits
        db_kinds = _db_cpu(first, last)
        db_ns = sum(db_kinds.values())
        made = sum(c["made_window"] for c in children)
        calls = sum(c["calls"].get("window", 0) for c in children)
        written = sum(c["events"].get("window", 0) for c in children)
        lags, calls_ms = _merged(children, "lags_ms"), _merged(children, "call_ms")
        ended: dict[str, int] = {}
        failures: dict[str, float] = {}
        for c in children:
            for status, n in c["ended"].items():
                ended[status] = ended.get(status, 0) + n
            for reason, n in c["failures"].items():
                failures[reason] = failures.get(reason, 0) + n
        rows, row_lags = self._rows(config.tag, first.at, last.at)
        lost = sum(max(0, n - rows.get(status, 0)) for status, n in ended.items())
        lost += sum(n for status, n in rows.items() if status not in TERMINAL)
        others = {
            name: round((last.other_ns.get(name, 0) - first.other_ns.get(name, 0)) / 1e9 / seconds, 3)
            for name in last.other_ns
        }
        return Run(
            mode=mode,
            policy=policy,
            k=k,
            round=round_no,
            rate=config.rate,
            load_before=round(load_before, 2),
            events_made_per_second=round(made / seconds, 1),
            transactions_per_second=round(commits / seconds, 1),
            xids_per_second=round((last.xid - first.xid) / seconds, 1),
            store_calls_per_second=round(calls / seconds, 1),
            events_per_call=round(written / calls, 1) if calls else 0.0,
            db_cores=round(db_ns / 1e9 / seconds, 3),
            db_cpu_us_per_event=round(db_ns / 1e3 / made, 1) if made else 0.0,
            db_cpu_us_per_transaction=round(db_ns / 1e3 / commits, 1) if commits else 0.0,
            backend_cpu_us_per_event=round(db_kinds.get("backend", 0) / 1e3 / made, 1) if made else 0.0,
            backend_cpu_us_per_transaction=(
                round(db_kinds.get("backend", 0) / 1e3 / commits, 1) if commits else 0.0
            ),
            wal_bytes_per_event=round((last.wal - first.wal) / made) if made else 0.0,
            connections_max=max(connections, default=0),
            pooler_clients_max=max(clients) if clients else None,
            pooler_servers_max=max(servers) if servers else None,
            pooler_maxwait_ms=round(max(maxwait), 1) if maxwait else None,
            lag_p50=_percentile(lags, 0.50),
            lag_p99=_percentile(lags, 0.99),
            lag_max=max(lags) / 1000 if lags else None,
            call_p50=_percentile(calls_ms, 0.50),
            call_p99=_percentile(calls_ms, 0.99),
            row_lag_p50=row_lags[0],
            row_lag_p99=row_lags[1],
            jobs_made=sum(ended.values()),
            lost=lost,
            idle_store_calls=sum(c["calls"].get("idle", 0) for c in children),
            idle_xids=idle_last.xid - idle_first.xid,
            idle_autovacuum=idle_autovacuum,
            machine_busy_percent=round(
                100 * (last.machine[0] - first.machine[0]) / max(1, last.machine[1] - first.machine[1]), 1
            ),
            steal_percent=round(
                100 * (last.machine[2] - first.machine[2]) / max(1, last.machine[1] - first.machine[1]), 1
            ),
            write_failures=failures,
            cpu_cores=others,
            db_cores_by_kind={kind: round(ns / 1e9 / seconds, 3) for kind, ns in db_kinds.items()},
        )

    def _pooled_url(self) -> str:
        assert self.pgbouncer is not None
        return self.pgbouncer.url(DBNAME)

    # -- measurements -------------------------------------------------------------------------

    def _snapshot(self, others: dict[str, list[int]]) -> Snapshot:
        self.monitor.execute("select pg_stat_clear_snapshot()")
        row = self.monitor.execute(
            "select xact_commit from pg_stat_database where datname = %s", (DBNAME,)
        ).fetchone()
        postmaster = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        pids = [postmaster, *_children(postmaster)]
        db_ns = {pid: _task_ns(pid) for pid in pids}
        xid, wal = self.monitor.execute(
            "select pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        ).fetchone() or (0, 0)
        return Snapshot(
            at=time.time(),
            commits=int(row[0]) if row else 0,
            xid=int(xid),
            wal=int(wal),
            db_ns=db_ns,
            db_kinds={
                pid: "monitor" if pid == self.monitor.info.backend_pid else _kind(pid, postmaster)
                for pid in pids
            },
            db_reaped_ns=_reaped_ns(postmaster),
            other_ns={name: sum(_task_ns(pid) for pid in pids) for name, pids in others.items()},
            machine=_machine_ticks(),
        )

    def _connections(self, user: str) -> int:
        """Client backends of the benchmark's database logged in as ``user``: ``postgres`` for
        the writers (or PgBouncer's server connections), ``authenticator`` for the REST API's."""
        row = self.monitor.execute(
            "select count(*) from pg_stat_activity"
            " where datname = %s and usename = %s and backend_type = 'client backend'",
            (DBNAME, user),
        ).fetchone()
        return int(row[0]) if row else 0

    def _autovacuum(self) -> bool:
        row = self.monitor.execute(
            "select count(*) from pg_stat_activity where datname = %s and backend_type = 'autovacuum worker'",
            (DBNAME,),
        ).fetchone()
        return bool(row and row[0])

    def _pool(self) -> tuple[int, int, float]:
        assert self.pgbouncer is not None
        for pool in self.pgbouncer.show("pools"):
            if pool["database"] == DBNAME:
                clients = int(pool["cl_active"]) + int(pool["cl_waiting"])
                servers = sum(
                    int(pool[key]) for key in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                )
                return clients, servers, int(pool["maxwait"]) * 1000 + int(pool["maxwait_us"]) / 1000
        return 0, 0, 0.0

    def _rows(
        self, tag: str, start: float, end: float
    ) -> tuple[dict[str, int], tuple[float | None, float | None]]:
        """The run's rows by status, and the lag of its final rows written in the window."""
        like = tag + "-%"
        with psycopg.connect(self.url, autocommit=True) as conn:
            by_status = conn.execute(
                "select status::text, count(*) from public.job_status where job_id like %s group by 1",
                (like,),
            ).fetchall()
            lags = conn.execute(
                "select percentile_cont(0.5) within group (order by lag),"
                " percentile_cont(0.99) within group (order by lag) from ("
                "  select extract(epoch from updated_at - event_at)::float8 as lag from public.job_status"
                "  where job_id like %s and status in ('completed', 'failed', 'cancelled')"
                "  and event_at >= to_timestamp(%s) and event_at < to_timestamp(%s)) as l",
                (like, start, end),
            ).fetchone()
        rows = {status: int(n) for status, n in by_status}
        p50, p99 = lags if lags else (None, None)
        return rows, (None if p50 is None else round(p50, 3), None if p99 is None else round(p99, 3))


def _machine_ticks() -> tuple[int, int, int]:
    """(busy, busy + idle, steal) CPU ticks of the whole machine since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in stat.readline().split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait, steal


def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _task_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` (``/proc/<pid>/task/*/schedstat``, ns); 0 if gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total


def _reaped_ns(pid: int) -> int:
    """CPU time of the children ``pid`` has reaped (cutime + cstime, ticks -> ns)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int((int(fields[13]) + int(fields[14])) * _TICK_NS)
    except (OSError, IndexError, ValueError):
        return 0


def _db_cpu(first: Snapshot, last: Snapshot) -> dict[str, int]:
    """CPU ns of the PostgreSQL processes between two snapshots, by kind (see :func:`_kind`): the
    live ones' growth, the new ones' whole time; and, as ``exited``, what the postmaster reaped
    (less what the reaped ones had at first): autovacuum workers, closed connections."""
    kinds: dict[str, int] = {}
    for pid, ns in last.db_ns.items():
        kind = last.db_kinds.get(pid, "other")
        kinds[kind] = kinds.get(kind, 0) + ns - first.db_ns.get(pid, 0)
    gone = sum(ns for pid, ns in first.db_ns.items() if pid not in last.db_ns)
    kinds["exited"] = last.db_reaped_ns - first.db_reaped_ns - gone
    return kinds


def _kind(pid: int, postmaster: int) -> str:
    """``backend`` (a client connection), ``autovacuum``, ``postmaster`` or ``background``
    (checkpointer, WAL writer, background writer, I/O workers...), from the process title."""
    if pid == postmaster:
        return "postmaster"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "autovacuum" in title:
        return "autovacuum"
    return "backend" if f" {DBNAME} " in title or "127.0.0.1(" in title else "background"


def _merged(children: list[dict[str, Any]], name: str) -> dict[int, int]:
    """The children's millisecond histograms ``name``, added up."""
    merged: dict[int, int] = {}
    for child in children:
        for ms, n in child[name].items():
            merged[int(ms)] = merged.get(int(ms), 0) + n
    return merged


def _percentile(counts: dict[int, int], q: float) -> float | None:
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = q * (total - 1), 0
    for ms in sorted(counts):
        seen += counts[ms]
        if seen > rank:
            return ms / 1000
    return max(counts) / 1000


# -- report -------------------------------------------------------------------------------------


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """Per (mode, policy, K): the median of the rounds for rates and costs, the worst for lag,
    loss and idle calls."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.policy, run.k), []).append(run)
    table = []
    for (mode, policy, k), group in sorted(
        groups.items(), key=lambda g: (MODES.index(g[0][0]), g[0][2], g[0][1])
    ):

        def median(name: str, group: list[Run] = group) -> float:
            return round(statistics.median(getattr(r, name) for r in group), 3)

        def worst(name: str, group: list[Run] = group) -> Any:
            values = [getattr(r, name) for r in group if getattr(r, name) is not None]
            return max(values) if values else None

        table.append(
            {
                "mode": mode,
                "policy": policy,
                "k": k,
                "rounds": len(group),
                "events_made_per_second": median("events_made_per_second"),
                "transactions_per_second": median("transactions_per_second"),
                "xids_per_second": median("xids_per_second"),
                "store_calls_per_second": median("store_calls_per_second"),
                "events_per_call": median("events_per_call"),
                "db_cores": median("db_cores"),
                "db_cpu_us_per_event": median("db_cpu_us_per_event"),
                "db_cpu_us_per_transaction": median("db_cpu_us_per_transaction"),
                "backend_cpu_us_per_event": median("backend_cpu_us_per_event"),
                "backend_cpu_us_per_transaction": median("backend_cpu_us_per_transaction"),
                "wal_bytes_per_event": median("wal_bytes_per_event"),
                "connections_max": worst("connections_max"),
                "pooler_clients_max": worst("pooler_clients_max"),
                "pooler_servers_max": worst("pooler_servers_max"),
                "pooler_maxwait_ms": worst("pooler_maxwait_ms"),
                "lag_p50": median("lag_p50") if all(r.lag_p50 is not None for r in group) else None,
                "lag_p99": worst("lag_p99"),
                "call_p99": worst("call_p99"),
                "row_lag_p99": worst("row_lag_p99"),
                "lost": worst("lost"),
                "idle_store_calls": worst("idle_store_calls"),
                "idle_xids": worst("idle_xids"),
                "idle_autovacuum": any(r.idle_autovacuum for r in group),
                "writer_cores": round(statistics.median(r.cpu_cores.get("writers", 0) for r in group), 3),
                "stand_in_cores": round(statistics.median(r.cpu_cores.get("stand_in", 0) for r in group), 3),
                "pgbouncer_cores": round(
                    statistics.median(r.cpu_cores.get("pgbouncer", 0) for r in group), 3
                ),
                "load_before": median("load_before"),
                "machine_busy_percent": median("machine_busy_percent"),
                "steal_percent_max": worst("steal_percent"),
            }
        )
    return table


#: the table's columns: (heading, width, what it shows)
COLUMNS = (
    ("mode", 9, "direct, pgbouncer or supabase"),
    ("policy", 8, "fixed (a batch every flush_interval) or adaptive"),
    ("K", 4, "writer processes"),
    ("ev/s", 6, "events made per second"),
    ("tx/s", 6, "transactions per second (xact_commit of the database)"),
    ("calls/s", 7, "the writers' store calls per second"),
    ("ev/call", 7, "events written per store call"),
    ("DB cores", 8, "CPU of every PostgreSQL process, in cores"),
    ("µs/ev", 6, "that CPU per event made"),
    ("µs/tx", 6, "that CPU per transaction"),
    ("be µs/ev", 8, "the client backends' CPU alone, per event made"),
    ("be µs/tx", 8, "the client backends' CPU alone, per transaction"),
    ("conns", 5, "the database's connections from the writers, PgBouncer or the REST API (max)"),
    ("pool cl/sv", 10, "PgBouncer's clients / server connections (max)"),
    ("lag p50", 8, "event made -> store call returned, every written event"),
    ("lag p99", 8, "the same, 99th percentile"),
    ("row p99", 8, "updated_at - event_at of the final rows, 99th percentile"),
    ("call p99", 8, "the time a store call took, 99th percentile: the lag's share after the wait"),
    ("lost", 4, "jobs without their final row at the end"),
    ("idle", 6, "store calls / transaction ids taken while every writer idled (a: autovacuum ran)"),
    ("writers", 7, "the writer processes' CPU, in cores"),
    ("stand-in", 8, "the PostgREST stand-in's CPU, in cores"),
    ("busy", 5, "how busy the machine's CPUs were in the window, %"),
    ("load", 5, "1-minute load average before the run (the run before counts in it)"),
)


def _cells(row: dict[str, Any]) -> list[str]:
    pool = (
        "-"
        if row["pooler_clients_max"] is None
        else f"{row['pooler_clients_max']}/{row['pooler_servers_max']}"
    )
    idle = f"{row['idle_store_calls']}/{row['idle_xids']}{'a' if row['idle_autovacuum'] else ''}"
    return [
        row["mode"],
        row["policy"],
        str(row["k"]),
        f"{row['events_made_per_second']:.0f}",
        f"{row['transactions_per_second']:.1f}",
        f"{row['store_calls_per_second']:.1f}",
        f"{row['events_per_call']:.1f}",
        f"{row['db_cores']:.3f}",
        f"{row['db_cpu_us_per_event']:.1f}",
        f"{row['db_cpu_us_per_transaction']:.0f}",
        f"{row['backend_cpu_us_per_event']:.1f}",
        f"{row['backend_cpu_us_per_transaction']:.0f}",
        str(row["connections_max"]),
        pool,
        _seconds(row["lag_p50"]),
        _seconds(row["lag_p99"]),
        _seconds(row["row_lag_p99"]),
        _seconds(row["call_p99"]),
        str(row["lost"]),
        idle,
        f"{row['writer_cores']:.2f}",
        f"{row['stand_in_cores']:.2f}",
        f"{row['machine_busy_percent']:.0f}",
        f"{row['load_before']:.2f}",
    ]


def print_table(table: list[dict[str, Any]]) -> None:
    print(" ".join(f"{name:>{width}}" for name, width, _ in COLUMNS))
    for row in table:
        print(" ".join(f"{cell:>{width}}" for cell, (_, width, _) in zip(_cells(row), COLUMNS, strict=True)))
    print()
    for name, _, meaning in COLUMNS[3:]:
        print(f"  {name}: {meaning}")
    goals = [row for row in table if row["k"] == GOAL_K and row["policy"] == "adaptive"]
    for row in goals:
        checks = {
            f"<= {GOAL_TPS:.0f} tx/s": row["transactions_per_second"] <= GOAL_TPS,
            f"lag p99 <= {GOAL_P99:.0f} s": (row["lag_p99"] or 0) <= GOAL_P99,
            "nothing lost": row["lost"] == 0,
            "nothing asked while idle": row["idle_store_calls"] == 0,
        }
        missed = [name for name, ok in checks.items() if not ok]
        print(
            f"  goal, K = {GOAL_K} {row['mode']}: "
            + ("met" if not missed else "NOT met: " + ", ".join(missed))
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="writer processes, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)}")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"some of {','.join(POLICIES)}")
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second, the whole fleet")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--idle", type=float, default=6.0, help="seconds the writers idle at the end")
    parser.add_argument("--pool-size", type=int, default=15, help="PgBouncer's server connections")
    parser.add_argument("--result-bytes", type=int, default=600, help="size of a completed job's result")
    parser.add_argument("--history", type=int, default=200_000, help="rows of past jobs in the table")
    parser.add_argument(
        "--pg-bindir", help="another PostgreSQL installation, e.g. /usr/lib/postgresql/15/bin"
    )
    parser.add_argument("--workdir", default=str(ROOT / ".coursegen" / "bench-fleet"))
    parser.add_argument("--out", help="also write the runs and the table as JSON here")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    policies = [p for p in POLICIES if p in args.policies.split(",")]
    combos = [(m, p) for m in modes for p in policies]
    if not ks or not combos:
        parser.error("nothing to run")

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runs: list[Run] = []
    with FleetBench(
        workdir,
        bindir=Path(args.pg_bindir) if args.pg_bindir else None,
        pool_size=args.pool_size,
        history=args.history,
    ) as bench:
        print(
            f"# {platform.machine()}, {os.cpu_count()} cpus, PostgreSQL {bench.postgres.version}", flush=True
        )
        for round_no in range(1, args.rounds + 1):
            for step, k in enumerate(ks):
                # rotate the order of the configurations, so that drift in the machine hits all alike
                shift = (round_no - 1 + step) % len(combos)
                for mode, policy in combos[shift:] + combos[:shift]:
                    run = bench.run(mode, policy, k, round_no, args)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    table = summarize(runs)
    print()
    print_table(table)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
                    f"Python {platform.python_version()}",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "events_per_job": EVENTS_PER_JOB,
                    "table": table,
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
