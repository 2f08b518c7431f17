"""The PostgREST stand-in's schema cache and its ``LISTEN pgrst`` reloader.

PostgREST does not read the catalogue per request. At start-up it loads a schema cache (the
tables and functions of the exposed schemas) and its in-database configuration (among it the
settings of the roles ``authenticator`` may switch to); then it reloads the first on
``NOTIFY pgrst, 'reload schema'`` (or an empty payload) and the second on
``NOTIFY pgrst, 'reload config'``, heard on a connection of its own that ``LISTEN``s on the
``db-channel`` (``pgrst``). When that connection is lost it reconnects with a backoff capped at
32 s and reloads the schema cache, since notifications may have been missed. Sources
(PostgREST 14): ``src/library/PostgREST/AppState/Reload.hs`` (``retryingListen``,
``handleNotification``), ``Config/Database.hs`` (``queryRoleSettings``), ``SchemaCache.hs``.

Until a first load succeeds every request is answered 503 ``PGRST002``; PostgREST retries the
load in the background, the stand-in at each request.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

#: PostgREST's ``db-channel`` default
CHANNEL = "pgrst"
#: ``default_transaction_isolation`` is PostgREST's isolation level of a role, not a setting it
#: applies with ``set_config`` (not reproduced: every transaction is read committed)
_ISOLATION = "default_transaction_isolation"


@dataclass
class Target:
    """An input argument of a function: its name, its type as PostgREST spells it in SQL."""

    name: str
    type: sql.Composable
    has_default: bool


@dataclass
class Routine:
    """A function as the schema cache knows it."""

    oid: int
    retset: bool
    volatile: str
    composite: bool
    void: bool
    args: list[Target]


@dataclass
class SchemaCache:
    """What one load read: routines by (schema, name), relations, role settings."""

    routines: dict[tuple[str, str], list[Routine]] = field(default_factory=dict)
    relations: set[tuple[str, str]] = field(default_factory=set)
    #: the settings PostgREST applies with ``set_config(..., true)`` after switching to a role
    role_settings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def load_schema(conn: psycopg.Connection[Any], schemas: tuple[str, ...]) -> SchemaCache:
    """The functions and relations of ``schemas``, read in one read-only transaction."""
    cache = SchemaCache()
    with conn.transaction():
        conn.execute("set transaction read only")
        rows = conn.execute(
            "select n.nspname, p.proname, p.oid, p.proretset, p.provolatile, p.pronargs, "
            "  p.pronargdefaults, coalesce(p.proargnames, '{}'), "
            "  coalesce(p.proargmodes::text[], '{}'), "
            "  coalesce(p.proallargtypes, p.proargtypes::oid[]), "
            "  rt.typtype = 'c' or p.prorettype = 'record'::regtype, "
            "  p.prorettype = 'void'::regtype "
            "from pg_catalog.pg_proc as p "
            "join pg_catalog.pg_namespace as n on n.oid = p.pronamespace "
            "join pg_catalog.pg_type as rt on rt.oid = p.prorettype "
            "where n.nspname = any(%s) and p.prokind = 'f'",
            (list(schemas),),
        ).fetchall()
        # an argument's type as funcsSqlQuery (SchemaCache.hs) spells it for json_to_record:
        # ``type::regtype::text`` (``text[]``, ``double precision[]``, ``job_state[]``), the
        # fixed-length character and bit types as their varying kinds (a value is then neither
        # padded nor cut)
        type_names = dict(
            conn.execute(
                "select t.oid, case t.oid"
                "  when 'bit'::pg_catalog.regtype then 'bit varying'"
                "  when 'bit[]'::pg_catalog.regtype then 'bit varying[]'"
                "  when 'character'::pg_catalog.regtype then 'character varying'"
                "  when 'character[]'::pg_catalog.regtype then 'character varying[]'"
                "  else t.oid::pg_catalog.regtype::text end "
                "from pg_catalog.pg_type t where t.oid = any(%s)",
                (sorted({oid for row in rows for oid in row[9]}),),
            ).fetchall()
        )
        for (
            schema,
            name,
            oid,
            retset,
            volatile,
            nargs,
            ndefaults,
            names,
            modes,
            types,
            composite,
            void,
        ) in rows:
            args = _input_args(nargs, ndefaults, names, modes, types, type_names)
            if args is None:
                continue  # an unnamed argument: not callable with named arguments
            cache.routines.setdefault((schema, name), []).append(
                Routine(oid, retset, volatile, composite, void, args)
            )
        cache.relations = {
            (schema, name)
            for schema, name in conn.execute(
                "select n.nspname, c.relname from pg_catalog.pg_class c "
                "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = any(%s) and c.relkind in ('r', 'p', 'v', 'm', 'f')",
                (list(schemas),),
            )
        }
    return cache


def load_role_settings(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """``queryRoleSettings``: the role-wide settings (``alter role ... set``, not those of one
    database) of every role the current user (``authenticator``) is a member of, limited to
    those it may set (``user`` context, or ``grant set on parameter`` from PostgreSQL 15)."""
    can_set = "ps.context = 'user'"
    if conn.info.server_version >= 150000:
        can_set += " or pg_catalog.has_parameter_privilege(current_user, ps.name, 'set')"
    query = sql.SQL(
        "with kv as ("
        "  select r.rolname, pg_catalog.split_part(s.setting, '=', 1) as key, "
        "    pg_catalog.substr(s.setting, pg_catalog.strpos(s.setting, '=') + 1) as value "
        "  from pg_catalog.pg_auth_members m "
        "  join pg_catalog.pg_roles r on r.oid = m.roleid "
        "  cross join lateral pg_catalog.unnest(r.rolconfig) as s(setting) "
        "  where m.member = pg_catalog.quote_ident(current_user)::regrole::oid"
        ") "
        "select kv.rolname, kv.key, kv.value from kv "
        "join pg_catalog.pg_settings ps on ps.name = kv.key and ({}) "
        "where kv.key <> %s order by kv.rolname, kv.key"
    ).format(sql.SQL(can_set))
    settings: dict[str, list[tuple[str, str]]] = {}
    with conn.transaction():
        for role, key, value in conn.execute(query, (_ISOLATION,)):
            settings.setdefault(role, []).append((key, value))
    return settings


def _input_args(
    nargs: int,
    ndefaults: int,
    names: list[str],
    modes: list[str],
    types: list[int],
    type_names: dict[int, str],
) -> list[Target] | None:
    if modes:
        picked = [
            (names[i] if i < len(names) else "", t)
            for i, (m, t) in enumerate(zip(modes, types, strict=False))
            if m in ("i", "b", "v")
        ]
    else:
        picked = [(names[i] if i < len(names) else "", t) for i, t in enumerate(types[:nargs])]
    if any(not name for name, _ in picked):
        return None
    first_default = len(picked) - ndefaults
    return [
        Target(name, sql.SQL(type_names[oid]), i >= first_default)  # the catalogue's own spelling
        for i, (name, oid) in enumerate(picked)
    ]


class Listener:
    """``LISTEN pgrst`` on a connection of its own, in a daemon thread.

    ``on_message`` gets each payload. The thread holds the stand-in only through
    ``on_message``'s owner's weak reference (see :meth:`start`), so a stand-in nobody closed
    still lets its thread end; :meth:`stop` ends it at once.
    """

    poll_seconds = 0.2
    max_delay = 32.0

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._attempted = threading.Event()  # the first connection attempt is over, either way
        self._thread: threading.Thread | None = None

    def start(self, owner: object, on_message: Callable[[object, str], None], *, wait: float) -> bool:
        """Start listening; ``on_message(owner, payload)`` runs while ``owner`` is alive.
        Waits for the first connection attempt (at most ``wait`` seconds) and returns whether
        the ``LISTEN`` is in place; a failed attempt is retried in the background."""
        ref = weakref.ref(owner)
        weakref.finalize(owner, self._stop.set)
        self._thread = threading.Thread(
            target=_listen, args=(self, ref, on_message), name="postgrest-listener", daemon=True
        )
        self._thread.start()
        self._attempted.wait(wait)
        return self._listening.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2 * self.poll_seconds + 5)


def _listen(listener: Listener, ref: weakref.ref[object], on_message: Callable[[object, str], None]) -> None:
    delay = 1.0
    lost = False
    while not listener._stop.is_set():
        try:
            with psycopg.connect(listener._conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                listener._listening.set()
                listener._attempted.set()
                if lost and not _deliver(ref, on_message, "reload schema"):
                    return  # (notifications may have been missed: reload, as PostgREST does)
                delay = 1.0
                while not listener._stop.is_set():
                    for notify in conn.notifies(timeout=listener.poll_seconds):
                        if not _deliver(ref, on_message, notify.payload):
                            return
                    if ref() is None:
                        return
        except psycopg.Error as exc:
            logger.debug("PostgREST stand-in listener lost its connection: %s", type(exc).__name__)
        listener._listening.clear()
        listener._attempted.set()
        lost = True
        listener._stop.wait(delay)
        delay = min(delay * 2, listener.max_delay)


def _deliver(ref: weakref.ref[object], on_message: Callable[[object, str], None], payload: str) -> bool:
    """Hand ``payload`` to the owner; False when it is gone (no strong reference is kept)."""
    owner = ref()
    if owner is None:
        return False
    on_message(owner, payload)
    return True
