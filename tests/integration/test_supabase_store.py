"""SupabaseStatusStore against the PostgREST stand-in and real sockets: one RPC per batch
(job_status_write, the batch as JSON arrays), a lazy client, an explicit float timeout, an
answer checked to account for every event, and failures sorted into transient, rejected and
permanent ones.

The state machine itself is proven on this store by tests/integration/test_state_machine.py.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg import sql

from coursegen.settings import Settings
from middleware.errors import (
    BatchTooLargeError,
    PermanentStoreError,
    RejectedBatchError,
    StoreError,
    TransientStoreError,
)
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.base import WRITE_PARAMS, write_arrays
from middleware.stores.supabase import DEFAULT_TIMEOUT, SupabaseStatusStore
from middleware.writer import StatusWriter
from tests.support.db import create_owner, fetch_rows
from tests.support.postgrest import (
    STAND_IN_URL,
    TEST_PUBLISHABLE_KEY,
    TEST_SECRET_KEY,
    Call,
    PostgrestStandIn,
    anon_key,
    serve,
    service_key,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture
def stand_in(database_url: str) -> Iterator[PostgrestStandIn]:
    transport = PostgrestStandIn(database_url)
    yield transport
    transport.close()


@pytest.fixture
def http(stand_in: PostgrestStandIn) -> Iterator[httpx.Client]:
    client = httpx.Client(transport=stand_in)
    yield client
    client.close()


def events_for(owner: Owner, n: int) -> list[StatusEvent]:
    return [
        StatusEvent(
            f"job-{i}-{uuid.uuid4()}", Status.COMPLETED, 1, owner, "a", "q", 1000.0 + i, result={"i": i}
        )
        for i in range(n)
    ]


def test_one_rpc_per_batch_and_no_io_before_the_first_batch(
    stand_in: PostgrestStandIn, http: httpx.Client, database_url: str
) -> None:
    owner = create_owner(database_url)
    store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
    store.prepare()
    assert stand_in.requests == 0, "building and preparing the store does no I/O"

    events = events_for(owner, 50)
    outcomes = store.apply(events)

    assert [o.job_id for o in outcomes] == [e.job_id for e in events]
    assert {o.outcome for o in outcomes} == {"applied"}
    assert stand_in.log == [Call("POST", "/rest/v1/rpc/job_status_write", "service_role", 200)]
    assert len(fetch_rows(database_url, [e.job_id for e in events])) == 50
    assert store.apply([]) == [] and stand_in.requests == 1


def test_close_keeps_a_given_client_and_the_next_batch_reconnects(
    stand_in: PostgrestStandIn, http: httpx.Client, database_url: str
) -> None:
    owner = create_owner(database_url)
    store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
    store.apply(events_for(owner, 1))
    store.close()
    assert not http.is_closed, "the caller owns a client it handed over"
    store.apply(events_for(owner, 1))
    assert [c.status for c in stand_in.log] == [200, 200]


def test_close_closes_the_client_the_store_created(stand_in: PostgrestStandIn, database_url: str) -> None:
    owner = create_owner(database_url)
    with serve(stand_in) as url:
        store = SupabaseStatusStore(url, service_key(), timeout=5)
        store.apply(events_for(owner, 1))
        own = store._http
        assert own is not None and not own.is_closed
        store.close()
        assert own.is_closed
        assert store.apply(events_for(owner, 1))[0].outcome == "applied"
        store.close()


@pytest.fixture
def stalled_server() -> Iterator[str]:
    """An HTTP server that answers nothing until the test ends."""
    release = threading.Event()

    class Stall(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            release.wait(30)
            return httpx.Response(504)

    with serve(Stall()) as url:
        try:
            yield url
        finally:
            release.set()


def test_a_float_timeout_is_kept_exactly(stalled_server: str) -> None:
    """The client truncates a float timeout to an int (0.5 -> 0); the store's own httpx.Timeout
    must make a stalled server fail after about 0.5 s, neither at once nor after seconds."""
    owner = Owner(str(uuid.uuid4()), str(uuid.uuid4()))
    store = SupabaseStatusStore(stalled_server, service_key(), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TransientStoreError) as caught:
        store.apply(events_for(owner, 1))
    elapsed = time.monotonic() - started
    store.close()
    assert caught.value.reason == "timeout"
    assert 0.4 <= elapsed < 3, elapsed


def test_nothing_listening_is_a_transient_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = SupabaseStatusStore(f"http://127.0.0.1:{port}", service_key(), timeout=2)
    with pytest.raises(TransientStoreError) as caught:
        store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    store.close()
    assert caught.value.reason == "connection"


def test_database_down_behind_postgrest_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stand_in = PostgrestStandIn(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    with httpx.Client(transport=stand_in) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        with pytest.raises(TransientStoreError) as caught:
            store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    assert caught.value.reason == "connection"
    # PostgREST that could not load its schema cache answers PGRST002 (PGRST000 once loaded)
    assert "HTTP 503 (PGRST002)" in str(caught.value)
    assert [c.status for c in stand_in.log] == [503]


def test_the_anon_key_is_refused_as_a_whole(stand_in: PostgrestStandIn, http: httpx.Client) -> None:
    store = SupabaseStatusStore(STAND_IN_URL, anon_key(), http_client=http)
    with pytest.raises(PermanentStoreError) as caught:
        store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 2))
    assert caught.value.reason == "permanent", "not the batch's data: the writer keeps the events"
    assert "HTTP 401 (42501)" in str(caught.value)


def test_a_database_without_the_migrations_is_a_permanent_error(empty_database_url: str) -> None:
    stand_in = PostgrestStandIn(empty_database_url)
    with httpx.Client(transport=stand_in) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        with pytest.raises(PermanentStoreError) as caught:
            store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    stand_in.close()
    assert "HTTP 404 (PGRST202)" in str(caught.value)


def _answering(status: int, body: object | str) -> httpx.Client:
    """A client whose server answers every request with ``status`` and ``body`` (a proxy, a
    gateway, PostgREST under load: answers the stand-in cannot produce on demand)."""
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"content-type": "text/html" if isinstance(body, str) else "application/json"}
    return httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(status, content=content, headers=headers)
        )
    )


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (408, "<html>Request Timeout</html>", TransientStoreError, "http_408"),
        (429, {"message": "Too many requests"}, TransientStoreError, "http_429"),
        (500, {"code": "XX000", "message": "internal error"}, PermanentStoreError, "permanent"),
        (500, {"code": "21000", "message": "more than one row returned"}, PermanentStoreError,
         "permanent"),
        (400, {"code": "P0001", "message": "raised by a function"}, PermanentStoreError, "permanent"),
        (500, {"code": "57014", "message": "canceling statement due to statement timeout"},
         TransientStoreError, "timeout"),
        (500, {"code": "55P03", "message": "canceling statement due to lock timeout"},
         TransientStoreError, "timeout"),
        (500, {"code": "40P01", "message": "deadlock detected"}, TransientStoreError, "conflict"),
        (503, {"code": "57P01", "message": "terminating connection due to administrator command"},
         TransientStoreError, "connection"),
        (503, {"code": "53300", "message": "too many connections"}, TransientStoreError, "connection"),
        (500, {"code": "54000", "message": "total size of jsonb array elements exceeds the maximum"},
         BatchTooLargeError, "program_limit"),
        (503, {"code": "PT503", "message": "come back later"}, TransientStoreError, "http_5xx"),
        (402, {"code": "PT402", "message": "pay first"}, PermanentStoreError, "permanent"),
        (502, "<html>Bad Gateway</html>", TransientStoreError, "http_5xx"),
        (503, {"code": "PGRST002", "message": "Could not query the database for the schema cache"},
         TransientStoreError, "connection"),
        (504, {"code": "PGRST003", "message": "Timed out acquiring connection from connection pool."},
         TransientStoreError, "connection"),
        (400, {"code": "22023", "message": "job_status_write expects arrays of one length"},
         RejectedBatchError, "rejected_batch"),
        (400, {"code": "22P02", "message": 'invalid input syntax for type uuid: "x"'},
         RejectedBatchError, "rejected_batch"),
        (400, {"code": "PGRST102", "message": "Empty or invalid json"}, RejectedBatchError,
         "rejected_batch"),
        (404, {"code": "PGRST202", "message": "Could not find the function"}, PermanentStoreError,
         "permanent"),
        (403, {"code": "42501", "message": "permission denied for function"}, PermanentStoreError,
         "permanent"),
        (409, {"code": "23505", "message": "duplicate key value violates unique constraint"},
         RejectedBatchError, "rejected_batch"),
        (401, {"code": "PGRST301", "message": "JWSError JWSInvalidSignature"}, PermanentStoreError,
         "permanent"),
        (413, "<html>Payload Too Large</html>", BatchTooLargeError, "payload_too_large"),
        (413, {"message": "Request Entity Too Large"}, BatchTooLargeError, "payload_too_large"),
    ],
)  # fmt: skip
def test_http_failures_are_sorted_into_transient_and_permanent(
    status: int, body: object, kind: type[StoreError], reason: str
) -> None:
    with _answering(status, body) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        with pytest.raises(StoreError) as caught:
            store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    assert type(caught.value) is kind
    assert caught.value.reason == reason
    assert f"HTTP {status}" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        {"events": 1, "applied": 1},  # no lists
        {"events": 1, "applied": 0, "stale": [], "rejected": []},  # one event unaccounted for
        {"events": 2, "applied": 2, "stale": [], "rejected": []},  # another batch's answer
        {"events": 1, "applied": 1, "stale": [1], "rejected": []},  # counted twice
        {"events": 1, "applied": 0, "stale": [2], "rejected": []},  # no such event
        {"events": 1, "applied": 0, "stale": ["1"], "rejected": []},
        {"events": 1, "applied": 0, "stale": [], "rejected": [[1, None]]},
        {"events": 1, "applied": "1", "stale": [], "rejected": []},
        [{"idx": 1, "job_id": "x", "outcome": "applied", "reason": None}],  # job_status_apply's rows
        [],
        "<html>captive portal</html>",
    ],
)
def test_an_answer_that_does_not_account_for_every_event_is_refused(body: object) -> None:
    """No event counts as applied for want of news: the answer must name or count each once."""
    with _answering(200, body) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        with pytest.raises(PermanentStoreError) as caught:
            store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    assert type(caught.value) is PermanentStoreError
    assert caught.value.reason == "bad_response"


# -- Supabase as it runs: db-max-rows, the gateway's body limit, timeouts, secret keys ---------


def _body_bytes(events: list[StatusEvent]) -> int:
    """The size of the body the store sends for ``events`` (the arrays no event fills left out)."""
    arrays = dict(zip((name for name, _attribute in WRITE_PARAMS), write_arrays(events), strict=True))
    return len(json.dumps({name: array for name, array in arrays.items() if array is not None}))


def _rejected_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(r.job_id for r in caplog.records if getattr(r, "action", None) == "sync_rejected")


def test_db_max_rows_cannot_cut_the_answer_short(database_url: str) -> None:
    """job_status_write answers with one JSON value, not a row per event: PostgREST's db-max-rows
    (Supabase's "Max Rows") leaves it whole, however many events did not apply."""
    stand_in = PostgrestStandIn(database_url, max_rows=2)
    with httpx.Client(transport=stand_in) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        nobody = Owner(str(uuid.uuid4()), str(uuid.uuid4()))  # every event is rejected
        outcomes = store.apply(events_for(nobody, 5))
    stand_in.close()
    assert [(o.outcome, o.reason) for o in outcomes] == [("rejected", "unknown_tenant")] * 5
    assert [c.status for c in stand_in.log] == [200]


def test_the_writer_writes_the_good_events_and_rejects_the_bad_in_one_round_trip(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="middleware.writer")
    owner = create_owner(database_url)
    good = events_for(owner, 3)
    bad = events_for(Owner(str(uuid.uuid4()), owner.user_id), 4)  # unknown tenant: rejected
    stand_in = PostgrestStandIn(database_url, max_rows=2)
    with httpx.Client(transport=stand_in) as http:
        writer = StatusWriter(
            lambda: SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http),
            flush_interval=60,
            sleep=lambda _s: None,
        )
        for event in [*bad[:2], *good, *bad[2:]]:
            writer.submit(event)
        assert writer.flush(timeout=30) and writer.close(timeout=30)
    stand_in.close()
    assert _rejected_log(caplog) == sorted(e.job_id for e in bad)
    rows = fetch_rows(database_url, [e.job_id for e in good + bad])
    assert sorted(rows) == sorted(e.job_id for e in good)
    assert [(c.path, c.status) for c in stand_in.log] == [("/rest/v1/rpc/job_status_write", 200)]
    assert not writer.degraded


def test_a_gateway_413_makes_the_writer_send_smaller_batches(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    owner = create_owner(database_url)
    events = events_for(owner, 6)
    stand_in = PostgrestStandIn(database_url, max_body_bytes=_body_bytes(events[:2]))  # two events fit
    with serve(stand_in) as url:
        store = SupabaseStatusStore(url, service_key())
        with pytest.raises(BatchTooLargeError) as caught:
            store.apply(events)
        assert (caught.value.reason, caught.value.events) == ("payload_too_large", 6)
        writer = StatusWriter(lambda: store, flush_interval=60, sleep=lambda _s: None)
        for event in events:
            writer.submit(event)
        assert writer.flush(timeout=30) and writer.close(timeout=30)
    stand_in.close()
    rows = fetch_rows(database_url, [e.job_id for e in events])
    assert {row["status"] for row in rows.values()} == {"completed"} and len(rows) == 6
    statuses = [c.status for c in stand_in.log]
    assert statuses[0] == 413 and set(statuses) == {413, 200}
    assert all(c.role == "service_role" for c in stand_in.log if c.status == 200)
    assert not writer.degraded


@pytest.mark.parametrize(
    ("setting", "sqlstate"),
    [("lock_timeout", "55P03"), ("statement_timeout", "57014")],
)
def test_a_write_stuck_behind_a_lock_is_ended_by_the_database_not_the_client(
    database_url: str, setting: str, sqlstate: str
) -> None:
    """Supabase's authenticator runs under an 8 s statement_timeout and lock_timeout; the
    store's client waits longer, so a write stuck behind another session's lock comes back
    as the database's error (rolled back, retried later), never as a client timeout that
    leaves the outcome unknown. Here the server's limit is 0.3 s for the database of the test."""
    owner = create_owner(database_url)
    first = StatusEvent(f"job-{uuid.uuid4()}", Status.ACTIVE, 1, owner, "a", "q", 1000.0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter role authenticator in database {} set {} = '300ms'").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(setting)
            )
        )
    stand_in = PostgrestStandIn(database_url)
    with serve(stand_in) as url:
        store = SupabaseStatusStore(url, service_key())  # its own client, the default timeout
        assert store.apply([first])[0].outcome == "applied"
        later = StatusEvent(first.job_id, Status.COMPLETED, 1, owner, "a", "q", 1005.0, result={"n": 1})
        with psycopg.connect(database_url) as holder:  # another session holds the row
            holder.execute("select 1 from public.job_status where job_id = %s for update", (first.job_id,))
            with pytest.raises(TransientStoreError) as caught:
                store.apply([later])
            assert fetch_rows(database_url, [first.job_id])[first.job_id]["status"] == "active"
        assert caught.value.reason == "timeout"
        assert f"HTTP 500 ({sqlstate})" in str(caught.value)
        assert store.apply([later])[0].outcome == "applied"  # the lock is gone: the retry lands
        store.close()
    stand_in.close()
    assert fetch_rows(database_url, [first.job_id])[first.job_id]["status"] == "completed"


def test_the_client_outwaits_the_servers_timeouts(database_url: str) -> None:
    """The 8 s the bootstrap gives authenticator (as Supabase does) and the clients' defaults."""
    authenticator = psycopg.conninfo.make_conninfo(database_url, user="authenticator", password="")
    with psycopg.connect(authenticator) as conn:
        limits = conn.execute(
            "select extract(epoch from current_setting('statement_timeout')::interval), "
            "extract(epoch from current_setting('lock_timeout')::interval)"
        ).fetchone()
    assert limits is not None and [float(x) for x in limits] == [8.0, 8.0]
    server = max(float(x) for x in limits)
    assert DEFAULT_TIMEOUT >= server + 2
    assert Settings().supabase_timeout >= server + 2
    assert SupabaseStatusStore(STAND_IN_URL, service_key())._timeout == DEFAULT_TIMEOUT


def test_a_secret_api_key_writes_as_the_service_role(
    stand_in: PostgrestStandIn, http: httpx.Client, database_url: str
) -> None:
    """supabase-py sends a non-JWT key as both apikey and bearer; the gateway swaps it for a
    service_role JWT. A publishable key is the anon role, refused; a key the project does not
    have is refused by the gateway."""
    owner = create_owner(database_url)
    store = SupabaseStatusStore(STAND_IN_URL, TEST_SECRET_KEY, http_client=http)
    events = events_for(owner, 3)
    assert {o.outcome for o in store.apply(events)} == {"applied"}
    assert len(fetch_rows(database_url, [e.job_id for e in events])) == 3
    assert stand_in.log == [Call("POST", "/rest/v1/rpc/job_status_write", "service_role", 200)]

    publishable = SupabaseStatusStore(STAND_IN_URL, TEST_PUBLISHABLE_KEY, http_client=http)
    with pytest.raises(PermanentStoreError) as refused:
        publishable.apply(events_for(owner, 1))
    assert "HTTP 401 (42501)" in str(refused.value)
    unknown = SupabaseStatusStore(STAND_IN_URL, "sb_secret_" + "Z" * 22 + "_12345678", http_client=http)
    with pytest.raises(PermanentStoreError) as invalid:
        unknown.apply(events_for(owner, 1))
    assert (invalid.value.reason, "HTTP 401" in str(invalid.value)) == ("permanent", True)
    assert "sb_secret_" not in str(invalid.value) + repr(unknown)


@pytest.mark.parametrize(
    ("text", "status"),
    [("half\x00way", 400), ("lone \ud800 surrogate", None)],
    ids=["nul", "surrogate"],
)
def test_a_text_that_cannot_travel_is_a_rejected_batch(
    stand_in: PostgrestStandIn, http: httpx.Client, database_url: str, text: str, status: int | None
) -> None:
    """An event makes its texts storable when it is built; one changed afterwards (a bug) is the
    batch's content to blame: a NUL reaches PostgreSQL, which refuses it (400), a lone surrogate
    cannot even be encoded as UTF-8 by the client."""
    owner = create_owner(database_url)
    events = events_for(owner, 2)
    events[1].error_message = text
    store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
    with pytest.raises(RejectedBatchError) as caught:
        store.apply(events)
    assert type(caught.value) is RejectedBatchError and caught.value.reason == "rejected_batch"
    assert [c.status for c in stand_in.log] == ([status] if status else [])
    assert fetch_rows(database_url, [e.job_id for e in events]) == {}
