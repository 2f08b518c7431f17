"""SupabaseStatusStore against the PostgREST stand-in and real sockets: one RPC per batch, a lazy
client, an explicit float timeout, and failures sorted into transient and permanent ones.

The state machine itself is proven on this store by tests/integration/test_state_machine.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from middleware.errors import PermanentStoreError, RejectedBatchError, StoreError, TransientStoreError
from middleware.events import Owner, Status, StatusEvent
from middleware.stores.supabase import SupabaseStatusStore
from tests.support.db import create_owner, fetch_rows
from tests.support.postgrest import STAND_IN_URL, Call, PostgrestStandIn, anon_key, serve, service_key

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
    assert stand_in.log == [Call("POST", "/rest/v1/rpc/job_status_apply", "service_role", 200)]
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
    kind = "text/html" if isinstance(body, str) else "application/json"
    return httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(status, content=content, headers={"content-type": kind})
        )
    )


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (408, "<html>Request Timeout</html>", TransientStoreError, "http_408"),
        (429, {"message": "Too many requests"}, TransientStoreError, "http_429"),
        (500, {"code": "XX000", "message": "internal error"}, TransientStoreError, "http_5xx"),
        (502, "<html>Bad Gateway</html>", TransientStoreError, "http_5xx"),
        (503, {"code": "PGRST002", "message": "Could not query the database for the schema cache"},
         TransientStoreError, "connection"),
        (504, {"code": "PGRST003", "message": "Timed out acquiring connection from connection pool."},
         TransientStoreError, "connection"),
        (400, {"code": "22023", "message": "job_status_apply expects a JSON array of events"},
         RejectedBatchError, "rejected_batch"),
        (409, {"code": "23505", "message": "duplicate key value violates unique constraint"},
         RejectedBatchError, "rejected_batch"),
        (401, {"code": "PGRST301", "message": "JWSError JWSInvalidSignature"}, PermanentStoreError,
         "permanent"),
        (413, "<html>Payload Too Large</html>", PermanentStoreError, "permanent"),
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
        {"not": "a list"},
        [{"idx": 1, "job_id": "x", "outcome": "applied", "reason": None}],  # was filtered out
        [{"idx": 2, "job_id": "x", "outcome": "stale", "reason": None}],  # no such event
        [{"idx": "1", "job_id": "x", "outcome": "stale", "reason": None}],
        "<html>captive portal</html>",
    ],
)
def test_an_answer_that_does_not_fit_the_batch_is_refused(body: object) -> None:
    with _answering(200, body) as http:
        store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
        with pytest.raises(PermanentStoreError) as caught:
            store.apply(events_for(Owner(str(uuid.uuid4()), str(uuid.uuid4())), 1))
    assert caught.value.reason == "bad_response"
