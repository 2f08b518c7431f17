"""The writer side of the fleet benchmark: K processes, each the real StatusWriter and store, fed
by a synthetic job source (`python -m benchmarks.fleet_writers <config.json>`; run by
benchmarks/fleet.py).

This process imports everything, then forks K children (no connection or thread exists before
the fork). Each child builds its writer and store as a worker does at boot (``prepare()``,
``start()``), says it is ready, and waits; once all are ready this process sets the start time
``t0`` and prints one line, ``go <t0> <child pids>``. From ``t0`` each child plays jobs at its
share of the total event rate until ``t0 + warmup + window``, lets the jobs under way end, flushes,
stays idle for ``idle`` seconds (its writer running, as a worker between jobs), closes its writer
and writes what it saw to ``<out>/child-<i>.json``.

A job, as a worker's hooks report it (events per job: :data:`EVENTS_PER_JOB`):

* ``pending`` when it is enqueued (a producer's event; here the same process writes it);
* its start noted ``queue_wait`` later (``StatusWriter.started``: the ``active`` event is made at
  the next batch if the job still runs), ``queue_wait`` exponential, mean 0.5 s;
* two progress events (33 %, 66 %) over a run of 1 to 5 s (uniform);
* its end: ``completed`` with a result of ``result_bytes`` (95 %), ``failed`` with an error (4 %),
  ``cancelled`` (1 %).

Jobs arrive as a Poisson process. What a child measures, for the batches whose store call
returned within the window: store calls (one transaction each), events written, and the lag of
every written event (its ``event_at`` to the return of the store call that wrote it, in ms); and
the time each call took; and the same calls in the idle stretch (must be none).
"""

from __future__ import annotations

import heapq
import importlib
import json
import multiprocessing
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from middleware.events import Owner, Status, StatusEvent, event_time, make_identity
from middleware.stores.base import Outcome, StatusStore
from middleware.sync_metrics import SyncMetrics
from middleware.writer import StatusWriter

EVENTS_PER_JOB = 5
QUEUE_WAIT_MEAN = 0.5
RUN_SECONDS = (1.0, 5.0)
#: the longest a job takes once the source stops making new ones (queue wait capped, run)
JOB_TAIL_SECONDS = 3.0 + RUN_SECONDS[1]
ENDINGS = ((Status.COMPLETED, 0.95), (Status.FAILED, 0.04), (Status.CANCELLED, 0.01))


@dataclass(frozen=True)
class FleetConfig:
    mode: str  # direct, pgbouncer, supabase
    k: int
    rate: float  # events per second, the whole fleet
    warmup: float
    window: float
    idle: float
    url: str  # a PostgreSQL URL (direct or through the pooler) or the Supabase URL
    service_key: str | None
    owners: list[tuple[str, str]]
    flush_interval: float
    min_batch: int
    max_wait: float
    result_bytes: int
    out: str
    tag: str  # every job id of the run starts with it
    seed: int = 0

    @property
    def source_end(self) -> float:
        """Seconds after t0 when the source stops making jobs."""
        return self.warmup + self.window

    @property
    def idle_start(self) -> float:
        """Seconds after t0 by which every job has ended and been flushed."""
        return self.source_end + JOB_TAIL_SECONDS + 1.0


class TimedStore:
    """The real store, and a record of the calls that returned within a window of wall time."""

    def __init__(self, store: StatusStore, windows: dict[str, tuple[float, float]]) -> None:
        self.store = store
        self.windows = windows
        self.calls: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.lags_ms: Counter[int] = Counter()
        self.call_ms: Counter[int] = Counter()
        self.last_call = 0.0

    def prepare(self) -> None:
        warm_up = getattr(self.store, "prepare", None)
        if warm_up is not None:
            warm_up()

    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        started = time.perf_counter()
        outcomes = self.store.apply(events)
        took = time.perf_counter() - started
        now = self.last_call = time.time()
        for name, (start, end) in self.windows.items():
            if start <= now < end:
                self.calls[name] += 1
                self.events[name] += len(events)
                if name == "window":
                    self.call_ms[int(took * 1000)] += 1
                    for event in events:
                        self.lags_ms[max(0, int((now - event.event_at) * 1000))] += 1
        return outcomes

    def close(self) -> None:
        self.store.close()


def _store(config: FleetConfig) -> StatusStore:
    if config.mode == "supabase":
        from middleware.stores.supabase import SupabaseStatusStore

        assert config.service_key is not None
        return SupabaseStatusStore(config.url, config.service_key)
    from middleware.stores.postgres import PostgresStatusStore

    return PostgresStatusStore(config.url)


class JobSource:
    """Plays jobs into ``writer`` at ``rate`` events per second (see the module docstring)."""

    def __init__(self, writer: StatusWriter, config: FleetConfig, index: int) -> None:
        self.writer = writer
        self.config = config
        self.random = random.Random(config.seed * 100_003 + index)
        self.jobs_per_second = config.rate / config.k / EVENTS_PER_JOB
        self.owners = [Owner(t, u) for t, u in config.owners]
        self.result = {"course": "x" * max(0, config.result_bytes - 20)}
        self.made: Counter[str] = Counter()  # events made, by kind
        self.made_window = 0  # events made within the measured window
        self.window = (0.0, 0.0)
        self.ended: Counter[str] = Counter()  # jobs, by final status
        self.prefix = f"{config.tag}-{index}-{uuid.uuid4().hex[:6]}"
        self._seq = 0

    def run(self, t0: float) -> None:
        """Until ``source_end``: new jobs; then until every job has ended."""
        end = t0 + self.config.source_end
        self.window = (t0 + self.config.warmup, end)
        queue: list[tuple[float, int, Callable[[], None]]] = []
        self._at(queue, t0 + self.random.expovariate(self.jobs_per_second), lambda: self._arrive(queue, end))
        while queue:
            due, _seq, action = queue[0]
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            heapq.heappop(queue)
            action()

    def _at(
        self, queue: list[tuple[float, int, Callable[[], None]]], when: float, action: Callable[[], None]
    ) -> None:
        self._seq += 1
        heapq.heappush(queue, (when, self._seq, action))

    def _arrive(self, queue: list[tuple[float, int, Callable[[], None]]], end: float) -> None:
        now = time.time()
        following = now + self.random.expovariate(self.jobs_per_second)
        if following < end:
            self._at(queue, following, lambda: self._arrive(queue, end))
        owner = self.owners[self._seq % len(self.owners)]
        identity = make_identity(f"{self.prefix}-{self._seq}", owner, "generate_course", "default", now)
        self.writer.submit(StatusEvent.of(identity, Status.PENDING, 0, event_time()))
        self._made("pending")
        start = now + min(self.random.expovariate(1 / QUEUE_WAIT_MEAN), 3.0)
        run = self.random.uniform(*RUN_SECONDS)
        self._at(queue, start, lambda: self._start(identity))
        for share, percent in ((1 / 3, 33), (2 / 3, 66)):
            self._at(queue, start + share * run, lambda p=percent: self._progress(identity, start, p))
        self._at(queue, start + run, lambda: self._end(identity, start))

    def _made(self, kind: str) -> None:
        self.made[kind] += 1
        if self.window[0] <= time.time() < self.window[1]:
            self.made_window += 1

    def _start(self, identity: Any) -> None:
        self.writer.started((identity, 1, event_time()))
        self._made("active")

    def _progress(self, identity: Any, started_at: float, percent: int) -> None:
        self.writer.submit(
            StatusEvent.of(
                identity,
                Status.ACTIVE,
                1,
                event_time(),
                started_at=started_at,
                progress=percent,
                progress_message=f"stage {percent // 33} of 3",
            )
        )
        self._made("progress")

    def _end(self, identity: Any, started_at: float) -> None:
        pick, status = self.random.random(), Status.COMPLETED
        for status, share in ENDINGS:  # noqa: B007 - the last one is the fallback
            if pick < share:
                break
            pick -= share
        fields: dict[str, Any] = {"started_at": started_at}
        if status is Status.COMPLETED:
            fields["result"] = self.result
        elif status is Status.FAILED:
            fields.update(error_type="ValueError", error_message="the material is too thin to make a course")
        else:
            fields["progress"] = 66
        self.writer.submit(StatusEvent.of(identity, status, 1, event_time(), **fields))
        self._made(status.value)
        self.ended[status.value] += 1


def child(config: FleetConfig, index: int, ready: Any, go: Any, start_at: Any) -> None:
    registry = CollectorRegistry()
    metrics = SyncMetrics(registry)
    store_box: list[TimedStore] = []
    windows: dict[str, tuple[float, float]] = {}

    def factory() -> StatusStore:
        store = TimedStore(_store(config), windows)
        store_box.append(store)
        return store

    writer = StatusWriter(
        factory,
        flush_interval=config.flush_interval,
        min_batch=config.min_batch,
        max_wait=config.max_wait,
        metrics=lambda: metrics,
    )
    writer.prepare()  # as a worker at boot: the store built, its pool opening
    writer.start()
    ready.release()
    go.wait()
    t0 = start_at.value
    windows["window"] = (t0 + config.warmup, t0 + config.source_end)
    windows["idle"] = (t0 + config.idle_start + 1.0, t0 + config.idle_start + config.idle)
    source = JobSource(writer, config, index)
    source.run(t0)
    flushed = writer.flush(timeout=60)
    idle_end = t0 + config.idle_start + config.idle
    if time.time() < idle_end:
        time.sleep(idle_end - time.time())
    closed = writer.close(timeout=60)
    store = store_box[-1] if store_box else None
    failures = {
        sample.labels["reason"]: sample.value
        for metric in registry.collect()
        if metric.name == "job_status_sync_failures"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }
    result = {
        "index": index,
        "pid": os.getpid(),
        "made": dict(source.made),
        "made_window": source.made_window,
        "ended": dict(source.ended),
        "flushed": flushed,
        "closed": closed,
        "late_flush": store is not None and store.last_call > t0 + config.idle_start,
        "calls": dict(store.calls) if store else {},
        "events": dict(store.events) if store else {},
        "lags_ms": dict(store.lags_ms) if store else {},
        "call_ms": dict(store.call_ms) if store else {},
        "failures": failures,
    }
    Path(config.out, f"child-{index}.json").write_text(json.dumps(result))


def main(argv: list[str]) -> int:
    config = FleetConfig(**json.loads(Path(argv[0]).read_text()))
    # the children build their stores: what those import is imported once, before the fork
    modules = ("supabase", "middleware.stores.supabase") if config.mode == "supabase" else ("psycopg_pool",)
    for module in (*modules, "middleware.stores.postgres"):
        importlib.import_module(module)
    context = multiprocessing.get_context("fork")
    ready, go, start_at = context.Semaphore(0), context.Event(), context.Value("d", 0.0)
    processes = [
        context.Process(target=child, args=(config, i, ready, go, start_at), daemon=False)
        for i in range(config.k)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        if not ready.acquire(timeout=120):
            for process in processes:
                process.kill()
            print("error: the writers did not get ready in 120 s", flush=True)
            return 1
    start_at.value = time.time() + 0.5
    go.set()
    print(f"go {start_at.value:.6f} {' '.join(str(p.pid) for p in processes)}", flush=True)
    failed = 0
    for process in processes:
        process.join()
        failed += process.exitcode != 0
    print(f"done {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
