"""The bad input catalogue: every bad input ends in a clear error at send() where it can, else in a
`failed` (or honestly summarized) row with a readable message; never a crashed worker, never a lost
or stuck row. Real producer processes, a real `dramatiq` worker, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from middleware.events import MAX_ERROR_CHARS
from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.processes import Worker, app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

TEXT = "Bees carry pollen from flower to flower, and so the plants they visit can make seeds. " * 8
MISBEHAVE = "tests.support.fault_actors:misbehave"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def queued(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    return sum(client.hlen(key) for key in client.scan_iter("dramatiq:*.msgs"))


@pytest.fixture
def stack(database_url: str, redis_url: str) -> dict[str, Any]:
    owner = create_owner(database_url)
    env = app_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    return {"owner": owner, "env": env, "db": database_url, "redis": redis_url}


@pytest.fixture
def worker(stack: dict[str, Any], tmp_path: Path) -> Iterator[Worker]:
    with dramatiq_worker(stack["env"], tmp_path / "worker.log", modules=("tests.support.fault_actors",)) as w:
        yield w
        assert w.process.poll() is None, "the worker survived every bad input"


def course(owner: tuple[str, str], **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"tenant_id": owner[0], "user_id": owner[1], "sources": [{"text": TEXT}]}
    payload.update(changes)
    return payload


def refused(stack: dict[str, Any], payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Send one job that must be refused at send(): nothing queued, no row."""
    result = send_jobs(stack["env"], [payload], **kwargs)[0]
    assert "error" in result, f"sent instead of refused: {result}"
    assert queued(stack["redis"]) == 0
    assert fetch_rows(stack["db"]) == {}
    return result


def finished_row(stack: dict[str, Any], kind: str, **extra: Any) -> dict[str, Any]:
    owner = stack["owner"]
    job_id = send_jobs(stack["env"], [{"tenant_id": owner[0], "user_id": owner[1], "kind": kind, **extra}],
                       actor=MISBEHAVE)[0]["job_id"]  # fmt: skip

    def done() -> dict[str, Any] | None:
        row = fetch_rows(stack["db"], [job_id]).get(job_id)
        return row if row and row["status"] in ("completed", "failed") else None

    return wait_for(done, timeout=60, what=f"the {kind} job to finish")


def test_payload_not_json_serializable_is_refused_at_send(stack: dict[str, Any]) -> None:
    owner = stack["owner"]
    result = refused(stack, {"tenant_id": owner[0], "user_id": owner[1], "kind": "ok"},
                     actor=MISBEHAVE, unserializable=True)  # fmt: skip
    assert result["error"] == "TypeError" and "not JSON serializable" in result["message"]


def test_wrong_types_are_refused_at_send_with_the_validation_errors(stack: dict[str, Any]) -> None:
    result = refused(stack, course(stack["owner"], sources="just a string", modules="three"))
    assert result["error"] == "InvalidPayloadError"
    assert "sources" in result["message"] and "modules" in result["message"]


def test_missing_owner_is_refused_at_send(stack: dict[str, Any]) -> None:
    result = refused(stack, {"sources": [{"text": TEXT}]})
    assert result["error"] == "InvalidOwnerError" and "tenant_id" in result["message"]


def test_unknown_tenant_or_user_is_refused_by_submit(stack: dict[str, Any]) -> None:
    owner = stack["owner"]
    script = """
import json, sys
from coursegen import jobs
out = []
for request in json.load(sys.stdin):
    try:
        out.append({"job_id": jobs.submit(request)})
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps(out))
"""
    stranger, nobody = str(uuid.uuid4()), str(uuid.uuid4())
    requests = [course((stranger, owner[1])), course((owner[0], nobody))]
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(requests), env=stack["env"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r.get("error") for r in results] == ["UnknownOwnerError", "UnknownOwnerError"]
    assert f"no tenant {stranger}" in results[0]["message"] and f"no user {nobody}" in results[1]["message"]
    assert queued(stack["redis"]) == 0


def test_a_source_over_the_size_limit_is_refused_at_send(stack: dict[str, Any]) -> None:
    result = refused(stack, course(stack["owner"], sources=[{"text": "word " * 500_000}]))
    assert result["error"] == "InvalidPayloadError" and "2 MiB" in result["message"]


def test_text_that_is_not_utf8_is_refused_at_send(stack: dict[str, Any]) -> None:
    # what a file read with errors="surrogateescape" holds when it is not UTF-8
    latin1 = b"Caf\xe9 au lait ".decode("utf-8", "surrogateescape") * 20
    result = refused(stack, course(stack["owner"], sources=[{"text": TEXT + latin1}]))
    assert result["error"] == "InvalidPayloadError"
    assert "sources.0.text" in result["message"] and "unicode" in result["message"].lower()


def test_a_result_over_the_cap_is_stored_as_a_summary(stack: dict[str, Any], worker: Worker) -> None:
    row = finished_row(stack, "huge_result")
    assert row["status"] == "completed"
    assert row["result"]["_truncated"] is True and row["result"]["size_bytes"] > 2_000_000


def test_nan_or_infinity_in_a_result_is_stored_as_null(stack: dict[str, Any], worker: Worker) -> None:
    row = finished_row(stack, "nan_result")
    assert row["status"] == "completed"
    assert row["result"] == {"score": None, "ceiling": None}


def test_a_one_megabyte_exception_message_is_capped(stack: dict[str, Any], worker: Worker) -> None:
    row = finished_row(stack, "huge_error")
    assert (row["status"], row["error_type"]) == ("failed", "ValueError")
    assert len(row["error_message"]) <= MAX_ERROR_CHARS and row["error_message"].endswith("[truncated]")


def test_secrets_in_exception_text_never_reach_the_row(stack: dict[str, Any], worker: Worker) -> None:
    text = f"cannot reach postgresql://app:hunter2@db.internal/app with key {JWT}"
    row = finished_row(stack, "secret_error", text=text)
    assert row["status"] == "failed"
    assert "hunter2" not in row["error_message"] and JWT not in row["error_message"]
    assert "[REDACTED]" in row["error_message"] and "db.internal" in row["error_message"]
