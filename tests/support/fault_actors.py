"""Test-only actors that misbehave on purpose, on coursegen's real broker and middleware.

Loaded by a real worker as ``dramatiq coursegen.actors tests.support.fault_actors`` (the bad
input catalogue in tests/faults/test_bad_input.py). Each payload carries an owner, as every
tracked job's must, and a ``kind`` saying how to misbehave.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from coursegen.actors import broker

QUEUE = "faults"


@dramatiq.actor(broker=broker, queue_name=QUEUE, track_status=True, max_retries=0)
def misbehave(payload: dict[str, Any]) -> Any:
    kind = payload["kind"]
    if kind == "huge_result":
        return "x" * (2 * 1024 * 1024)
    if kind == "nan_result":
        return {"score": float("nan"), "ceiling": float("inf")}
    if kind == "huge_error":
        raise ValueError("e" * (1024 * 1024))
    if kind == "secret_error":
        raise RuntimeError(payload["text"])
    return None
