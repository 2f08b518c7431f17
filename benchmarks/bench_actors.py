"""The no-op tracked actor the throughput benchmark runs: `dramatiq benchmarks.bench_actors`.

Uses coursegen's real broker wiring (coursegen.app.build_app, through the coursegen.actors
import), so sync on and off differ only by COURSEGEN_STATUS_SYNC.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from coursegen.actors import broker

QUEUE = "bench"


@dramatiq.actor(broker=broker, queue_name=QUEUE, track_status=True, max_retries=0)
def noop(payload: dict[str, Any]) -> None:
    return None
