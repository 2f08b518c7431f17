"""What honouring cancellations requested in the database costs, and how fast it is.

    python -m benchmarks.cancel_cost [--window 30] [--cancels 10] [--stores postgres,supabase]

Embedded Valkey and PostgreSQL, the real ``dramatiq coursegen.actors`` worker, statuses written
to PostgreSQL or through Supabase's REST API (the PostgREST stand-in served from this process).

* Cost: idle workers (``-p 1`` and ``-p 4``, two threads each) for ``--window`` seconds with the
  fleet's cancel poller on (``COURSEGEN_CANCEL_POLL_INTERVAL=1``) and off (``0``): the database
  queries it made per second (``pg_stat_user_functions`` calls of
  ``job_status_cancel_requests``; the stand-in's requests for Supabase), Redis ``SET`` calls per
  second per process (the lease), and CPU per worker process (``/proc/<pid>/stat``, user +
  system, 10 ms ticks), the difference between on and off being the poller's.
* Latency: ``--cancels`` running jobs cancelled through ``cancel_job`` as the signed-in user
  (the README's browser call, through the stand-in): from the stamp to the job's end
  (``finished_at - cancel_requested_at``, both on this host's clock); and as many queued
  jobs (every worker thread busy): from the stamp to the flag on Redis that every worker reads
  (a worker's copy lags it by at most 0.5 s), each then checked to end ``cancelled`` unrun.

Prints one JSON line per measurement, then a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis

from coursegen.embedded import LocalPostgres, LocalRedis
from coursegen.jobs import Jobs
from coursegen.migrate import migrate
from coursegen.settings import Settings
from tests.support.db import create_owner, wait_for
from tests.support.postgrest import (
    PostgrestStandIn,
    anon_key,
    serve,
    service_key,
    supabase_client,
    user_token,
)

from .throughput import _cpu_ticks, _free_port

ROOT = Path(__file__).resolve().parent.parent
TICK = 1 / os.sysconf("SC_CLK_TCK")
TEXT = (ROOT / "tests" / "data" / "honeybees.txt").read_text(encoding="utf-8")
FLAGS_KEY = "job_status:cancel_requests"


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = LocalRedis(workdir / "redis")
        self.postgres = LocalPostgres(workdir / "postgres")

    def __enter__(self) -> Stack:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.redis)
            stack.enter_context(self.postgres)
            self.url = self.postgres.url()
            migrate(self.url)
            self.tenant_id, self.user_id = create_owner(self.url, tenant_name="bench")
            with psycopg.connect(self.url, autocommit=True) as conn:
                dbname = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
                conn.execute(f"alter database \"{dbname}\" set track_functions = 'all'")
            self.client = redis.Redis.from_url(self.redis.url)
            self.stand_in = PostgrestStandIn(self.url)
            stack.callback(self.stand_in.close)
            self.supabase_url = stack.enter_context(serve(self.stand_in))
            self.http = httpx.Client(transport=self.stand_in)
            stack.callback(self.http.close)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def settings(self, store: str, **knobs: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSEGEN_", "SUPABASE_"))}
        env.pop("DATABASE_URL", None)
        if store == "supabase":
            env.update(SUPABASE_URL=self.supabase_url, SUPABASE_SERVICE_ROLE_KEY=service_key())
        else:
            env.update(DATABASE_URL=self.url)
        env.update(
            REDIS_URL=self.redis.url,
            PYTHONPATH=str(ROOT),
            dramatiq_prom_db=str(self.workdir / "prometheus"),
            dramatiq_prom_host="127.0.0.1",
            dramatiq_prom_port=str(_free_port()),
            **{f"COURSEGEN_{k.upper()}": str(v) for k, v in knobs.items()},
        )
        return env

    @contextlib.contextmanager
    def worker(self, env: dict[str, str], processes: int, threads: int = 2) -> Iterator[list[int]]:
        """The worker; yields the pids of its worker processes once they have booted."""
        log = (self.workdir / "worker.log").open("ab")
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dramatiq")),
                "coursegen.actors",
                "-p",
                str(processes),
                "-t",
                str(threads),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # the main process, its metrics exposition process and the worker processes; wait
            # until every worker process has booted (its writer thread is the poller)
            def booted() -> list[int] | None:
                children = psutil.Process(process.pid).children(recursive=True)
                workers = [c.pid for c in children if c.num_threads() > threads + 2]
                return workers if len(workers) >= processes else None

            pids = wait_for(booted, timeout=60, interval=0.1, what="the worker's processes")
            time.sleep(2)  # let imports and boot-time work settle before measuring
            yield pids
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            log.close()

    def poll_queries(self, store: str) -> int:
        if store == "supabase":
            return sum(1 for c in self.stand_in.log if c.path == "/rest/v1/rpc/job_status_cancel_requests")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("select pg_stat_clear_snapshot()")
            row = conn.execute(
                "select coalesce(sum(calls), 0) from pg_stat_user_functions"
                " where funcname = 'job_status_cancel_requests'"
            ).fetchone()
        return int(row[0]) if row else 0

    def redis_sets(self) -> int:
        return int(self.client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


def measure_cost(stack: Stack, store: str, processes: int, interval: float, window: float) -> dict[str, Any]:
    env = stack.settings(store, cancel_poll_interval=interval)
    with stack.worker(env, processes) as pids:
        queries0, sets0 = stack.poll_queries(store), stack.redis_sets()
        ticks0 = _cpu_ticks({"w": pids})["w"]
        time.sleep(window)
        ticks1 = _cpu_ticks({"w": pids})["w"]
        queries1, sets1 = stack.poll_queries(store), stack.redis_sets()
    cpu_ms_per_s = (ticks1 - ticks0) * TICK * 1000 / window / processes
    return {
        "measure": "cost",
        "store": store,
        "processes": processes,
        "poll": interval > 0,
        "window_s": window,
        "db_queries_per_s": round((queries1 - queries0) / window, 2),
        "redis_sets_per_s_per_process": round((sets1 - sets0) / window / processes, 2),
        "cpu_ms_per_s_per_process": round(cpu_ms_per_s, 2),
    }


def measure_turns(stack: Stack, store: str, turns: int = 200) -> dict[str, Any]:
    """CPU of one turn of the poller in the calling thread (``time.thread_time``): when another
    process holds the lease (one Redis SET), and when this one takes it and asks the store
    (nothing new to read). The stand-in serves HTTP from other threads: not counted."""
    from middleware import RedisCancelFlags
    from middleware.cancel_poll import CancelPoll
    from middleware.stores.postgres import PostgresStatusStore
    from middleware.stores.supabase import SupabaseStatusStore

    client = redis.Redis.from_url(stack.redis.url)
    poll = CancelPoll(RedisCancelFlags(client), interval=60)
    target: Any = (
        PostgresStatusStore(stack.url)
        if store == "postgres"
        else SupabaseStatusStore(stack.supabase_url, service_key())
    )
    try:
        client.delete(poll.key)
        poll.poll(target)  # connect, import, warm up
        cost: dict[str, float] = {}
        for holder in (False, True):
            spent = 0.0
            for _ in range(turns):
                if holder:
                    client.delete(poll.key)
                else:
                    client.set(poll.key, "another process", px=60_000)
                started = time.thread_time()
                result = poll.poll(target)
                spent += time.thread_time() - started
                assert result.polled is holder
            cost["holder" if holder else "other"] = spent / turns
    finally:
        client.delete(poll.key)  # the workers' turn
        target.close()
        client.close()
    return {
        "measure": "turn",
        "store": store,
        "cpu_us_per_turn_lease_elsewhere": round(cost["other"] * 1e6, 1),
        "cpu_us_per_turn_lease_taken": round(cost["holder"] * 1e6, 1),
    }


def measure_latency(stack: Stack, store: str, cancels: int) -> dict[str, Any]:
    """Running jobs cancelled through cancel_job as their user, then queued ones."""
    env = stack.settings(store, demo_pace=1.0)  # five seconds a course
    browser = supabase_client(stack.http, anon_key(), access_token=user_token(stack.user_id))
    producer = Jobs(Settings(**{"redis_url": stack.redis.url, "database_url": stack.url}))
    operator = producer.operator()
    request = {"tenant_id": stack.tenant_id, "user_id": stack.user_id, "sources": [{"text": TEXT}]}

    def row(job_id: str) -> dict[str, Any]:
        with psycopg.connect(stack.url) as conn:
            found = conn.execute(
                "select status::text, progress, started_at, finished_at, cancel_requested_at"
                " from public.job_status where job_id = %s",
                (job_id,),
            ).fetchone()
        keys = ("status", "progress", "started_at", "finished_at", "cancel_requested_at")
        return dict(zip(keys, found, strict=True)) if found else {}

    running: list[float] = []
    queued: list[float] = []
    unrun = 0
    processes, threads = 1, 2  # one process: every queued job waits behind the blockers
    try:
        with stack.worker(env, processes, threads):
            for _ in range(cancels):
                job = producer.submit(request)
                wait_for(
                    lambda j=job: row(j).get("status") == "active" and row(j)["progress"] >= 10,
                    timeout=60,
                    interval=0.01,
                )
                time.sleep(random.uniform(0, 1))  # any phase of the poll and of the job's checkpoints
                assert browser.rpc("cancel_job", {"job_id": job}).execute().data == "active"
                done = wait_for(
                    lambda j=job: (r := row(j)) and r["finished_at"] and r, timeout=30, interval=0.01
                )
                assert done["status"] == "cancelled", done
                running.append((done["finished_at"] - done["cancel_requested_at"]).total_seconds())
            for _ in range(cancels):
                blockers = [producer.submit(request) for _ in range(processes * threads)]
                wait_for(
                    lambda b=blockers: all(row(j).get("status") == "active" for j in b),
                    timeout=60,
                    interval=0.01,
                )
                job = producer.submit(request)
                time.sleep(random.uniform(0, 1))
                assert browser.rpc("cancel_job", {"job_id": job}).execute().data == "pending"
                wait_for(
                    lambda j=job: stack.client.zscore(FLAGS_KEY, j) is not None, timeout=30, interval=0.002
                )
                flagged = time.time()
                stamped = row(job)["cancel_requested_at"].timestamp()
                queued.append(flagged - stamped)
                for blocker in blockers:
                    operator.cancel(blocker)  # the fast path: the Redis flag
                done = wait_for(
                    lambda j=job: (r := row(j)) and r["finished_at"] and r, timeout=30, interval=0.01
                )
                unrun += done["status"] == "cancelled" and done["started_at"] is None
                wait_for(
                    lambda b=blockers: all(row(j).get("finished_at") for j in b), timeout=30, interval=0.01
                )
    finally:
        producer.close()
    return {
        "measure": "latency",
        "store": store,
        "running_stop_s": summary(running),
        "queued_flag_s": summary(queued),
        "queued_ended_cancelled_unrun": f"{unrun}/{cancels}",
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=30.0, help="seconds of each idle cost window")
    parser.add_argument("--cancels", type=int, default=10, help="running and queued cancels each, per store")
    parser.add_argument("--stores", default="postgres,supabase")
    parser.add_argument("--processes", default="1,4", help="worker processes of the cost windows")
    parser.add_argument("--workdir", default=str(ROOT / ".coursegen" / "cancel-cost"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results: list[dict[str, Any]] = []
    with Stack(workdir) as stack:
        for store in args.stores.split(","):
            result = measure_turns(stack, store)
            print(json.dumps(result), flush=True)
            results.append(result)
            for processes in (int(p) for p in args.processes.split(",")):
                for interval in (1.0, 0.0):
                    result = measure_cost(stack, store, processes, interval, args.window)
                    print(json.dumps(result), flush=True)
                    results.append(result)
            if args.cancels:
                result = measure_latency(stack, store, args.cancels)
                print(json.dumps(result), flush=True)
                results.append(result)
    print_summary(results)
    return 0


def print_summary(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "idle workers: store, processes, poll -> DB queries/s (fleet), Redis SET/s and CPU ms/s per process"
    )
    for r in (r for r in results if r["measure"] == "cost"):
        print(
            f"  {r['store']:<9} p={r['processes']}  poll {'on ' if r['poll'] else 'off'}  "
            f"{r['db_queries_per_s']:5.2f} q/s  {r['redis_sets_per_s_per_process']:5.2f} SET/s  "
            f"{r['cpu_ms_per_s_per_process']:6.2f} ms/s"
        )
    for r in (r for r in results if r["measure"] == "turn"):
        print(
            f"  {r['store']:<9} one turn, CPU in the writer thread: lease elsewhere "
            f"{r['cpu_us_per_turn_lease_elsewhere']} µs, lease taken (asks the store) "
            f"{r['cpu_us_per_turn_lease_taken']} µs"
        )
    for r in (r for r in results if r["measure"] == "latency"):
        run, que = r["running_stop_s"], r["queued_flag_s"]
        print(
            f"  {r['store']:<9} cancel_job -> running job ended: median {run['median']:.2f}s, "
            f"max {run['max']:.2f}s; queued job flagged: median {que['median']:.2f}s, max {que['max']:.2f}s "
            f"(ended cancelled unrun: {r['queued_ended_cancelled_unrun']})"
        )


if __name__ == "__main__":
    sys.exit(main())
