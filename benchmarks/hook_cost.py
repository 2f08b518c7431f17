"""CPU cost of the status hooks on a worker thread, per job (`python -m benchmarks.hook_cost`).

Runs the middleware's hooks for one job's life (before_process_message, after_process_message)
on messages wrapped as a worker sees them (``MessageProxy``), with a cancellation check wired
as in production, against a writer whose store discards batches. Reports the median CPU
microseconds of the calling thread per job over several rounds (``time.thread_time``): the
writer thread's own work is excluded, this is what a worker thread pays.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Sequence

import dramatiq
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from middleware import JobStatusMiddleware, StatusWriter
from middleware.events import StatusEvent
from middleware.stores.base import APPLIED, Outcome


class DiscardingStore:
    def apply(self, events: Sequence[StatusEvent]) -> list[Outcome]:
        return [Outcome(e.job_id, APPLIED) for e in events]

    def close(self) -> None:
        return None


def main(jobs: int = 20_000, rounds: int = 5) -> int:
    writer = StatusWriter(DiscardingStore, flush_interval=0.05)
    cancelled: frozenset[str] = frozenset()  # a lookup in a local set, as RedisCancelFlags does
    middleware = JobStatusMiddleware(writer, is_cancel_requested=cancelled.__contains__)
    broker = StubBroker(middleware=[middleware])
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, track_status=True)
    def noop(payload: dict[str, str]) -> None:
        return None

    payload = {"tenant_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}
    results = []
    for _ in range(rounds):
        messages = [
            MessageProxy(
                Message(queue_name="default", actor_name="noop", args=(payload,), kwargs={}, options={})
            )
            for _ in range(jobs)
        ]
        started = time.thread_time()
        for message in messages:
            middleware.before_process_message(broker, message)
            middleware.after_process_message(broker, message, result=None)
        elapsed = time.thread_time() - started
        results.append(elapsed / jobs * 1e6)
        writer.flush(timeout=10)
    writer.close()
    median = statistics.median(results)
    print(
        f"hooks per job (active + completed): median {median:.2f} us of thread CPU "
        f"over {rounds} rounds of {jobs} jobs"
    )
    print(f"  min {min(results):.2f} us, max {max(results):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
