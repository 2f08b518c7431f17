"""PostgresStatusStore on a real PostgreSQL: the batch in one call of job_status_write, an answer
checked to account for every event, and failures sorted by what is to blame. A data error (what
the batch holds: SQLSTATE class 22 or 23, a text the driver cannot encode) is a
RejectedBatchError, which the writer splits until the bad events stand alone; the database
unreachable or busy is a TransientStoreError; anything else (no such function, no right to call
it) a plain PermanentStoreError.

The state machine itself is proven on this store by tests/integration/test_state_machine.py and
test_write_paths.py.
"""

from __future__ import annotations

import json
import socket
import uuid
from contextlib import closing

import psycopg
import pytest
from psycopg import sql

from middleware.errors import PermanentStoreError, RejectedBatchError, StoreError, TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.postgres import PostgresStatusStore
from tests.support.db import create_owner, fetch_rows

pytestmark = [pytest.mark.integration, pytest.mark.sql]

T0 = 1_800_000_000.0


def events_for(owner: Owner, n: int) -> list[StatusEvent]:
    return [
        StatusEvent(f"pg-{i}-{uuid.uuid4()}", Status.COMPLETED, 1, owner, "a", "q", T0 + i, result={"i": i})
        for i in range(n)
    ]


def raised(store: PostgresStatusStore, events: list[StatusEvent]) -> StoreError:
    with closing(store), pytest.raises(StoreError) as caught:
        store.apply(events)
    return caught.value


def test_one_call_per_batch_answers_for_every_event(database_url: str) -> None:
    owner = create_owner(database_url)
    events = events_for(owner, 3)
    unsendable = StatusEvent(
        f"pg-x-{uuid.uuid4()}", Status.ACTIVE, 1, Owner("not-a-uuid", owner.user_id), "a", "q", T0
    )
    with closing(PostgresStatusStore(database_url)) as store:
        outcomes = store.apply([events[0], unsendable, *events[1:]])
        again = store.apply(events[:1])
    assert [(o.job_id, o.outcome, o.reason) for o in outcomes] == [
        (events[0].job_id, "applied", None),
        (unsendable.job_id, "rejected", "invalid_event: tenant_id is not a uuid"),
        (events[1].job_id, "applied", None),
        (events[2].job_id, "applied", None),
    ]
    assert [(o.outcome, o.reason) for o in again] == [("stale", None)]
    assert len(fetch_rows(database_url, [e.job_id for e in events])) == 3


@pytest.mark.parametrize(
    "text",
    ["half\x00way", "lone \ud800 surrogate"],
    ids=["nul", "surrogate"],
)
def test_a_text_the_driver_cannot_send_is_a_rejected_batch(database_url: str, text: str) -> None:
    """An event makes its texts storable when it is built; one changed afterwards (a bug) is the
    batch's content to blame, not the database."""
    owner = create_owner(database_url)
    events = events_for(owner, 2)
    events[1].error_message = text
    error = raised(PostgresStatusStore(database_url), events)
    assert type(error) is RejectedBatchError and error.reason == "rejected_batch"


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStatusStore(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=1)
    error = raised(store, events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    assert type(error) is TransientStoreError and error.reason in ("connection", "timeout")


def test_a_write_stuck_behind_a_lock_past_the_timeout_is_transient(database_url: str) -> None:
    owner = create_owner(database_url)
    event = events_for(owner, 1)[0]
    with closing(PostgresStatusStore(database_url)) as store:
        store.apply([StatusEvent(event.job_id, Status.ACTIVE, 1, owner, "a", "q", T0 - 1)])
    slow = psycopg.conninfo.make_conninfo(database_url, options="-c lock_timeout=200")
    with psycopg.connect(database_url) as holder:
        holder.execute("select 1 from public.job_status where job_id = %s for update", (event.job_id,))
        error = raised(PostgresStatusStore(slow), [event])
    assert type(error) is TransientStoreError and "55P03" in str(error)


def test_a_database_without_the_function_is_a_permanent_error_not_a_rejected_batch(
    empty_database_url: str,
) -> None:
    error = raised(
        PostgresStatusStore(empty_database_url), events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1)
    )
    # the enum the arrays are cast to is missing before the function is (42704, else 42883)
    assert type(error) is PermanentStoreError and ("(42704)" in str(error) or "(42883)" in str(error))


def test_a_role_without_the_grant_is_a_permanent_error(database_url: str) -> None:
    """The function is granted to service_role only; authenticator (PostgREST's login role) is not
    one, and neither is any other role."""
    as_authenticator = psycopg.conninfo.make_conninfo(database_url, user="authenticator", password="")
    error = raised(PostgresStatusStore(as_authenticator), events_for(create_owner(database_url), 1))
    assert type(error) is PermanentStoreError and "42501" in str(error)


#: job_status_write's parameters as the migration declares them
WRITE_SIGNATURE = """
  job_ids text[], statuses public.job_state[], attempts integer[], tenant_ids uuid[], user_ids uuid[],
  actor_names text[], queue_names text[], event_ats double precision[],
  progresses smallint[] default null, progress_messages text[] default null,
  results text[] default null, error_types text[] default null, error_messages text[] default null,
  next_retry_ats double precision[] default null, enqueued_ats double precision[] default null,
  started_ats double precision[] default null
"""


@pytest.mark.parametrize(
    "answer",
    [
        {"events": 1, "applied": 0, "stale": [], "rejected": []},
        {"events": 2, "applied": 2, "stale": [], "rejected": []},
        {"events": 1, "applied": 1, "stale": [1], "rejected": []},
        None,
        [{"idx": 1, "outcome": "stale"}],
    ],
    ids=["one-missing", "another-batch", "counted-twice", "null", "rows"],
)
def test_an_answer_that_does_not_account_for_every_event_is_refused(
    database_url: str, answer: object
) -> None:
    """No event counts as applied for want of news (here from a job_status_write that answers
    wrong)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create or replace function public.job_status_write(" + WRITE_SIGNATURE + ") "
                "returns jsonb language sql set search_path = '' as {}"
            ).format(sql.Literal(f"select {sql.quote(json.dumps(answer))}::jsonb"))
        )
    error = raised(PostgresStatusStore(database_url), events_for(create_owner(database_url), 1))
    assert type(error) is PermanentStoreError and error.reason == "bad_response"
