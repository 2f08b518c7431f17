"""Hooks do no I/O: the store is only ever created and called from the writer's own thread."""

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
    # ...but every store call (and the store's creation) happened on the writer thread.
    assert harness.store.batches, "nothing was written"
    assert set(harness.store.threads) == {WRITER_THREAD}
    assert harness.store.factory_threads == [WRITER_THREAD]
    assert [harness.store.last(m.message_id).status for m in jobs] == [Status.COMPLETED, Status.FAILED]
