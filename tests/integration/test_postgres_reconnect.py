"""The PostgreSQL store after an outage: the first write once the database is back succeeds.

psycopg_pool retries a lost connection with a doubling delay (1, 2, 4, 8 s...); a store that
kept its pool through an outage would answer "no connection" for seconds after the database
came back. The store drops a pool that lost its database and builds a fresh one, which connects
at once.
"""

from __future__ import annotations

import time

import pytest

from coursegen.embedded import LocalPostgres
from coursegen.migrate import migrate
from middleware.errors import TransientStoreError
from middleware.events import Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner, fetch_rows

pytestmark = [pytest.mark.integration]


def test_the_first_write_after_an_outage_succeeds(own_postgres: LocalPostgres) -> None:
    url = own_postgres.url()
    migrate(url)
    owner = create_owner(url)
    store = PostgresStatusStore(url, timeout=1.0)
    try:
        store.apply([StatusEvent("before", Status.PENDING, 0, owner, "a", "q", time.time())])
        own_postgres.stop()
        failures = 0
        started = time.monotonic()
        while time.monotonic() - started < 4:  # long enough for the pool's delay to reach 4 s
            with pytest.raises(TransientStoreError):
                store.apply([StatusEvent("during", Status.PENDING, 0, owner, "a", "q", time.time())])
            failures += 1
        own_postgres.start()

        outcomes = store.apply([StatusEvent("after", Status.COMPLETED, 1, owner, "a", "q", time.time())])
    finally:
        store.close()
    assert failures >= 2
    assert [o.outcome for o in outcomes] == ["applied"]
    assert fetch_rows(url, ["after"])["after"]["status"] == "completed"
