"""The fuzz suite: hostile actors beside ordinary jobs, and a poisoned outbox during an outage.

Real processes only: the `dramatiq coursegen.actors tests.support.hostile_actors` CLI on real
Redis and PostgreSQL, writing through each store (PostgreSQL directly, and Supabase's REST API:
the PostgREST stand-in served over HTTP from this process). The hostile actors
(tests/support/hostile_actors.py) return, raise and report what no job should: hostile keys and
texts at any depth, NaN, cycles, 10^5-deep nesting, huge results, ints Python will not print,
types JSON has no word for, objects and exceptions whose ``__str__`` raises or lies, BaseExceptions,
recursion, hostile progress. Asserted for every run:

* every hostile job ends terminal (never pending, active or retrying) with a row that says what
  happened (the shape's own expectation in :data:`EXPECTED`);
* the ordinary jobs beside them finish about as fast as in a control run without them, in the
  same test (see :func:`check_not_held_up`);
* no event is lost: the worker exports ``job_status_sync_lost_events_total`` and it stays 0, and
  nothing the worker logs says "lost";
* data never degrades the writer: no ``sync_spill`` record, ``failures{reason="spilled"}`` 0,
  nothing rejected, no hook failure, no dead letter;
* the worker process (and its child) never crashes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis

from coursegen.embedded import LocalPostgres
from coursegen.migrate import migrate
from middleware.events import MAX_ERROR_CHARS, Status, StatusEvent
from middleware.outbox import DEFAULT_KEY
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.hostile_shapes import SHAPES
from tests.support.postgrest import PostgrestStandIn, serve, service_key
from tests.support.processes import BIN, Worker, app_env, dramatiq_worker, free_port, send_mixed
from tests.support.scrape import Scrape, scrape
from tests.support.stores import STORE_KINDS

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

COURSE = "coursegen.actors:generate_course"
HOSTILE = "tests.support.hostile_actors:hostile"
OVERSTAY = "tests.support.hostile_actors:overstay"
MODULES = ("tests.support.hostile_actors",)
TERMINAL = frozenset({"completed", "failed", "cancelled", "skipped"})
ORDINARY_JOBS = 24
TEXT = (
    "Rivers carve valleys over thousands of years. Water picks up sand and gravel, grinds the "
    "riverbed, and drops the load where the current slows, building deltas and flood plains. " * 4
)
REPLACEMENT = "\ufffd"


# -- what each shape's row must say ------------------------------------------------------------------


def _completed(check: Callable[[Any], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["status"] == "completed" and check(row["result"])


def _failed(error_type: str, check: Callable[[str], bool] = bool) -> Callable[[dict[str, Any]], bool]:
    return lambda row: (
        row["status"] == "failed" and row["error_type"] == error_type and check(row["error_message"] or "")
    )


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list | dict) and value:
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        depth += 1
    return depth


def _cut(value: Any) -> bool:
    """A nested value cut at the depth the store keeps, saying so."""
    return 60 <= _depth(value) <= 70 and "<cut: nested deeper than" in json.dumps(value)


def _hostile_keys_cleaned(value: Any) -> bool:
    """hostile_shapes._deep_keys, every key cleaned at every depth and nothing else changed."""
    node = value[f"top{REPLACEMENT}"]
    for depth in range(49, -1, -1):
        if node[f"k{REPLACEMENT}{depth}" if depth in (9, 40) else "plain"] != depth:
            return False
        node = node[f"level{depth}"]
    r = REPLACEMENT
    return node == {f"nul{r}key": 1, r: 2, "ok": [{r: {f"{r}{r}x": 3}}]}


def _summary(value: Any) -> bool:
    return isinstance(value, dict) and value.get("_truncated") is True


def _capped(message: str) -> bool:
    return len(message) <= MAX_ERROR_CHARS and message.endswith("[truncated]")


def _done(value: Any) -> bool:
    return value == "done"


#: shape -> a check of its row (every shape of hostile_actors.SHAPES has one)
EXPECTED: dict[str, Callable[[dict[str, Any]], bool]] = {
    "key_nul": _completed(lambda r: r == {f"a{REPLACEMENT}b": 1}),
    "key_surrogate": _completed(lambda r: r == {REPLACEMENT: 1, "ok": 2}),
    "keys_hostile_at_depth": _completed(_hostile_keys_cleaned),
    "key_objects": _completed(lambda r: "<unstorable Unprintable>" in r and any("<int of" in k for k in r)),
    "values_nul_surrogate": _completed(
        lambda r: r == {"v": f"a{REPLACEMENT}b{REPLACEMENT}c", "list": [REPLACEMENT, REPLACEMENT, "fine"]}
    ),
    "text_result_nul_surrogate": _completed(lambda r: r == f"top{REPLACEMENT}level{REPLACEMENT}"),
    "nan_inf_nested": _completed(lambda r: r == {"a": [None, {"b": None, "c": [None, 1.5]}]}),
    "nan_alone": _completed(lambda r: r is None),
    "int_beyond_4300_digits": _completed(
        lambda r: r["n"].startswith("<int of") and r["list"][0].startswith("<int of")
    ),
    "deep_list_1e5": _completed(_cut),
    "deep_dict_1e5": _completed(_cut),
    "cycle_narrow": _completed(lambda r: _cut(r["loop"])),
    "cycle_wide": _completed(_summary),
    "huge_text_result": _completed(lambda r: _summary(r) and r["size_bytes"] > 3_000_000),
    "huge_dict_result": _completed(lambda r: _summary(r) and r["size_bytes"] > 10_000_000),
    "set_result": _completed(lambda r: sorted(r) == [1, 2, 3]),
    "frozenset_result": _completed(lambda r: sorted(r) == ["a", "b"]),
    "tuple_result": _completed(lambda r: r == [1, "two", None, [3.0]]),
    "generator_result": _completed(lambda r: r == "<unstorable generator>"),
    "object_result": _completed(lambda r: r == "<unstorable object>"),
    "bytes_result": _completed(lambda r: r == "<unstorable bytes>"),
    "bytearray_result": _completed(lambda r: r == "<unstorable bytearray>"),
    "decimal_result": _completed(lambda r: r == "<unstorable Decimal>"),
    "datetime_result": _completed(lambda r: r == {"at": "<unstorable datetime>", "day": "<unstorable date>"}),
    "unprintable_result": _completed(lambda r: r == "<unstorable Unprintable>"),
    "unprintable_hard_result": _completed(lambda r: r == {"inner": ["<unstorable UnprintableHard>"]}),
    "items_raise_result": _completed(lambda r: r.get("_unstorable") is True),
    "items_raise_hard_result": _completed(lambda r: "_unstorable" in json.dumps(r)),
    "iter_raise_result": _completed(lambda r: "_unstorable" in json.dumps(r) or r == {"inner": [1, 2]}),
    "exc_str_raises": _failed("StrRaises", lambda m: "unprintable" in m),
    "exc_str_raises_hard": _failed("StrRaisesHard", lambda m: "unprintable" in m),
    "exc_str_not_str": _failed("StrNotStr", lambda m: "unprintable" in m),
    "exc_str_sneaky_subclass": _failed("StrSneaky", lambda m: m == "sneaky text"),
    "exc_str_10mb": _failed("StrHuge", _capped),
    "exc_nul_surrogate": _failed(
        "ValueError", lambda m: "bad" in m and "half" in m and not re.search("[\x00\ud800-\udfff]", m)
    ),
    "exc_args_1e6": _failed("ValueError", lambda m: m.startswith("(0, 1, 2") and _capped(m)),
    "exc_arg_tuple_1e6": _failed("ValueError", lambda m: m.startswith("((0, 1, 2") or _capped(m)),
    "exc_args_odd": _failed("ValueError", lambda m: "unprintable" in m),
    # a metaclass may make __name__ anything: the row names the class as it was created
    "exc_class_name_nul": _failed("NulNamed", lambda m: m == "named badly"),
    "exc_class_name_not_str": _failed("NonStrNamed", lambda m: m == "named badly"),
    "exc_class_name_raises": _failed("RaisingNamed", lambda m: m == "named badly"),
    "base_exception": _failed("HostileBase", lambda m: m == "not an Exception"),
    "system_exit": _failed("SystemExit", lambda m: m == "3"),
    "keyboard_interrupt": _failed("KeyboardInterrupt", lambda m: True),
    "recursion": _failed("RecursionError", lambda m: "recursion" in m),
    "raise_after_progress": _failed("ValueError", lambda m: m == "failed after progress"),
    "progress_nul": _completed(_done),
    "progress_surrogate": _completed(_done),
    "progress_1mb": _completed(_done),
    "progress_unprintable": _completed(_done),
    "progress_nan": _completed(_done),
    "progress_inf": _completed(_done),
    "progress_googol": _completed(_done),
    "progress_text_percent": _completed(_done),
}
#: the time-limited actor: Dramatiq raises TimeLimitExceeded (a BaseException) inside it
OVERSTAY_EXPECTED = _failed("TimeLimitExceeded", lambda m: True)


# -- the stack ------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One store under test: its kind, the database and Redis, the worker's environment, an owner."""

    kind: str
    db: str
    redis: str
    env: dict[str, str]
    owner: tuple[str, str]
    stand_in: PostgrestStandIn | None = None

    def payload(self, **fields: Any) -> dict[str, Any]:
        return {"tenant_id": self.owner[0], "user_id": self.owner[1], **fields}


@pytest.fixture(params=STORE_KINDS)
def stack(request: pytest.FixtureRequest, database_url: str, redis_url: str) -> Iterator[Stack]:
    """A fresh database and Redis, and the worker's environment for the store ``kind``."""
    owner = create_owner(database_url)
    if request.param == "postgres":
        env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
        yield Stack("postgres", database_url, redis_url, env, owner)
        return
    stand_in = PostgrestStandIn(database_url)
    try:
        with serve(stand_in) as url:
            env = app_env(REDIS_URL=redis_url, SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=service_key())
            yield Stack("supabase", database_url, redis_url, env, owner, stand_in)
    finally:
        stand_in.close()


def statuses(url: str, ids: list[str]) -> dict[str, tuple[str, float | None]]:
    """Each job's status and enqueued_at (epoch seconds), for the jobs that have a row."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select job_id, status::text, extract(epoch from enqueued_at)::float8 from public.job_status"
            " where job_id = any(%s)",
            (ids,),
        ).fetchall()
    return {job_id: (status, enqueued_at) for job_id, status, enqueued_at in rows}


@dataclass(frozen=True)
class Timing:
    """When a job was sent (its row's enqueued_at) and when its row was first seen terminal."""

    enqueued_at: float
    terminal_at: float

    @property
    def seconds(self) -> float:
        return self.terminal_at - self.enqueued_at


def wait_terminal(url: str, ids: list[str], *, timeout: float, what: str) -> dict[str, Timing]:
    """Wait until every job's row is terminal (polled every 0.1 s); when each got there."""
    seen: dict[str, Timing] = {}

    def all_terminal() -> bool:
        now = time.time()
        for job_id, (status, enqueued_at) in statuses(url, [i for i in ids if i not in seen]).items():
            if status in TERMINAL:
                seen[job_id] = Timing(enqueued_at or now, now)
        return len(seen) == len(ids)

    try:
        wait_for(all_terminal, timeout=timeout, what=what)
    except AssertionError:
        stuck = {
            job_id: status
            for job_id, (status, _at) in statuses(url, [i for i in ids if i not in seen]).items()
        }
        missing = len(ids) - len(seen) - len(stuck)
        raise AssertionError(f"{what}: not terminal: {stuck}; {missing} without a row") from None
    return seen


def span(timings: list[Timing]) -> float:
    """Seconds from the first job's enqueue to the last job's terminal row."""
    return max(t.terminal_at for t in timings) - min(t.enqueued_at for t in timings)


def worker_processes(worker: Worker) -> set[tuple[int, float]]:
    """The dramatiq CLI's children (the worker process, the metrics server), by pid and start."""
    return {(p.pid, p.create_time()) for p in psutil.Process(worker.process.pid).children()}


def records(path: Path) -> list[dict[str, Any]]:
    """The worker's log records (see hostile_actors: FUZZ_LOG_RECORDS); some there must be."""
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert found, "the worker's records were kept"
    return found


def settled_metrics(port: int, jobs: int) -> Scrape:
    """The endpoint once every job's terminal event was counted and the writer is idle."""

    def settled() -> Scrape | None:
        s = scrape(port)
        if s is None:
            return None
        terminal = sum(s.value("job_status_sync_events_total", status=status) for status in TERMINAL)
        idle = s.value("job_status_sync_queue_depth") == 0 and s.value("job_status_sync_outbox_depth") == 0
        return s if terminal >= jobs and idle else None

    return wait_for(settled, timeout=60, interval=0.25, what="the metrics endpoint to settle")


def lost_lines(log: str) -> list[str]:
    """Lines of a worker's log that say "lost"."""
    return [line[:300] for line in log.splitlines() if re.search(r"(?i)\blost\b", line)]


def check_no_loss_no_degradation(metrics: Scrape, log: str, log_records: list[dict[str, Any]]) -> None:
    """0 events lost, and data never degraded the writer (see the module docstring)."""
    assert metrics.has("job_status_sync_lost_events_total"), "the lost-events counter is exported"
    assert metrics.value("job_status_sync_lost_events_total") == 0
    assert not lost_lines(log)
    actions = {r["action"] for r in log_records}
    assert not actions & {"sync_spill", "sync_lost", "sync_hook_error", "sync_error", "sync_rejected"}, (
        actions
    )
    for reason in ("spilled", "rejected", "replaced", "hook", "error"):
        assert metrics.value("job_status_sync_failures_total", reason=reason) == 0, reason
    assert metrics.value("job_status_sync_dead_letters_total") == 0
    assert "Unexpected failure in after_" not in log, "a middleware hook raised"
    assert "Exception in thread" not in log, "a worker thread died"


# -- hostile actors beside ordinary jobs ---------------------------------------------------------------


def check_not_held_up(control: list[Timing], beside: list[Timing]) -> None:
    """The ordinary jobs beside the hostile ones finished no later than the control run allows.

    Compared: the span from the first ordinary job's enqueue to the last one's terminal row.
    Bound: 3x the control's span plus 15 s. The hostile jobs share the worker's four threads and
    this machine's two cores with the ordinary ones, and some are seconds of honest CPU (a 10 MB
    exception text logged by Dramatiq, a tuple of a million numbers printed, 10^5-deep nesting
    walked, 11 MB of result encoded): that much delay is the hostile jobs' own work, not the
    status sync's. A writer stalled by bad data (the review saw 90 s against 7 s for the good
    rows) is far beyond it.
    """
    alone, together = span(control), span(beside)
    assert together <= 3 * alone + 15, (
        f"ordinary jobs took {together:.1f}s beside the hostile ones, {alone:.1f}s alone"
    )


def test_hostile_actors_beside_ordinary_jobs(stack: Stack, tmp_path: Path) -> None:
    record_file = tmp_path / "records.jsonl"
    port = free_port()
    env = {**stack.env, "FUZZ_LOG_RECORDS": str(record_file), "dramatiq_prom_port": str(port)}
    ordinary = [
        (COURSE, stack.payload(title=f"Rivers {i}", sources=[{"text": TEXT}])) for i in range(ORDINARY_JOBS)
    ]
    hostile = [(HOSTILE, stack.payload(shape=shape)) for shape in SHAPES] + [(OVERSTAY, stack.payload())]
    assert set(EXPECTED) == set(SHAPES), "every shape has an expectation"
    assert len(hostile) >= 25

    with dramatiq_worker(env, tmp_path / "worker.log", threads=4, modules=MODULES) as worker:
        wait_for(lambda: scrape(port), timeout=60, what="the metrics endpoint")
        processes = worker_processes(worker)
        assert len(processes) == 2, "a worker process and the metrics server"
        # warm-up: the worker's first jobs pay for imports and connections, in neither run
        warm = [item["job_id"] for item in send_mixed(stack.env, ordinary[:2])]
        wait_terminal(stack.db, warm, timeout=60, what="the warm-up jobs")

        control_ids = [item["job_id"] for item in send_mixed(stack.env, ordinary)]
        control = wait_terminal(stack.db, control_ids, timeout=60, what="the control run")

        # the same ordinary jobs again, interleaved with the hostile ones in one producer
        mixed = interleaved(hostile, ordinary)
        sent = send_mixed(stack.env, mixed)
        assert all("job_id" in item for item in sent), [item for item in sent if "job_id" not in item]
        kinds = [actor for actor, _payload in mixed]
        ids = [item["job_id"] for item in sent]
        beside_ids = [job_id for job_id, actor in zip(ids, kinds, strict=True) if actor == COURSE]
        hostile_ids = [job_id for job_id, actor in zip(ids, kinds, strict=True) if actor != COURSE]
        assert len(beside_ids) == ORDINARY_JOBS and len(hostile_ids) == len(hostile)
        every = wait_terminal(stack.db, ids, timeout=60, what="every job of the hostile run")

        metrics = settled_metrics(port, 2 + 2 * ORDINARY_JOBS + len(hostile))
        assert worker.process.poll() is None, "the worker never crashed"
        assert worker_processes(worker) == processes, "its processes were never replaced"
        assert worker.stop() == 0
    log = worker.log

    rows = fetch_rows(stack.db, hostile_ids + beside_ids + control_ids)
    wrong = {}
    for (actor, payload), job_id in zip(mixed, ids, strict=True):
        row = rows[job_id]
        if actor == COURSE:
            ok = row["status"] == "completed" and row["result"]["title"] == payload["title"]
            name = "ordinary"
        elif actor == OVERSTAY:
            ok, name = says(OVERSTAY_EXPECTED, row), "overstay"
        else:
            name = payload["shape"]
            ok = says(EXPECTED[name], row)
        assert row["finished_at"] is not None
        if not ok:
            wrong[name] = {k: _short(row[k]) for k in ("status", "error_type", "error_message", "result")}
    assert not wrong, f"rows that do not say what happened: {wrong}"
    assert all(rows[job_id]["status"] == "completed" for job_id in control_ids)

    beside = [every[job_id] for job_id in beside_ids]
    check_not_held_up(list(control.values()), beside)
    check_no_loss_no_degradation(metrics, log, records(record_file))
    if stack.stand_in is not None:  # every write went through the REST API, and was taken
        # (besides the writes, the fleet's cancel poller asks about once a second, and how far
        # behind retention is once a minute)
        assert {(c.path, c.status) for c in stack.stand_in.log} <= {
            ("/rest/v1/rpc/job_status_write", 200),
            ("/rest/v1/rpc/job_status_cancel_requests", 200),
            ("/rest/v1/rpc/job_status_retention_lag", 200),
        }
        assert ("/rest/v1/rpc/job_status_write", 200) in {(c.path, c.status) for c in stack.stand_in.log}

    by_shape = {
        payload.get("shape", "overstay"): every[job_id].seconds
        for (actor, payload), job_id in zip(mixed, ids, strict=True)
        if actor != COURSE
    }
    slowest = ", ".join(f"{name} {t:.1f}s" for name, t in sorted(by_shape.items(), key=lambda i: -i[1])[:3])
    print(
        f"\n[{stack.kind}] {len(hostile)} hostile jobs, time to terminal: median "
        f"{statistics.median(by_shape.values()):.2f}s, max {max(by_shape.values()):.2f}s ({slowest}); "
        f"{ORDINARY_JOBS} ordinary jobs: {span(list(control.values())):.2f}s alone, "
        f"{span(beside):.2f}s beside them; lost 0"
    )


def says(expectation: Callable[[dict[str, Any]], bool], row: dict[str, Any]) -> bool:
    """Whether ``row`` says what the expectation wants (False, not an error, when it has
    another shape altogether, e.g. no result)."""
    try:
        return bool(expectation(row))
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


def interleaved(first: list[Any], second: list[Any]) -> list[Any]:
    """Both lists in one, the items of ``second`` spread evenly among those of ``first``."""
    keyed = [(i / len(first), 0, item) for i, item in enumerate(first)]
    keyed += [((j + 0.5) / len(second), 1, item) for j, item in enumerate(second)]
    return [item for *_key, item in sorted(keyed, key=lambda k: k[:2])]


def _short(value: Any) -> Any:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:200] + "..."


# -- a poisoned outbox during an outage ----------------------------------------------------------------


def poison(owner: tuple[str, str]) -> list[tuple[bytes, str]]:
    """Outbox entries that can never be written, each with the start of the reason it must be
    dead-lettered for."""
    event = StatusEvent(
        str(uuid.uuid4()), Status.PENDING, 0, owner, "generate_course", "course-generation", time.time()
    )
    good = json.loads(event.to_json())

    def entry(**changes: Any) -> bytes:
        return json.dumps({**good, "job_id": str(uuid.uuid4()), **changes}).encode()

    return [
        (b"not JSON at all", "not_json"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json: nested too deep"),  # json.loads: RecursionError
        (b"\xff\xfe not UTF-8", "not_json"),
        (b"[1, 2, 3]", "not_an_event"),
        (entry(job_id=12345), "invalid: job_id"),
        (entry(tenant_id="not-a-uuid"), "invalid: tenant_id"),
        (entry().replace(b'"event_at":', b'"event_at": -Infinity, "was":'), "invalid: event_at"),
        (entry(status="exploded"), "invalid: status"),
        (entry(result="r" * (5 * 1024 * 1024)), "too_large"),
        (entry(tenant_id=str(uuid.uuid4())), "rejected: unknown_tenant"),  # a tenant nobody has
    ]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_poisoned_outbox_during_an_outage_holds_up_no_good_entry(
    own_postgres: LocalPostgres, redis_url: str, tmp_path: Path, kind: str
) -> None:
    """PostgreSQL stops for ~10 s while jobs run; entries that can never be written are pushed
    into the outbox among the spilled ones. After the restart every job converges quickly and
    each bad entry is in the dead letters with its reason (`coursegen outbox list --json`)."""
    url = own_postgres.url()
    migrate(url)
    owner = create_owner(url)
    outbox = redis.Redis.from_url(redis_url)
    with contextlib.ExitStack() as stack:
        if kind == "postgres":
            worker_env = app_env(REDIS_URL=redis_url, DATABASE_URL=url)
        else:
            stand_in = PostgrestStandIn(url)
            stack.callback(stand_in.close)
            rest = stack.enter_context(serve(stand_in))
            worker_env = app_env(
                REDIS_URL=redis_url, SUPABASE_URL=rest, SUPABASE_SERVICE_ROLE_KEY=service_key()
            )
        port = free_port()
        worker_env.update(
            COURSEGEN_RETRY_ATTEMPTS="3",
            COURSEGEN_RETRY_SECONDS="0.5",
            COURSEGEN_STORE_TIMEOUT="1",
            dramatiq_prom_port=str(port),
        )
        producer_env = app_env(REDIS_URL=redis_url)  # `pending` through the outbox, as producers do
        course = [(COURSE, {"tenant_id": owner[0], "user_id": owner[1], "sources": [{"text": TEXT}]})]
        bad = poison(owner)
        worker = stack.enter_context(dramatiq_worker(worker_env, tmp_path / "worker.log", threads=4))

        before = [item["job_id"] for item in send_mixed(producer_env, course * 40)]
        wait_terminal(url, before, timeout=60, what="the jobs before the outage")

        own_postgres.stop()
        stopped = time.monotonic()
        during = [item["job_id"] for item in send_mixed(producer_env, course * 40)]
        wait_for(lambda: "spilling" in worker.log, timeout=30, what="the worker to spill to the outbox")
        # among what waits: good entries ahead of the bad ones and behind them
        ahead_of_poison = [item["job_id"] for item in send_mixed(producer_env, course * 10)]
        for raw, _reason in bad:
            outbox.rpush(DEFAULT_KEY, raw)
        behind_poison = [item["job_id"] for item in send_mixed(producer_env, course * 10)]
        assert outbox.llen(DEFAULT_KEY) > len(bad)
        # the outage lasts ~10 s, however fast the above went (its length is the scenario)
        time.sleep(max(0.0, stopped + 10 - time.monotonic()))
        own_postgres.start()
        restarted = time.time()

        # Every job converges within 30 s of the restart: without the poison it takes a few
        # seconds; entries that held up good ones made it 90 s in the review that found them.
        every = before + during + ahead_of_poison + behind_poison
        converged = wait_terminal(url, every, timeout=30, what="every job after the restart")
        wait_for(lambda: outbox.llen(DEFAULT_KEY) == 0, timeout=30, what="the outbox to drain")
        metrics = wait_for(
            lambda: (s := scrape(port)) and s.value("job_status_sync_dead_letters_total") >= len(bad) and s,
            timeout=30,
            what="every dead letter to be counted",
        )
        assert worker.process.poll() is None, "the worker never crashed"
        assert worker.stop() == 0

    rows = fetch_rows(url, every)
    assert {row["status"] for row in rows.values()} == {"completed"}
    listed = subprocess.run(
        [str(BIN / "coursegen"), "outbox", "list", "--json", "--all"],
        env=app_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(letters) == len(bad), [letter["reason"] for letter in letters]
    for raw, reason in bad:  # each bad entry, with its reason
        text = raw.decode("utf-8", "replace")
        [letter] = [letter for letter in letters if letter["entry"] == text[: len(letter["entry"])]]
        assert letter["reason"].startswith(reason), (reason, letter["reason"])
    by_reason = collections.Counter(reason.split(":", 1)[0] for _raw, reason in bad)
    for reason, count in by_reason.items():
        assert metrics.value("job_status_sync_dead_letters_total", reason=reason) == count, reason
    assert metrics.value("job_status_sync_lost_events_total") == 0
    assert not lost_lines(worker.log)

    after_restart = max(t.terminal_at for t in converged.values()) - restarted
    print(
        f"\n[{kind}] poisoned outbox, ~10 s outage: every job terminal {after_restart:.2f}s after the "
        f"restart; {len(bad)} dead letters; lost 0"
    )
