"""Test-only actors that return, raise and report hostile things, on coursegen's real broker.

Loaded by a real worker as ``dramatiq coursegen.actors tests.support.hostile_actors`` (the fuzz
suite, tests/faults/test_fuzz.py). Each payload carries an owner, as every tracked job's must;
:func:`hostile` does what its ``shape`` names (tests/support/hostile_shapes.py).

With ``FUZZ_LOG_RECORDS`` set, every log record of the worker process is also appended to that
file as one JSON line (logger, level, ``action`` extra, message start), so the suite can check
which records the writer made (a ``sync_spill``, say) without parsing the dramatiq log format.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import dramatiq

from coursegen.actors import broker

from .hostile_shapes import SHAPES

QUEUE = "hostile"


@dramatiq.actor(broker=broker, queue_name=QUEUE, track_status=True, max_retries=0)
def hostile(payload: dict[str, Any]) -> Any:
    return SHAPES[payload["shape"]]()


@dramatiq.actor(broker=broker, queue_name=QUEUE, track_status=True, max_retries=0, time_limit=1000)
def overstay(payload: dict[str, Any]) -> None:
    """Runs past its 1 s time limit: Dramatiq raises TimeLimitExceeded (a BaseException) in it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)


class _RecordFile(logging.Handler):
    """Appends each record as one JSON line to a file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps(
                {
                    "pid": record.process,
                    "logger": record.name,
                    "level": record.levelname,
                    "action": getattr(record, "action", None),
                    "message": record.getMessage()[:300],
                },
                ensure_ascii=True,
            )
            with open(self.path, "a", encoding="ascii") as out:
                out.write(line + "\n")
        except Exception:  # a test aid must never break the worker's logging
            self.handleError(record)


if os.environ.get("FUZZ_LOG_RECORDS"):
    logging.getLogger().addHandler(_RecordFile(os.environ["FUZZ_LOG_RECORDS"]))
