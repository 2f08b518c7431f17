"""The production path with real processes: a producer and `dramatiq coursegen.actors` configured
with SUPABASE_URL and the service-role key write job_status through Supabase's REST API.

The REST API is the PostgREST stand-in served over a real socket from this test process
(tests/support/postgrest.py), backed by the test database; the worker and the producer run the
real supabase client against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.db import create_owner, fetch_rows, wait_for
from tests.support.postgrest import PostgrestStandIn, serve, service_key
from tests.support.processes import app_env, dramatiq_worker, send_jobs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TEXT = (
    "Volcanoes form where magma rises through the crust. Eruptions build cones of ash and lava, "
    "and over time weathering turns the rock into fertile soil for farms and forests. " * 3
)


@pytest.fixture
def rest_api(database_url: str) -> Iterator[tuple[str, PostgrestStandIn]]:
    stand_in = PostgrestStandIn(database_url)
    with serve(stand_in) as url:
        yield url, stand_in
    stand_in.close()


def test_worker_writes_status_through_supabase(
    rest_api: tuple[str, PostgrestStandIn], database_url: str, redis_url: str, tmp_path: Path
) -> None:
    url, stand_in = rest_api
    key = service_key()
    owner = create_owner(database_url)
    # the alias SUPABASE_SERVICE_KEY is accepted too; the primary name is used here
    env = app_env(REDIS_URL=redis_url, SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=key)

    def payload(text: str, title: str) -> dict[str, object]:
        return {
            "tenant_id": owner.tenant_id,
            "user_id": owner.user_id,
            "title": title,
            "sources": [{"text": text}],
        }

    with dramatiq_worker(env, tmp_path / "worker.log") as worker:
        sent = send_jobs(env, [payload(TEXT, "Volcanoes"), payload("far too short", "Thin")])
        ids = [item["job_id"] for item in sent]

        def finished() -> dict[str, dict[str, object]] | None:
            rows = fetch_rows(database_url, ids)
            done = {"completed", "failed"}
            return rows if len(rows) == 2 and all(r["status"] in done for r in rows.values()) else None

        rows = wait_for(finished, timeout=60, what="both jobs to finish through the REST API")
        assert worker.stop() == 0
    good, thin = rows[ids[0]], rows[ids[1]]
    assert (good["status"], good["attempt"], good["progress"]) == ("completed", 1, 100)
    assert isinstance(good["result"], dict) and good["result"]["title"] == "Volcanoes"
    assert (thin["status"], thin["attempt"]) == ("failed", 1)
    assert thin["error_type"] and thin["error_message"]

    # every write was one RPC call as the service role; besides, the worker only asked the API
    # for cancellations requested in the database (the fleet's poller: about one call a second)
    # and, once for the fleet in its first minute, how far behind retention is
    fleet = ("/rest/v1/rpc/job_status_cancel_requests", "/rest/v1/rpc/job_status_retention_lag")
    calls = [c for c in stand_in.log if c.path not in fleet]
    polls = [c for c in stand_in.log if c.path == fleet[0]]
    lag_reads = [(c.method, c.role, c.status) for c in stand_in.log if c.path == fleet[1]]
    assert lag_reads and set(lag_reads) == {("POST", "service_role", 200)}
    assert calls, "the rows came through the REST API"
    assert {(c.method, c.path, c.role, c.status) for c in calls} == {
        ("POST", "/rest/v1/rpc/job_status_write", "service_role", 200)
    }
    assert len(calls) <= 3 * len(ids), f"{len(calls)} requests for {len(ids)} jobs"
    assert polls and {(c.method, c.role, c.status) for c in polls} == {("POST", "service_role", 200)}
    assert key not in worker.log
