"""A PostgREST stand-in for tests: an ``httpx`` transport that serves Supabase's REST API from
the real test PostgreSQL, so the real ``supabase`` client can be tested end to end.

No PostgREST server can be installed on these machines, so this module reproduces the parts of
PostgREST 12 (behind Supabase's API gateway) that the status store and the access rules rely on.
Hand it to a client with ``httpx.Client(transport=PostgrestStandIn(url))`` and
``SyncClientOptions(httpx_client=...)``, or serve it over real HTTP with :func:`serve` for
another process.

Reproduced:

* gateway: a request with neither an ``apikey`` header nor ``Authorization`` is refused (401);
  the JWT is taken from ``Authorization: Bearer``, else from ``apikey``;
* JWT: HS256 with a shared secret (:data:`TEST_JWT_SECRET`); ``exp`` checked, ``aud`` not;
  a bad token is 401 ``PGRST301``, an expired one 401 ``PGRST303``, with a
  ``WWW-Authenticate: Bearer`` header; no ``role`` claim means the anonymous role (``anon``);
* each request in one transaction on a connection logged in as ``authenticator`` (read-only
  for ``GET`` and for stable/immutable functions), ``set local role`` to the JWT's role,
  ``request.jwt.claims``, ``request.method``, ``request.path`` and ``request.headers`` set with
  ``set_config(..., true)``, ``search_path`` set to the exposed schema;
* ``POST /rest/v1/rpc/<fn>``: named arguments from a JSON object, the function found in
  ``pg_proc`` by name and argument names (arguments with defaults may be left out), values
  converted like PostgREST's ``json_to_record``; set-returning functions answer a JSON array
  (of objects for row types, of values for scalars), others a single value; ``void`` 204;
  the rows of a set-returning function of a row type filtered by ``?<col>=<op>.<value>`` like
  a table's;
  unknown function 404 ``PGRST202``, ambiguous 300 ``PGRST203``, bad JSON 400 ``PGRST102``;
* tables: ``GET ?select=<*|columns>&<col>=<op>.<value>`` (ops ``eq neq gt gte lt lte is in``)
  with ``order=<col>[.asc|.desc][.nullsfirst|.nullslast],...``, ``limit`` and ``offset``,
  ``POST`` (insert an object or array; ``Prefer: return=representation`` returns the rows),
  ``PATCH`` and ``DELETE`` with the same filters; unknown table 404 ``PGRST205``;
* ``Accept-Profile`` / ``Content-Profile`` limited to the exposed schemas (406 ``PGRST106``);
* errors: body ``{code, message, details, hint}``; SQLSTATE -> HTTP status as PostgREST maps it
  (``42501`` 401 for the anonymous role, else 403; ``23503``/``23505`` 409; ``42883``/``42P01``
  404; ``08*``/``53*`` 503; ``P0001`` 400; ``PTxyz`` xyz; the rest per PostgREST's table, 400
  by default); the database unreachable: 503 ``PGRST000``, connection lost mid-request 503
  ``PGRST001``.

Not reproduced: the gateway's check that ``apikey`` is one of the project's keys (any valid JWT
passes), embedding, ``Range`` headers and counts, ``Prefer`` options other than
``return=representation``, ``GET``/``HEAD`` calls of functions, a function's single unnamed
``json`` parameter, ``PUT`` upserts, ``on_conflict``, role settings (``statement_timeout``),
JWKS/asymmetric keys, ``aud`` checks, the schema cache (the catalog is read per request),
``Content-Range`` totals, response GUCs (``response.headers``/``response.status``), ``PGRST``
raised errors, and the exact message text of PostgREST's own errors.

Every request is counted (:attr:`PostgrestStandIn.requests`, :attr:`PostgrestStandIn.log`), so
benchmarks can report HTTP requests per job.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import pq, sql

#: HS256 secret shared by the stand-in and the keys minted here (>= 32 bytes, as PyJWT wants).
TEST_JWT_SECRET = "coursegen-test-jwt-secret-for-the-postgrest-stand-in"
#: the base URL clients use with the transport (nothing listens there)
STAND_IN_URL = "http://supabase.test"
ANON_ROLE = "anon"
_REST_PREFIX = "/rest/v1/"
_JSON = "application/json; charset=utf-8"
_FILTER_OPS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
}
_RESERVED_PARAMS = {"select", "order", "limit", "offset"}


# -- keys -----------------------------------------------------------------------------------


def mint_jwt(
    role: str | None,
    *,
    secret: str = TEST_JWT_SECRET,
    expires_in: float = 3600,
    **claims: Any,
) -> str:
    """A Supabase-style HS256 JWT; ``role=None`` leaves the ``role`` claim out."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": "supabase", "ref": "coursegen-test", "iat": now}
    payload["exp"] = int(now + expires_in)
    if role is not None:
        payload["role"] = role
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def service_key(**claims: Any) -> str:
    """The service-role key: bypasses RLS, may call ``job_status_apply``."""
    return mint_jwt("service_role", **claims)


def anon_key(**claims: Any) -> str:
    """The anon (publishable) key a browser holds."""
    return mint_jwt(ANON_ROLE, **claims)


def user_token(user_id: str, **claims: Any) -> str:
    """An access token of a signed-in user, as Supabase Auth issues it."""
    return mint_jwt(
        "authenticated", sub=str(user_id), aud="authenticated", email=f"{user_id}@example.test", **claims
    )


# -- errors ---------------------------------------------------------------------------------


@dataclass
class ApiError(Exception):
    """An error response: HTTP status plus PostgREST's JSON body."""

    status: int
    code: str | None
    message: str
    details: str | None = None
    hint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> httpx.Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}
        return httpx.Response(
            self.status,
            content=json.dumps(body).encode(),
            headers={"content-type": _JSON, **self.headers},
        )


#: SQLSTATE (exact, then class) -> HTTP status, as PostgREST 12 maps them; anything else is 400.
_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_CLASS_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 413,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def http_status_for(sqlstate: str, *, anonymous: bool) -> int:
    """PostgREST's HTTP status for a PostgreSQL error."""
    if sqlstate == "42501":
        return 401 if anonymous else 403
    if sqlstate in _EXACT_STATUS:
        return _EXACT_STATUS[sqlstate]
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])
    return _CLASS_STATUS.get(sqlstate[:2], 400)


def _from_pg_error(exc: psycopg.Error, *, anonymous: bool) -> ApiError:
    diag = exc.diag
    sqlstate = exc.sqlstate or "XX000"
    status = http_status_for(sqlstate, anonymous=anonymous)
    return ApiError(
        status,
        sqlstate,
        diag.message_primary or str(exc),
        diag.message_detail,
        diag.message_hint,
        {"www-authenticate": "Bearer"} if status == 401 else {},
    )


def _jwt_error(code: str, message: str) -> ApiError:
    return ApiError(
        401,
        code,
        message,
        headers={"www-authenticate": f'Bearer error="invalid_token", error_description="{message}"'},
    )


# -- the transport --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the stand-in saw it."""

    method: str
    path: str
    role: str | None
    status: int


@dataclass
class _Target:
    """An input argument of a function."""

    name: str
    type: sql.Composable
    has_default: bool


class PostgrestStandIn(httpx.BaseTransport):
    """Serves ``/rest/v1/...`` from PostgreSQL like PostgREST does (see the module docstring).

    ``conninfo`` names the database; the stand-in logs in as ``authenticator`` (trust
    authentication on the test clusters) unless ``authenticator_conninfo`` is given.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        jwt_secret: str = TEST_JWT_SECRET,
        schemas: tuple[str, ...] = ("public",),
        anon_role: str = ANON_ROLE,
        connect_timeout: int = 3,
        authenticator_conninfo: str | None = None,
    ) -> None:
        self._conninfo = authenticator_conninfo or psycopg.conninfo.make_conninfo(
            conninfo, user="authenticator", password="", connect_timeout=connect_timeout
        )
        self._secret = jwt_secret
        self.schemas = schemas
        self.anon_role = anon_role
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self.log: list[Call] = []

    def __repr__(self) -> str:
        return f"PostgrestStandIn(schemas={self.schemas!r}, requests={self.requests})"

    @property
    def requests(self) -> int:
        """HTTP requests served so far (any outcome)."""
        return len(self.log)

    def reset_counts(self) -> None:
        with self._lock:
            self.log = []

    # httpx entry point
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        role: str | None = None
        try:
            request.read()
            claims = self._authenticate(request)
            role = str(claims.get("role") or self.anon_role)
            response = self._route(request, claims, role)
        except ApiError as exc:
            response = exc.response()
        with self._lock:
            self.log.append(Call(request.method, request.url.path, role, response.status_code))
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- gateway and JWT --------------------------------------------------------------------

    def _authenticate(self, request: httpx.Request) -> dict[str, Any]:
        authorization = request.headers.get("authorization")
        apikey = request.headers.get("apikey")
        if not authorization and not apikey:
            raise ApiError(
                401,
                None,
                "No API key found in request",
                hint="No `apikey` request header or url param was found.",
            )
        token = apikey
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _jwt_error("PGRST301", "Invalid Authorization header")
            token = value.strip()
        assert token is not None
        if token.count(".") != 2:
            raise _jwt_error("PGRST301", f"Expected 3 parts in JWT; got {token.count('.') + 1}")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"verify_aud": False, "verify_iat": False}
            )
        except jwt.ExpiredSignatureError:
            raise _jwt_error("PGRST303", "JWT expired") from None
        except jwt.InvalidSignatureError:
            raise _jwt_error("PGRST301", "JWSError JWSInvalidSignature") from None
        except jwt.InvalidTokenError as exc:
            raise _jwt_error("PGRST301", f"JWT could not be decoded: {type(exc).__name__}") from None
        if not isinstance(claims, dict):
            raise _jwt_error("PGRST303", "JWT claims must be a JSON object")
        return claims

    # -- routing ----------------------------------------------------------------------------

    def _route(self, request: httpx.Request, claims: dict[str, Any], role: str) -> httpx.Response:
        path = request.url.path
        if not path.startswith(_REST_PREFIX):
            raise ApiError(404, None, "no Route matched with those values")
        resource = path[len(_REST_PREFIX) :].strip("/")
        method = request.method.upper()
        profile_header = "accept-profile" if method in ("GET", "HEAD") else "content-profile"
        schema = request.headers.get(profile_header, self.schemas[0])
        if schema not in self.schemas:
            raise ApiError(
                406, "PGRST106", f"The schema must be one of the following: {', '.join(self.schemas)}"
            )
        if resource.startswith("rpc/"):
            if method != "POST":
                raise ApiError(405, "PGRST101", f"Only POST calls of functions are reproduced, not {method}")
            return self._rpc(request, claims, role, schema, resource[len("rpc/") :])
        if not resource or "/" in resource:
            raise ApiError(404, None, "no Route matched with those values")
        return self._table(request, claims, role, schema, resource)

    @contextmanager
    def _transaction(
        self, request: httpx.Request, claims: dict[str, Any], role: str, schema: str, *, read_only: bool
    ) -> Iterator[psycopg.Connection[Any]]:
        conn = self._connect()
        ok = False
        try:
            with conn.transaction():
                if read_only:
                    conn.execute("set transaction read only")
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                headers = {k.lower(): v for k, v in request.headers.items()}
                conn.execute(
                    "select pg_catalog.set_config('search_path', %s, true), "
                    "pg_catalog.set_config('request.jwt.claims', %s, true), "
                    "pg_catalog.set_config('request.method', %s, true), "
                    "pg_catalog.set_config('request.path', %s, true), "
                    "pg_catalog.set_config('request.headers', %s, true)",
                    (
                        sql.Identifier(schema).as_string(conn),
                        json.dumps(claims),
                        request.method,
                        request.url.path,
                        json.dumps(headers),
                    ),
                )
                yield conn
            ok = True
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or conn.closed or conn.broken:
                raise ApiError(
                    503, "PGRST001", "Database client error. Retrying the connection.", _first_line(exc)
                ) from None
            raise _from_pg_error(exc, anonymous=role == self.anon_role) from None
        except psycopg.Error as exc:
            ok = not (conn.closed or conn.broken)
            raise _from_pg_error(exc, anonymous=role == self.anon_role) from None
        finally:
            self._release(conn, ok)

    def _connect(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.OperationalError as exc:
            raise ApiError(
                503, "PGRST000", "Database connection error. Retrying the connection.", _first_line(exc)
            ) from None

    def _release(self, conn: psycopg.Connection[Any], ok: bool) -> None:
        if ok and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with self._lock:
                if len(self._idle) < 8:
                    self._idle.append(conn)
                    return
        conn.close()

    # -- functions --------------------------------------------------------------------------

    def _rpc(
        self, request: httpx.Request, claims: dict[str, Any], role: str, schema: str, name: str
    ) -> httpx.Response:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(
                400, "PGRST102", "Empty or invalid json", "a function takes a JSON object of arguments"
            )
        fn = self._find_function(schema, name, set(body))
        read_only = fn["provolatile"] in ("s", "i")
        with self._transaction(request, claims, role, schema, read_only=read_only) as conn:
            where, values = _filters(request, "_pgrst_call")
            if any(key not in _RESERVED_PARAMS for key in request.url.params):
                if not (fn["proretset"] and fn["composite"]):
                    raise ApiError(
                        400,
                        "PGRST100",
                        "filters on a function's result are reproduced for set-returning functions"
                        " of a row type only",
                    )
            values["body"] = json.dumps(body)
            text = conn.execute(_call_sql(schema, name, fn, where), values).fetchone()[0]
        if fn["void"]:
            return httpx.Response(204)
        return httpx.Response(200, content=(text or "null").encode(), headers={"content-type": _JSON})

    def _find_function(self, schema: str, name: str, keys: set[str]) -> dict[str, Any]:
        conn = self._connect()
        ok = False
        try:
            rows = conn.execute(
                "select p.oid, p.proretset, p.provolatile, p.pronargs, p.pronargdefaults, "
                "  coalesce(p.proargnames, '{}') as names, coalesce(p.proargmodes::text[], '{}') as modes, "
                "  coalesce(p.proallargtypes, p.proargtypes::oid[]) as types, "
                "  rt.typtype = 'c' or p.prorettype = 'record'::regtype as composite, "
                "  p.prorettype = 'void'::regtype as void "
                "from pg_catalog.pg_proc as p "
                "join pg_catalog.pg_namespace as n on n.oid = p.pronamespace "
                "join pg_catalog.pg_type as rt on rt.oid = p.prorettype "
                "where n.nspname = %s and p.proname = %s and p.prokind = 'f'",
                (schema, name),
            ).fetchall()
            matches = []
            for oid, retset, volatile, nargs, ndefaults, names, modes, types, composite, void in rows:
                targets = _input_args(conn, nargs, ndefaults, names, modes, types)
                if targets is None:
                    continue  # an unnamed argument: not callable with named arguments
                required = {t.name for t in targets if not t.has_default}
                if required <= keys <= {t.name for t in targets}:
                    matches.append(
                        {
                            "oid": oid,
                            "proretset": retset,
                            "provolatile": volatile,
                            "composite": composite,
                            "void": void,
                            "args": [t for t in targets if t.name in keys],
                        }
                    )
            ok = True
        finally:
            self._release(conn, ok)
        args = ", ".join(sorted(keys))
        if not matches:
            raise ApiError(
                404,
                "PGRST202",
                f"Could not find the function {schema}.{name}({args}) in the schema cache",
                f"Searched for the function {schema}.{name} with parameters {args or '(none)'}, "
                "but no matches were found in the schema cache.",
            )
        if len(matches) > 1:
            raise ApiError(
                300, "PGRST203", f"Could not choose the best candidate function for {schema}.{name}({args})"
            )
        return matches[0]

    # -- tables -----------------------------------------------------------------------------

    def _table(
        self, request: httpx.Request, claims: dict[str, Any], role: str, schema: str, name: str
    ) -> httpx.Response:
        table = sql.Identifier(schema, name)
        self._check_table(schema, name)
        method = request.method.upper()
        where, values = _filters(request, schema, name)
        representation = "return=representation" in request.headers.get("prefer", "")
        if method in ("GET", "HEAD"):
            query = sql.SQL(
                "select coalesce(pg_catalog.json_agg(_pgrst_t), '[]')::text "
                "from (select {} from {} where {}{}) _pgrst_t"
            ).format(_columns(request), table, where, _order_and_range(request))
            with self._transaction(request, claims, role, schema, read_only=True) as conn:
                text = conn.execute(query, values).fetchone()[0]
            return httpx.Response(200, content=text.encode(), headers={"content-type": _JSON})
        if method == "POST":
            body = _json_body(request)
            rows = body if isinstance(body, list) else [body]
            if not rows or not all(isinstance(r, dict) for r in rows):
                raise ApiError(400, "PGRST102", "Empty or invalid json")
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in sorted({k for r in rows for k in r}))
            statement = sql.SQL(
                "insert into {t} ({c}) select {c} "
                "from pg_catalog.json_populate_recordset(null::{t}, %(body)s::json) "
                "returning *"
            ).format(t=table, c=cols)
            status = 201
        elif method == "PATCH":
            body = _json_body(request)
            if not isinstance(body, dict) or not body:
                raise ApiError(400, "PGRST102", "Empty or invalid json")
            assignments = sql.SQL(", ").join(
                sql.SQL("{c} = _pgrst_body.{c}").format(c=sql.Identifier(c)) for c in sorted(body)
            )
            statement = sql.SQL(
                "update {t} set {a} "
                "from pg_catalog.json_populate_record(null::{t}, %(body)s::json) as _pgrst_body "
                "where {w} returning {t}.*"
            ).format(t=table, a=assignments, w=where)
            status = 200 if representation else 204
        elif method == "DELETE":
            body = None
            statement = sql.SQL("delete from {t} where {w} returning {t}.*").format(t=table, w=where)
            status = 200 if representation else 204
        else:
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")
        query = sql.SQL(
            "with _pgrst_rows as ({}) "
            "select coalesce(pg_catalog.json_agg(_pgrst_rows), '[]')::text from _pgrst_rows"
        ).format(statement)
        with self._transaction(request, claims, role, schema, read_only=False) as conn:
            text = conn.execute(query, {**values, "body": json.dumps(body)}).fetchone()[0]
        if representation:
            return httpx.Response(status, content=text.encode(), headers={"content-type": _JSON})
        return httpx.Response(201 if status == 201 else 204)

    def _check_table(self, schema: str, name: str) -> None:
        conn = self._connect()
        ok = False
        try:
            found = conn.execute(
                "select 1 from pg_catalog.pg_class c "
                "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p', 'v', 'm', 'f')",
                (schema, name),
            ).fetchone()
            ok = True
        finally:
            self._release(conn, ok)
        if found is None:
            raise ApiError(404, "PGRST205", f"Could not find the table '{schema}.{name}' in the schema cache")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _json_body(request: httpx.Request) -> Any:
    content_type = request.headers.get("content-type", "application/json")
    if not content_type.startswith("application/json"):
        raise ApiError(415, "PGRST107", f"Content-Type not acceptable: {content_type}")
    try:
        return json.loads(request.content or b"")
    except ValueError:
        raise ApiError(400, "PGRST102", "Empty or invalid json") from None


def _input_args(
    conn: psycopg.Connection[Any],
    nargs: int,
    ndefaults: int,
    names: list[str],
    modes: list[str],
    types: list[int],
) -> list[_Target] | None:
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
    type_names = dict(
        conn.execute(
            "select t.oid, pg_catalog.json_build_array(n.nspname, t.typname) from pg_catalog.pg_type t "
            "join pg_catalog.pg_namespace n on n.oid = t.typnamespace where t.oid = any(%s)",
            ([t for _, t in picked],),
        ).fetchall()
    )
    first_default = len(picked) - ndefaults
    return [
        _Target(name, sql.Identifier(*type_names[oid]), i >= first_default)
        for i, (name, oid) in enumerate(picked)
    ]


def _call_sql(schema: str, name: str, fn: dict[str, Any], where: sql.Composable) -> sql.Composed:
    args: list[_Target] = fn["args"]
    function = sql.Identifier(schema, name)
    scalar = not fn["composite"]
    alias = sql.SQL("_pgrst_call(pgrst_scalar)" if scalar else "_pgrst_call")
    if args:
        source = sql.SQL(
            "pg_catalog.json_to_record(%(body)s::json) as _pgrst_args({defs}), "
            "lateral {fn}({call}) as {alias}"
        ).format(
            defs=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(a.name), a.type) for a in args),
            fn=function,
            call=sql.SQL(", ").join(
                sql.SQL("{n} := _pgrst_args.{n}").format(n=sql.Identifier(a.name)) for a in args
            ),
            alias=alias,
        )
    else:
        source = sql.SQL("{fn}() as {alias}").format(fn=function, alias=alias)
    value = sql.SQL("_pgrst_call.pgrst_scalar" if scalar else "_pgrst_call")
    if fn["proretset"]:
        shape = sql.SQL("coalesce(pg_catalog.json_agg({}), '[]')::text").format(value)
    else:
        shape = sql.SQL("pg_catalog.to_json({})::text").format(value)
    return sql.SQL("select {} from {} where {}").format(shape, source, where)


def _columns(request: httpx.Request) -> sql.Composable:
    select = request.url.params.get("select", "*").replace(" ", "")
    if select == "*":
        return sql.SQL("*")
    names = select.split(",")
    if not all(n and n.replace("_", "").isalnum() for n in names):
        raise ApiError(400, "PGRST100", f'"failed to parse select parameter ({select})"')
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _order_and_range(request: httpx.Request) -> sql.Composable:
    """``order=<col>[.asc|.desc][.nullsfirst|.nullslast],...``, ``limit=<n>``, ``offset=<n>``."""
    params = request.url.params
    parts: list[sql.Composable] = []
    order = params.get("order")
    if order:
        terms = []
        for term in order.split(","):
            column, *modifiers = term.strip().split(".")
            direction, nulls = "asc", ""
            for modifier in modifiers:
                if modifier in ("asc", "desc"):
                    direction = modifier
                elif modifier in ("nullsfirst", "nullslast"):
                    nulls = " nulls first" if modifier == "nullsfirst" else " nulls last"
                else:
                    column = ""
            if not column or not column.replace("_", "").isalnum():
                raise ApiError(400, "PGRST100", f'"failed to parse order ({order})" (line 1, column 1)')
            terms.append(
                sql.SQL("{} {}{}").format(sql.Identifier(column), sql.SQL(direction), sql.SQL(nulls))
            )
        parts.append(sql.SQL(" order by ") + sql.SQL(", ").join(terms))
    for key in ("limit", "offset"):
        value = params.get(key)
        if value is None:
            continue
        if not value.isdigit():
            raise ApiError(400, "PGRST100", f'"failed to parse {key} ({value})"')
        parts.append(sql.SQL(f" {key} {int(value)}"))
    return sql.Composed(parts)


def _filters(request: httpx.Request, *relation: str) -> tuple[sql.Composable, dict[str, Any]]:
    """The query's filters (``?col=op.value``) on the columns of ``relation`` (a table's schema
    and name, or the alias of a function call's result)."""
    conditions: list[sql.Composable] = []
    values: dict[str, Any] = {}
    for i, (column, expression) in enumerate(request.url.params.multi_items()):
        if column in _RESERVED_PARAMS:
            continue
        op, _, value = expression.partition(".")
        key = f"f{i}"
        target = sql.Identifier(*relation, column)
        if op in _FILTER_OPS:
            conditions.append(
                sql.SQL("{} {} {}").format(target, sql.SQL(_FILTER_OPS[op]), sql.Placeholder(key))
            )
            values[key] = value
        elif op == "is" and value in ("null", "true", "false"):
            conditions.append(sql.SQL("{} is {}").format(target, sql.SQL(value)))
        elif op == "in" and value.startswith("(") and value.endswith(")"):
            items = [v.strip().strip('"') for v in value[1:-1].split(",") if v.strip()]
            conditions.append(
                sql.SQL("{}::pg_catalog.text = any({}::pg_catalog.text[])").format(
                    target, sql.Placeholder(key)
                )
            )
            values[key] = items
        else:
            raise ApiError(400, "PGRST100", f'"failed to parse filter ({expression})" (line 1, column 1)')
    where = sql.SQL(" and ").join(conditions) if conditions else sql.SQL("true")
    return where, values


# -- over real HTTP, for other processes -----------------------------------------------------


@contextmanager
def serve(transport: httpx.BaseTransport, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``transport`` over HTTP/1.1 on ``host`` (a free port) in a thread; yields the URL.

    Lets another process (a ``dramatiq`` worker) talk to the stand-in through a real socket.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            request = httpx.Request(
                self.command,
                f"http://{self.headers.get('host', host)}{self.path}",
                headers=[(k, v) for k, v in self.headers.items()],
                content=body,
            )
            response = transport.handle_request(request)
            content = response.read()
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PATCH = do_DELETE = do_HEAD = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, name=f"postgrest-{uuid.uuid4().hex[:6]}", daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def supabase_client(http: httpx.Client, key: str, access_token: str | None = None) -> Any:
    """The real ``supabase`` client on ``http``: ``key`` as the API key and, as a signed-in
    browser does, ``access_token`` (a user's JWT) as the bearer when given."""
    from supabase.lib.client_options import SyncClientOptions

    from supabase import create_client

    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    return create_client(
        STAND_IN_URL,
        key,
        options=SyncClientOptions(
            httpx_client=http, headers=headers, auto_refresh_token=False, persist_session=False
        ),
    )
