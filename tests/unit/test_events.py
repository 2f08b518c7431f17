"""StatusEvent: whatever it is given, it holds storable values and encodes; secret redaction."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.events import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_ATTEMPT,
    MAX_ERROR_CHARS,
    Owner,
    Status,
    StatusEvent,
)
from middleware.outbox import parse_entry
from middleware.redaction import clean_text, redact
from middleware.storable import MAX_DEPTH, MAX_TIME, MIN_TIME
from middleware.stores.base import WRITE_PARAMS, write_arrays

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

    def __str__(self) -> str:
        raise RuntimeError("even str fails")


@pytest.mark.parametrize(
    ("result", "stored"),
    [
        pytest.param(float("nan"), None, id="nan"),
        pytest.param({"score": float("inf"), "n": 1}, {"score": None, "n": 1}, id="nested-infinity"),
        pytest.param({"when": object()}, {"when": "<unstorable object>"}, id="object"),
        pytest.param([Opaque()], ["<unstorable Opaque>"], id="object-whose-repr-raises"),
        pytest.param({(1, 2): "tuple key"}, {"<unstorable tuple>": "tuple key"}, id="tuple-key"),
        pytest.param({1: "a", None: "b", 2.5: "c"}, {"1": "a", "null": "b", "2.5": "c"}, id="json-keys"),
        pytest.param({3, 4}, [3, 4], id="set"),
        pytest.param((1, "x"), [1, "x"], id="tuple"),
        pytest.param(10**5000, "<int of 16610 bits>", id="int-beyond-str-limit"),
        pytest.param({"a\x00b": 1, "\ud800": 2}, {"a\ufffdb": 1, "\ufffd": 2}, id="bad-keys"),
        pytest.param(["a\x00b", {"k": "\udfff!"}], ["a\ufffdb", {"k": "\ufffd!"}], id="bad-values"),
        pytest.param((x for x in "ab"), "<unstorable generator>", id="generator"),
    ],
)
def test_a_result_is_stored_with_what_json_cannot_carry_replaced(result: Any, stored: Any) -> None:
    event = completed_with(result)

    doc = decode(event.to_json())

    assert doc.get("result") == stored == event.result  # a result that sanitizes to null is absent
    assert (doc["job_id"], doc["status"], doc["attempt"]) == ("job-1", "completed", 1)


def test_a_circular_result_is_cut_at_the_depth_bound() -> None:
    loop: list[Any] = []
    loop.append(loop)

    stored = decode(completed_with(loop).to_json())["result"]

    for _ in range(MAX_DEPTH):
        assert isinstance(stored, list) and len(stored) == 1
        stored = stored[0]
    assert stored == f"<cut: nested deeper than {MAX_DEPTH}>"


def test_a_wide_circular_result_is_summarized() -> None:
    wide: list[Any] = []
    wide.extend([wide, wide])  # 2**64 paths to the depth bound

    stored = decode(completed_with(wide).to_json())["result"]

    assert stored["_truncated"] is True


def test_an_oversized_result_becomes_a_summary() -> None:
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


def test_the_result_limit_is_the_events_own() -> None:
    small = make_event("job-1", Status.COMPLETED, result="y" * 200, max_result_bytes=100)
    assert small.result["_truncated"] is True and small.result["limit_bytes"] == 100
    result = "z" * 98  # 100 bytes once quoted
    assert make_event("job-1", Status.COMPLETED, result=result, max_result_bytes=100).result == result


def test_texts_and_names_are_made_storable_when_the_event_is_built() -> None:
    event = make_event(
        "job\x00\ud800",
        Status.FAILED,
        error_type="Bad\x00Type",
        error_message="boom\x00" + "e" * 10_000,
        progress_message="\udc00half",
    )

    doc = decode(event.to_json())

    assert doc["job_id"] == "job\ufffd\ufffd"
    assert doc["error_type"] == "Bad\ufffdType"
    assert doc["error_message"].startswith("boom\ufffd") and len(doc["error_message"]) == MAX_ERROR_CHARS
    assert doc["progress_message"] == "\ufffdhalf"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"started_at": float("nan")}, {"started_at": None}, id="nan-time"),
        pytest.param({"started_at": float("-inf")}, {"started_at": None}, id="infinite-time"),
        pytest.param({"next_retry_at": 1.0}, {"next_retry_at": None}, id="time-before-2000"),
        pytest.param({"enqueued_at": 10**12}, {"enqueued_at": None}, id="milliseconds-not-seconds"),
        pytest.param({"started_at": 1_800_000_000}, {"started_at": 1_800_000_000.0}, id="int-time"),
        pytest.param({"started_at": True}, {"started_at": None}, id="bool-time"),
        pytest.param({"progress": 250}, {"progress": 100}, id="progress-over-100"),
        pytest.param({"progress": -3}, {"progress": 0}, id="negative-progress"),
        pytest.param({"progress": float("nan")}, {"progress": None}, id="nan-progress"),
        pytest.param({"attempt": True}, {"attempt": 0}, id="bool-attempt"),
        pytest.param({"attempt": 2**40}, {"attempt": MAX_ATTEMPT}, id="huge-attempt"),
    ],
)
def test_numbers_are_bounded_when_the_event_is_built(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    base: dict[str, Any] = {"attempt": 1, "event_at": 1_800_000_000.5}
    base.update(fields)
    event = make_event("job-1", Status.ACTIVE, base.pop("attempt"), **base)
    for name, value in expected.items():
        assert getattr(event, name) == value


def test_an_event_time_that_is_not_sane_becomes_now() -> None:
    before = time.time()
    event = make_event("job-1", Status.ACTIVE, event_at=float("inf"))
    assert before - 1 <= event.event_at <= time.time() + 1


def test_to_json_drops_absent_fields_and_round_trips_through_the_outbox() -> None:
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
    again, tries = parse_entry(event.to_json())
    assert again.as_dict() == event.as_dict() and tries == 0


def test_a_deeply_nested_result_is_cut_not_refused() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        child: list[Any] = []
        node.append(child)
        node = child

    doc = decode(completed_with(deep).to_json())

    assert json.dumps(doc["result"]).count("[") == MAX_DEPTH


_texts = st.text() | st.none()
_times = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40) | st.none()
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    job_id=st.text(),
    status=st.sampled_from(Status),
    attempt=st.integers(-5, 2**31) | st.booleans(),
    owner=st.tuples(st.text(), st.text()),
    names=st.tuples(st.text(), st.text()),
    event_at=st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 2**40),
    times=st.tuples(_times, _times, _times),
    progress=st.integers(-5, 200) | st.none(),
    texts=st.tuples(_texts, _texts, _texts | st.integers()),
    result=_json_values,
    limit=st.sampled_from([64, DEFAULT_MAX_RESULT_BYTES]),
)
def test_whatever_an_event_is_given_it_encodes_and_its_encodings_agree(
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
    """Whatever the hooks (or a hand-made message) hand over, the event holds storable values:
    its JSON is strict, UTF-8 without NUL, says what ``as_dict`` says, parses back through the
    outbox's model, fits ``size_bound``, and the stores' arrays (job_status_write) say the same."""
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
        max_result_bytes=limit,
    )
    text = event.to_json()
    assert "\\u0000" not in text
    built = decode(text)
    assert built == json.loads(json.dumps(event.as_dict()))
    assert event.size_bound() >= len(text)
    for value in (event.job_id, event.tenant_id, event.user_id, event.actor_name, event.queue_name):
        assert 1 <= len(value) <= 255
    for at in (event.event_at, event.enqueued_at, event.started_at, event.next_retry_at):
        assert at is None or MIN_TIME <= at <= MAX_TIME
    # what the stores send (job_status_write's arrays) is what the JSON says
    arrays = write_arrays([event])
    sent = {
        attribute: column[0]
        for (_name, attribute), column in zip(WRITE_PARAMS, arrays, strict=True)
        if column
    }
    stored = sent.pop("result_json", None)
    assert (json.loads(stored) if stored is not None else None) == built.get("result")
    assert sent == {key: value for key, value in built.items() if key != "result"}


def test_the_write_arrays_carry_a_final_status_with_its_result_and_leave_out_absent_fields() -> None:
    events = [completed_with({"modules": 3}), completed_with(None)]
    events[0].started_at = 1_800_000_000.0
    arrays = dict(zip((name for name, _attribute in WRITE_PARAMS), write_arrays(events), strict=True))
    assert arrays["job_ids"] == ["job-1", "job-1"]
    assert arrays["statuses"] == ["completed", "completed"]
    assert arrays["attempts"] == [1, 1]
    assert [json.loads(r) if r else r for r in arrays["results"]] == [{"modules": 3}, None]  # type: ignore[union-attr]
    assert arrays["started_ats"] == [1_800_000_000.0, None]
    assert arrays["event_ats"] == [1_800_000_000.25, 1_800_000_000.25]
    # a field no event has is no array at all: the function's default (null) pads it
    assert (
        arrays["progresses"] is None and arrays["error_messages"] is None and arrays["next_retry_ats"] is None
    )


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
