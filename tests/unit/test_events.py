"""StatusEvent encoding (never raises, always valid JSON) and secret redaction."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.events import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_ERROR_CHARS,
    Owner,
    Status,
    StatusEvent,
)
from middleware.redaction import clean_text, redact

from .conftest import make_event

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ"
    ".Xb0dI7Pq3mH2c9ZkQx4-_rT8uVw1sYz0aBcDeFgHiJk"
)


def completed_with(result: Any) -> StatusEvent:
    return make_event("job-1", Status.COMPLETED, 1, event_at=1_800_000_000.25, result=result)


def decode(text: str) -> dict[str, Any]:
    """Parse as strict JSON (no NaN/Infinity) and check it can travel as UTF-8."""
    text.encode("utf-8")

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    doc = json.loads(text, parse_constant=refuse)
    assert isinstance(doc, dict)
    return doc


class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("even repr fails")


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param({"score": float("inf")}, id="nested-infinity"),
        pytest.param({"when": object()}, id="object"),
        pytest.param([Opaque()], id="object-whose-repr-raises"),
        pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
        pytest.param({1, 2, 3}, id="set"),
        pytest.param(10**5000, id="int-beyond-str-limit"),
    ],
)
def test_to_json_summarizes_a_result_that_is_not_json(result: Any) -> None:
    event = completed_with(result)

    doc = decode(event.to_json())

    assert doc["result"]["_unstorable"] is True
    assert isinstance(doc["result"]["reason"], str) and doc["result"]["reason"]
    assert (doc["job_id"], doc["status"], doc["attempt"]) == ("job-1", "completed", 1)
    assert event.result is result  # the event itself is untouched


def test_to_json_summarizes_a_circular_result() -> None:
    loop: list[Any] = []
    loop.append(loop)

    doc = decode(completed_with(loop).to_json())

    assert doc["result"]["_unstorable"] is True


def test_to_json_truncates_an_oversized_result() -> None:
    result = {"lessons": ["x" * 1000] * 400}  # ~400 kB encoded
    encoded_size = len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode())

    doc = decode(completed_with(result).to_json())

    summary = doc["result"]
    assert summary["_truncated"] is True
    assert summary["size_bytes"] == encoded_size
    assert summary["limit_bytes"] == DEFAULT_MAX_RESULT_BYTES
    assert summary["preview"].startswith('{"lessons":["xxx')
    assert len(summary["preview"]) <= 500
    assert doc["status"] == "completed"


def test_to_json_honours_a_smaller_result_limit() -> None:
    doc = decode(completed_with("y" * 200).to_json(max_result_bytes=100))
    assert doc["result"]["_truncated"] is True
    assert doc["result"]["limit_bytes"] == 100


def test_to_json_keeps_a_result_just_under_the_limit() -> None:
    result = "z" * 98  # 100 bytes once quoted
    doc = decode(completed_with(result).to_json(max_result_bytes=100))
    assert doc["result"] == result


def test_to_json_cleans_nul_and_lone_surrogates() -> None:
    event = completed_with({"text": "a\x00b", "bad": "\ud800x"})
    event.error_message = "boom\x00"

    doc = decode(event.to_json())

    assert "\x00" not in json.dumps(doc)
    assert doc["result"]["text"] == "ab"
    assert doc["result"]["bad"].endswith("x") and "\ud800" not in doc["result"]["bad"]


def test_to_json_drops_absent_fields_and_round_trips() -> None:
    event = make_event(
        "job-7",
        Status.RETRYING,
        2,
        event_at=1_800_000_001.5,
        owner=Owner(str(uuid.uuid4()), str(uuid.uuid4())),
        started_at=1_800_000_000.0,
        error_type="RuntimeError",
        error_message="boom",
        next_retry_at=1_800_000_010.0,
    )
    doc = decode(event.to_json())

    assert "result" not in doc and "progress" not in doc
    again = StatusEvent.from_dict(doc)
    assert again.as_dict() == event.as_dict()


def test_to_json_summarizes_a_too_deeply_nested_result() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        child: list[Any] = []
        node.append(child)
        node = child

    doc = decode(completed_with(deep).to_json())

    assert doc["result"]["_unstorable"] is True


_texts = st.text() | st.none()
_times = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40) | st.none()
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    job_id=st.text(min_size=1),
    status=st.sampled_from(Status),
    attempt=st.integers(0, 2**31) | st.booleans(),
    owner=st.tuples(st.text(), st.text()),
    names=st.tuples(st.text(), st.text()),
    event_at=st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 2**40),
    times=st.tuples(_times, _times, _times),
    progress=st.integers(0, 100) | st.none(),
    texts=st.tuples(_texts, _texts, _texts | st.integers()),
    result=_json_values,
    limit=st.sampled_from([64, DEFAULT_MAX_RESULT_BYTES]),
)
def test_the_hand_built_encoding_says_what_the_general_one_says(
    job_id: str,
    status: Status,
    attempt: int,
    owner: tuple[str, str],
    names: tuple[str, str],
    event_at: float,
    times: tuple[Any, Any, Any],
    progress: int | None,
    texts: tuple[Any, Any, Any],
    result: Any,
    limit: int,
) -> None:
    """``to_json`` builds the usual event by hand and falls back to ``json.dumps`` of
    ``as_dict`` for anything unusual: both must give the same document, always strict JSON."""
    event = StatusEvent(
        job_id,
        status,
        attempt,
        Owner(*owner),
        *names,
        event_at,
        enqueued_at=times[0],
        started_at=times[1],
        next_retry_at=times[2],
        progress=progress,
        progress_message=texts[0],
        error_type=texts[1],
        error_message=texts[2],
        result=result,
    )
    built = decode(event.to_json(limit))
    general = decode(event._encode_general(limit))
    assert built == general
    assert set(built) >= {"job_id", "status", "attempt", "tenant_id", "user_id", "event_at"}
    # the writer sizes batches with size_bound, which encodes only events with texts of their own
    assert event.size_bound() >= len(event.to_json())
    # the update path's arrays, when it takes the event, say what the JSON says
    row = event.update_row(limit)
    if row is not None:
        assert status is not Status.PENDING
        fields = dict(zip(UPDATE_ROW_FIELDS, row, strict=True))
        text = fields.pop("result")
        assert (json.loads(text) if text is not None else None) == built.get("result")
        assert fields == {name: built.get(name) for name in UPDATE_ROW_FIELDS if name != "result"}
        for value in row:
            if isinstance(value, str):
                assert "\x00" not in value
                value.encode("utf-8")  # no lone surrogates: PostgreSQL takes it as it is


UPDATE_ROW_FIELDS = (
    "job_id", "status", "attempt", "progress", "progress_message", "result", "error_type",
    "error_message", "next_retry_at", "enqueued_at", "started_at", "event_at",
)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        pytest.param({"status": Status.PENDING}, "a pending event usually creates its row", id="pending"),
        pytest.param({"event_at": float("nan")}, "not a finite float", id="nan-time"),
        pytest.param({"started_at": 1_800_000_000}, "an int, not a float", id="int-time"),
        pytest.param({"progress_message": "a\x00b"}, "NUL", id="nul-text"),
        pytest.param({"error_message": "\ud800"}, "a lone surrogate", id="surrogate-text"),
        pytest.param({"error_type": 42}, "not a str", id="int-text"),
        pytest.param({"result": {"text": "\x00"}}, "jsonb refuses \\u0000", id="nul-in-result"),
        pytest.param({"attempt": True}, "a bool, not an int", id="bool-attempt"),
    ],
)
def test_the_update_path_leaves_unusual_events_to_job_status_apply(fields: dict[str, Any], why: str) -> None:
    base: dict[str, Any] = {"status": Status.FAILED, "attempt": 1, "event_at": 1_800_000_000.5}
    base.update(fields)
    event = make_event("job-1", base.pop("status"), base.pop("attempt"), **base)
    assert event.update_row() is None, why
    decode(event.to_json())  # job_status_apply gets it, cleaned


def test_the_update_path_takes_a_final_status_with_its_result() -> None:
    event = completed_with({"modules": 3})
    event.started_at = 1_800_000_000.0
    row = event.update_row()
    assert row is not None
    assert row[:4] == ("job-1", "completed", 1, None)
    assert json.loads(row[5]) == {"modules": 3}
    assert row[-2:] == (1_800_000_000.0, 1_800_000_000.25)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param(f"supabase said 401 for key {JWT}", JWT, id="jwt"),
        pytest.param(f"apikey={JWT}", JWT, id="jwt-in-assignment"),
        pytest.param("Authorization: Bearer abc123DEF456ghi789", "abc123DEF456ghi789", id="bearer"),
        pytest.param(
            "could not connect to postgresql://postgres:s3cr3t-Pa55@db.abc.supabase.co:5432/postgres",
            "s3cr3t-Pa55",
            id="password-in-url",
        ),
        pytest.param(
            "Error connecting to redis://:hunter2hunter2@cache:6379/0",
            "hunter2hunter2",
            id="password-only-url",
        ),
        pytest.param("login failed: password=swordfish", "swordfish", id="password-assignment"),
        pytest.param("SUPABASE_SERVICE_KEY: sb_secret_AbCdEf123456789", "AbCdEf123456789", id="sb-secret"),
    ],
)
def test_redact_removes_secrets(text: str, secret: str) -> None:
    cleaned = redact(text)

    assert secret not in cleaned
    assert "[REDACTED]" in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "Lesson 3 of 7: photosynthesis at https://example.com/courses/42 (HTTP 503)"
    assert redact(text) == text


def test_redact_keeps_the_shape_of_a_url() -> None:
    cleaned = redact("connect to postgresql://postgres:s3cret@db.example.com:5432/app failed")
    assert cleaned == "connect to postgresql://postgres:[REDACTED]@db.example.com:5432/app failed"


def test_clean_text_caps_and_redacts_error_messages() -> None:
    text = f"token={JWT} " + "e" * 10_000
    cleaned = clean_text(text, MAX_ERROR_CHARS)

    assert len(cleaned) <= MAX_ERROR_CHARS
    assert cleaned.endswith("[truncated]")
    assert JWT not in cleaned
