"""Hooks do no I/O: the store is built once at worker boot and only ever called from the writer's
own thread."""

from __future__ import annotations

from typing import Any

from middleware.events import Status

from .conftest import WRITER_THREAD, Harness, owner_payload


def test_the_store_is_only_touched_by_the_writer_thread(harness: Harness) -> None:
    calls: list[int] = []

    @harness.actor
    def build_course(payload: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("retry me")

    @harness.actor(throws=(ValueError,))
    def doomed(payload: dict[str, Any]) -> None:
        raise ValueError("no")

    jobs = [build_course.send(owner_payload()), doomed.send(owner_payload())]
    harness.run()

    # The hooks ran on the producer's thread and on worker threads...
    submitters = set(harness.writer.submitting_threads)
    assert "MainThread" in submitters
    assert len(submitters - {"MainThread"}) >= 1
    assert WRITER_THREAD not in submitters
    # ...the store was built once, by the thread that booted the worker (before_worker_boot,
    # before any worker thread took a message), and every store call happened on the writer
    # thread.
    assert harness.store.batches, "nothing was written"
    assert set(harness.store.threads) == {WRITER_THREAD}
    assert harness.store.factory_threads == ["MainThread"]
    assert [harness.store.last(m.message_id).status for m in jobs] == [Status.COMPLETED, Status.FAILED]
