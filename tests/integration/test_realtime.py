"""Broadcast from the database: every change of a ``job_status`` row is one Realtime message on
its owner's private topic ``user:<user_id>:jobs``, and only that user may join the topic.

No Realtime server runs here. The messages are the rows the trigger writes into
``realtime.messages`` (the local bootstrap recreates Supabase's table and functions); the
server's replication sends each such row to the topic's subscribers. Who may join is decided by
the RLS policies on ``realtime.messages``, checked the way the server checks a private channel
join: :func:`realtime_join` and :func:`realtime_may_send` reproduce
``Realtime.Tenants.Authorization`` (supabase/realtime, commit 833cf36c3a36,
``lib/realtime/tenants/authorization.ex``) statement by statement.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from coursegen.migrate import bootstrap_file, migrate
from middleware.events import Owner, Status, StatusEvent
from tests.support.db import create_owner
from tests.support.postgrest import TEST_JWT_SECRET, anon_key, user_token
from tests.support.stores import STORE_KINDS, open_store

pytestmark = [pytest.mark.integration, pytest.mark.sql]

ACTOR = "generate_course"
BATCH = 400  # what a busy writer flushes at once
T0 = 1_780_000_000.0  # event times: any sane ones (2026)


def topic_of(owner: Owner) -> str:
    return f"user:{owner.user_id}:jobs"


def messages(conninfo: str, topic: str | None = None) -> list[dict[str, Any]]:
    """The Broadcast messages written so far (every column the server reads), oldest first."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        return conn.execute(
            "select id, topic, event, private, extension, payload, binary_payload, inserted_at "
            "from realtime.messages where %(topic)s::text is null or topic = %(topic)s "
            "order by inserted_at, payload ->> 'job_id'",
            {"topic": topic},
        ).fetchall()


def event(
    owner: Owner, job_id: str, status: Status, at: float, attempt: int = 1, **fields: Any
) -> StatusEvent:
    return StatusEvent(job_id, status, attempt, owner, ACTOR, "default", at, **fields)


@pytest.fixture
def alice(database_url: str) -> Owner:
    return create_owner(database_url)


@pytest.fixture
def bob(database_url: str) -> Owner:
    return create_owner(database_url, tenant_name="Globex")


# -- one message per change ------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_each_change_of_a_batch_is_one_message_on_its_owners_topic(
    database_url: str, alice: Owner, bob: Owner, kind: str
) -> None:
    """Batches as the writer sends them, through each store's SQL path: the PostgreSQL store's
    job_status_update for rows that exist and job_status_apply for new ones; the Supabase
    store's job_status_apply (INSERT ... ON CONFLICT DO UPDATE) for everything."""
    owners = {f"job-{i:03}-{uuid.uuid4()}": (alice if i % 2 else bob) for i in range(BATCH)}
    with open_store(kind, database_url) as store:
        steps = [
            (Status.PENDING, T0, {"attempt": 0}),
            (Status.ACTIVE, T0 + 1, {}),
            (Status.COMPLETED, T0 + 2, {"result": {"ok": True}}),
        ]
        for status, at, fields in steps:
            outcomes = store.apply([event(o, j, status, at, **fields) for j, o in owners.items()])
            assert {o.outcome for o in outcomes} == {"applied"}

        sent = messages(database_url)
        assert len(sent) == 3 * BATCH
        for owner in (alice, bob):
            mine = [m for m in sent if m["topic"] == topic_of(owner)]
            jobs = {j for j, o in owners.items() if o == owner}
            assert len(mine) == 3 * len(jobs)
            assert {m["payload"]["job_id"] for m in mine} == jobs
            by_step = [
                sorted(
                    (m["payload"]["operation"], m["payload"]["status"])
                    for m in mine
                    if m["payload"]["job_id"] == j
                )
                for j in jobs
            ]
            assert all(
                steps == [("INSERT", "pending"), ("UPDATE", "active"), ("UPDATE", "completed")]
                for steps in by_step
            )

        # a stale batch (older events of finished jobs) writes no row and sends nothing
        outcomes = store.apply([event(o, j, Status.ACTIVE, T0 + 1.5) for j, o in owners.items()])
        assert {o.outcome for o in outcomes} == {"stale"}
        assert len(messages(database_url)) == 3 * BATCH


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_an_update_that_changes_nothing_a_browser_sees_sends_nothing(
    database_url: str, alice: Owner, kind: str
) -> None:
    job = f"job-{uuid.uuid4()}"
    with open_store(kind, database_url) as store:
        store.apply([event(alice, job, Status.ACTIVE, T0, progress=40, progress_message="writing")])
        # a later event with the same progress and message: applied (event_at moves), not news
        outcomes = store.apply(
            [event(alice, job, Status.ACTIVE, T0 + 1, progress=40, progress_message="writing")]
        )
        assert [o.outcome for o in outcomes] == ["applied"]
        assert [m["payload"]["operation"] for m in messages(database_url)] == ["INSERT"]
        # the message text alone is news
        store.apply([event(alice, job, Status.ACTIVE, T0 + 2, progress=40, progress_message="checking")])
    sent = messages(database_url)
    assert [(m["payload"]["operation"], m["payload"]["progress_message"]) for m in sent] == [
        ("INSERT", "writing"),
        ("UPDATE", "checking"),
    ]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select event_at from public.job_status").fetchone() == (
            datetime.fromtimestamp(T0 + 2, UTC),
        )


def test_a_cancel_request_and_a_delete_are_messages_too(database_url: str, alice: Owner) -> None:
    job = f"job-{uuid.uuid4()}"
    with open_store("postgres", database_url) as store:
        store.apply([event(alice, job, Status.ACTIVE, T0)])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select * from public.job_status_request_cancel(%s)", (job,))
        conn.execute("select * from public.job_status_request_cancel(%s)", (job,))  # already asked
        conn.execute("delete from public.job_status where job_id = %s", (job,))
    sent = [m["payload"] for m in messages(database_url, topic_of(alice))]
    assert [(p["operation"], p["status"], p["cancel_requested_at"] is not None) for p in sent] == [
        ("INSERT", "active", False),
        ("UPDATE", "active", True),
        ("DELETE", "active", True),  # the row as it was
    ]
    assert {p["job_id"] for p in sent} == {job}


def test_the_payload_carries_what_a_browser_needs_and_never_the_result(
    database_url: str, alice: Owner
) -> None:
    job = f"job-{uuid.uuid4()}"
    with open_store("postgres", database_url) as store:
        store.apply([event(alice, job, Status.PENDING, T0, attempt=0)])
        store.apply([event(alice, job, Status.ACTIVE, T0 + 1, progress=30, progress_message="outline")])
        store.apply(
            [
                event(
                    alice,
                    job,
                    Status.COMPLETED,
                    T0 + 2,
                    progress_message="done",
                    result={"big": "x" * 50_000},
                )
            ]
        )
    final = messages(database_url)[-1]
    with psycopg.connect(database_url) as conn:
        updated_at = conn.execute(
            "select updated_at from public.job_status where job_id = %s", (job,)
        ).fetchone()[0]  # type: ignore[index]
    assert final["topic"] == topic_of(alice)
    assert (final["event"], final["private"], final["extension"]) == ("job_status", True, "broadcast")
    assert final["binary_payload"] is None
    assert final["payload"] == {
        "id": str(final["id"]),  # as realtime.send puts the message's id in its payload
        "operation": "UPDATE",
        "job_id": job,
        "actor_name": ACTOR,
        "status": "completed",
        "progress": 100,
        "progress_message": "done",
        "attempt": 1,
        "error_type": None,
        "error_message": None,
        "next_retry_at": None,
        "cancel_requested_at": None,
        "updated_at": final["payload"]["updated_at"],
        "has_result": True,  # the result itself is read from the row, once
    }
    assert datetime.fromisoformat(final["payload"]["updated_at"]) == updated_at
    assert len(json.dumps(final["payload"])) < 1000


def test_a_failure_carries_its_error_and_a_retry_its_time(database_url: str, alice: Owner) -> None:
    job = f"job-{uuid.uuid4()}"
    with open_store("postgres", database_url) as store:
        store.apply(
            [event(alice, job, Status.RETRYING, T0, error_type="TimeoutError", next_retry_at=T0 + 30)]
        )
        store.apply(
            [
                event(
                    alice,
                    job,
                    Status.FAILED,
                    T0 + 40,
                    attempt=2,
                    error_type="ValueError",
                    error_message="bad",
                )
            ]
        )
    retry, failure = (m["payload"] for m in messages(database_url))
    assert (retry["status"], retry["error_type"]) == ("retrying", "TimeoutError")
    assert datetime.fromisoformat(retry["next_retry_at"]) == datetime.fromtimestamp(T0 + 30, UTC)
    assert (failure["status"], failure["attempt"], failure["error_type"], failure["error_message"]) == (
        "failed",
        2,
        "ValueError",
        "bad",
    )
    assert failure["has_result"] is False


# -- harmless ----------------------------------------------------------------------------------


def test_status_writes_go_on_where_there_is_no_realtime_schema(empty_database_url: str) -> None:
    """Plain PostgreSQL with an auth schema but no Realtime: the migrations apply, the trigger
    does nothing, not even warn."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(bootstrap_file().read_text(encoding="utf-8"))
        conn.execute("drop schema realtime cascade")
    migrate(empty_database_url)  # auth is there: no bootstrap again
    owner = create_owner(empty_database_url)
    job = f"job-{uuid.uuid4()}"
    with open_store("postgres", empty_database_url) as store:
        for status, at in ((Status.PENDING, T0), (Status.ACTIVE, T0 + 1)):
            assert [o.outcome for o in store.apply([event(owner, job, status, at)])] == ["applied"]
    notices: list[str] = []
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity_nonlocalized}: {d.message_primary}"))
        conn.execute("set role service_role")
        rows = conn.execute(
            "select outcome from public.job_status_apply(%s::jsonb)",
            ("[" + event(owner, job, Status.COMPLETED, T0 + 2).to_json() + "]",),
        ).fetchall()
        conn.execute("delete from public.job_status")
        triggers = conn.execute(
            "select count(*) from pg_trigger where tgrelid = 'public.job_status'::regclass "
            "and tgname like 'job_status_broadcast%' and tgenabled = 'O'"
        ).fetchone()
        assert conn.execute("select to_regnamespace('realtime')").fetchone() == (None,)
    assert rows == [("applied",)]
    assert notices == []
    assert triggers == (3,)


def test_a_message_that_cannot_be_stored_is_a_warning_not_a_failed_write(
    database_url: str, alice: Owner
) -> None:
    """No partition for today (the Realtime server makes them; here none is left): the write
    lands, the message is dropped with a warning, as realtime.send does."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions = conn.execute(
            "select inhrelid::regclass::text from pg_inherits where inhparent = 'realtime.messages'::regclass"
        ).fetchall()
        assert partitions
        for (partition,) in partitions:
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(*partition.split("."))))
    warnings: list[str] = []
    job = f"job-{uuid.uuid4()}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: warnings.append(f"{d.severity_nonlocalized}: {d.message_primary}"))
        conn.execute("set role service_role")
        rows = conn.execute(
            "select outcome from public.job_status_apply(%s::jsonb)",
            ("[" + event(alice, job, Status.ACTIVE, T0).to_json() + "]",),
        ).fetchall()
    assert rows == [("applied",)]
    assert len(warnings) == 1
    assert warnings[0].startswith("WARNING: job_status_broadcast: no message sent: no partition of relation")
    assert messages(database_url) == []


# -- who may join ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Policies:
    """What ``Realtime.Tenants.Authorization`` finds for a channel: read per extension (the
    join needs one of them) and, separately, write."""

    broadcast: bool
    presence: bool

    @property
    def admitted(self) -> bool:
        # realtime_channel.ex, maybe_assign_policies: `if broadcast_read? || presence_read?`
        return self.broadcast or self.presence


def claims_of(token: str) -> dict[str, Any]:
    """The claims the Realtime server takes from the client's access token."""
    return jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], options={"verify_aud": False})


def set_conn_config(conn: psycopg.Connection[Any], topic: str, claims: dict[str, Any]) -> None:
    """``Authorization.set_conn_config/2``: the same statement, the same parameters."""
    conn.execute(
        """
        SELECT
          set_config('role', %s, true),
          set_config('realtime.topic', %s, true),
          set_config('request.jwt.claims', %s, true),
          set_config('request.jwt.claim.sub', %s, true),
          set_config('request.jwt.claim.role', %s, true),
          set_config('request.headers', %s, true)
        """,
        (claims["role"], topic, json.dumps(claims), claims.get("sub"), claims["role"], json.dumps({})),
    )


def probe(topic: str, extension: str, probe_id: uuid.UUID) -> tuple[Any, ...]:
    """A ``Realtime.Api.Message`` changeset's columns: topic, extension, the timestamps the
    changeset puts (``NaiveDateTime.utc_now``), the id Ecto generates."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return (topic, extension, now, now, probe_id)


PROBE_INSERT = "INSERT INTO realtime.messages (topic, extension, updated_at, inserted_at, id) VALUES "


def realtime_join(conninfo: str, topic: str, token: str) -> Policies:
    """``get_read_policies_for_connection``: in one transaction on the server's own connection
    (here the test's superuser, which bypasses RLS as Supabase's realtime admin role does), one
    probe row per extension (``Repo.insert_all_entries``, no RETURNING), then
    ``set_conn_config``, then the probes selected back under RLS (``from m in Message, where:
    m.id in ^ids``), then ``ROLLBACK AND CHAIN``. A probe that comes back grants read."""
    claims = claims_of(token)
    ids = {extension: uuid.uuid4() for extension in ("broadcast", "presence")}
    with psycopg.connect(conninfo) as conn:
        with conn.transaction(force_rollback=True):
            rows = [probe(topic, extension, probe_id) for extension, probe_id in ids.items()]
            conn.execute(
                PROBE_INSERT + "(%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s)", [v for row in rows for v in row]
            )
            set_conn_config(conn, topic, claims)
            visible = {
                row[0]
                for row in conn.execute(
                    'SELECT m0."id" FROM "realtime"."messages" AS m0 WHERE (m0."id" = ANY(%s))',
                    (list(ids.values()),),
                )
            }
    return Policies(broadcast=ids["broadcast"] in visible, presence=ids["presence"] in visible)


def realtime_may_send(conninfo: str, topic: str, token: str) -> Policies:
    """``get_write_policies_for_connection``: ``set_conn_config``, then per extension one probe
    insert in a savepoint (``Repo.insert(..., mode: :savepoint)``) as the client's role;
    insufficient_privilege means no write."""
    claims = claims_of(token)
    allowed = {}
    with psycopg.connect(conninfo) as conn:
        with conn.transaction(force_rollback=True):
            set_conn_config(conn, topic, claims)
            for extension in ("broadcast", "presence"):
                try:
                    with conn.transaction():
                        conn.execute(
                            PROBE_INSERT + "(%s, %s, %s, %s, %s)", probe(topic, extension, uuid.uuid4())
                        )
                    allowed[extension] = True
                except psycopg.errors.InsufficientPrivilege:
                    allowed[extension] = False
    return Policies(**allowed)


def test_the_owner_joins_their_topic_to_receive_only(database_url: str, alice: Owner) -> None:
    token = user_token(alice.user_id)
    assert realtime_join(database_url, topic_of(alice), token) == Policies(broadcast=True, presence=False)
    assert realtime_may_send(database_url, topic_of(alice), token) == Policies(
        broadcast=False, presence=False
    )


def test_another_user_and_anon_cannot_join_a_users_topic(database_url: str, alice: Owner, bob: Owner) -> None:
    for token in (user_token(bob.user_id), anon_key()):
        policies = realtime_join(database_url, topic_of(alice), token)
        assert not policies.admitted, policies
        assert realtime_may_send(database_url, topic_of(alice), token) == Policies(
            broadcast=False, presence=False
        )
    # bob's own topic is his
    assert realtime_join(database_url, topic_of(bob), user_token(bob.user_id)).admitted


def test_a_job_topic_stays_its_owners_whatever_else_the_project_allows(
    database_url: str, alice: Owner, bob: Owner
) -> None:
    """A project with the broad policies Supabase's docs show for chat rooms (any signed-in
    user may receive and send on any topic) keeps them for its other topics; a job topic still
    admits only its owner, and still nobody sends on it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "create policy everyone_receives on realtime.messages for select to authenticated using (true)"
        )
        conn.execute(
            "create policy everyone_sends on realtime.messages for insert to authenticated with check (true)"
        )
    bobs = user_token(bob.user_id)
    assert realtime_join(database_url, "room:lobby", bobs) == Policies(broadcast=True, presence=True)
    assert realtime_may_send(database_url, "room:lobby", bobs) == Policies(broadcast=True, presence=True)
    assert not realtime_join(database_url, topic_of(alice), bobs).admitted
    assert realtime_may_send(database_url, topic_of(alice), bobs) == Policies(broadcast=False, presence=False)
    alices = user_token(alice.user_id)
    assert realtime_join(database_url, topic_of(alice), alices) == Policies(broadcast=True, presence=True)
    assert realtime_may_send(database_url, topic_of(alice), alices) == Policies(
        broadcast=False, presence=False
    )


@pytest.fixture
def sent_to_both(database_url: str, alice: Owner, bob: Owner) -> Iterator[None]:
    with open_store("postgres", database_url) as store:
        store.apply([event(o, f"job-{uuid.uuid4()}", Status.ACTIVE, T0) for o in (alice, bob, alice)])
    yield


def stored_messages_seen_by(conninfo: str, role: str, claims: dict[str, Any]) -> set[str]:
    with psycopg.connect(conninfo) as conn, conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        return {row[0] for row in conn.execute("select topic from realtime.messages")}


def test_stored_messages_are_readable_by_their_owner_only(
    database_url: str, alice: Owner, bob: Owner, sent_to_both: None
) -> None:
    assert {m["topic"] for m in messages(database_url)} == {topic_of(alice), topic_of(bob)}
    assert stored_messages_seen_by(database_url, "authenticated", claims_of(user_token(alice.user_id))) == {
        topic_of(alice)
    }
    assert stored_messages_seen_by(database_url, "anon", claims_of(anon_key())) == set()
