"""A PostgREST stand-in for tests: an ``httpx`` transport that serves Supabase's REST API from
the real test PostgreSQL, so the real ``supabase`` client can be tested end to end.

No PostgREST server can be installed on these machines, so this module reproduces the parts of
PostgREST 14 (what Supabase runs) behind Supabase's API gateway that the status store, the
reader and the access rules rely on, read against PostgREST's source (``src/library/PostgREST``).
Hand it to a client with ``httpx.Client(transport=PostgrestStandIn(url))`` and
``SyncClientOptions(httpx_client=...)``, or serve it over real HTTP with :func:`serve` for
another process. Its defaults are a Supabase project's.

Reproduced:

* gateway (Supabase's; the self-hosted ``docker/volumes/api/kong.yml`` and
  ``kong-entrypoint.sh`` spell out the rules): a body over ``max_body_bytes`` is refused 413
  (``{"message": ...}``, no PostgREST code) before anything else; a request with neither an
  ``apikey`` header nor ``Authorization`` is refused 401; an ``apikey`` of the new kind
  (``sb_secret_...``, ``sb_publishable_...``) must be one of the project's (:data:`API_KEYS`),
  else 401 ``Invalid API key``; ``Authorization`` goes to PostgREST as sent unless it is
  ``Bearer sb_...``, in which case it must equal the ``apikey`` and the gateway replaces it
  with a short-lived JWT of the key's role (``service_role`` for a secret key, ``anon`` for a
  publishable one); with no ``Authorization`` the ``apikey`` (a legacy JWT) is the token;
* JWT (``Auth/Jwt.hs``): HS256 with a shared secret (:data:`TEST_JWT_SECRET`); ``exp``
  checked, ``aud`` not; a bad token is 401 ``PGRST301``, an expired one 401 ``PGRST303``, with
  a ``WWW-Authenticate: Bearer`` header; no ``role`` claim means the anonymous role (``anon``),
  and ``request.jwt.claims`` gets the role inserted, as PostgREST does;
* schema cache (``AppState/Reload.hs``, :mod:`tests.support.postgrest_schema`): the functions
  and relations of the exposed schemas and the settings of the roles ``authenticator`` may
  switch to are loaded once and reloaded on ``NOTIFY pgrst, 'reload schema'`` (or an empty
  payload; schema and role settings, then the idle connections are dropped, as PostgREST
  flushes its pool), on ``NOTIFY pgrst, 'reload config'`` (role settings), heard on a
  ``LISTEN`` connection of its own, after that connection was lost and came back, or when told
  (:meth:`PostgrestStandIn.reload_schema_cache`). A function created or changed since is
  invisible (404 ``PGRST202``) until then; with no cache loaded yet every request is 503
  ``PGRST002``;
* the connection pool (``docs/references/connection_pool.rst``, ``Config.hs``): at most
  ``db-pool`` connections (10), opened as requests need them and kept; a request that finds
  them all busy waits up to ``db-pool-acquisition-timeout`` (10 s), then 504 ``PGRST003``;
* each request in one transaction (``MainTx.hs``, ``Query/PreQuery.hs``) on a connection logged
  in as ``authenticator`` (so PostgreSQL applies that role's own settings at login, as for
  PostgREST's pool: on Supabase ``statement_timeout`` and ``lock_timeout`` of 8 s), read-only
  for ``GET`` and for stable/immutable functions; then, in PostgREST's order, ``search_path``
  set to the exposed schema, the settings of the JWT's role applied with
  ``set_config(..., true)`` (a role's settings never apply on a role switch by themselves:
  ``anon`` gets its 3 s ``statement_timeout`` only this way; a role without settings, like
  ``service_role``, keeps authenticator's), the role switched to, ``request.jwt.claims``,
  ``request.method``, ``request.path`` and ``request.headers``;
* ``POST /rest/v1/rpc/<fn>``: named arguments from a JSON object, the function found in the
  schema cache by name and argument names (arguments with defaults may be left out), bound as
  PostgREST binds them (``Query/QueryBuilder.hs`` ``callPlanToQuery`` for named parameters and
  a JSON body, ``Query/SqlFragment.hs`` ``fromJsonBodyF``): the body goes to the database as
  one ``json`` parameter, ``json_to_record`` reads it once into a row whose columns are the
  arguments, each declared with its type as ``SchemaCache.hs`` (``funcsSqlQuery``) spells it
  (``type::regtype::text``: ``text[]``, ``double precision[]``, ``job_state[]``; ``character``
  and ``bit`` as their ``varying`` kinds), and the function is called laterally with each
  argument by name (``"job_ids" := pgrst_body."job_ids"``). So an argument of an array type
  takes a JSON array, converted element by element through the element type's input function
  (a JSON string ``"NaN"`` into ``double precision[]`` is NaN, ``null`` is NULL, an enum's label
  is its value), and a JSON array nested inside is a further dimension, not a value (a JSON
  document for a ``text[]`` element must travel as a string). Set-returning functions answer a
  JSON array (of objects for row types, of values for scalars), others a single value (a scalar
  in a subquery column ``pgrst_scalar``, as ``callIt`` does); ``void`` 204;
  the rows of a set-returning function of a row type filtered by ``?<col>=<op>.<value>`` and
  ordered/limited like a table's; unknown function 404 ``PGRST202``, ambiguous 300
  ``PGRST203``, bad JSON 400 ``PGRST102``;
* tables: ``GET ?select=<*|columns>&<col>=<op>.<value>`` (ops ``eq neq gt gte lt lte is in``)
  with ``order=<col>[.asc|.desc][.nullsfirst|.nullslast],...``, ``limit`` and ``offset``,
  ``POST`` (insert an object or array; ``Prefer: return=representation`` returns the rows),
  ``PATCH`` and ``DELETE`` with the same filters; unknown table 404 ``PGRST205``;
* ``db-max-rows`` (``Plan.hs`` ``treeRestrictRange``, ``RangeQuery.hs``): at most ``max_rows``
  rows (Supabase's "Max Rows", 1000 by default) of a table read and of a set-returning
  function's result, after its filters, whatever ``limit`` asks; mutations are not limited;
  ``Content-Range: <first>-<last>/<total>`` on reads and calls, the total ``*`` unless
  ``Prefer: count=exact`` (then counted over the filtered rows before the limit; 206 Partial
  Content when the rows returned are fewer than the total);
* ``Accept-Profile`` / ``Content-Profile`` limited to the exposed schemas (406 ``PGRST106``);
* errors: body ``{code, message, details, hint}``; SQLSTATE -> HTTP status exactly as
  ``mapSQLtoHTTP`` in ``Error.hs`` (:func:`http_status_for`, row by row); the database
  unreachable: 503 ``PGRST000``, connection lost mid-request 503 ``PGRST001``.

Not reproduced: the gateway's check that a legacy JWT ``apikey`` is one of the project's (any
valid JWT passes), its refusal of a secret key sent from a browser, the requirement of an
``apikey`` when ``Authorization`` is sent; embedding, ``Range`` headers, ``planned`` and
``estimated`` counts (counted exactly), ``Prefer`` options other than ``return=representation``
and ``count``, ``GET``/``HEAD`` calls of functions, a function's single unnamed ``json``
parameter, ``PUT`` upserts, ``on_conflict``, a role's ``default_transaction_isolation`` and
function settings hoisted to the transaction (``db-hoisted-tx-settings``), JWKS/asymmetric
keys, ``aud`` checks, response GUCs (``response.headers``/``response.status``), ``PGRST``
raised errors, and the exact message text of PostgREST's own errors.

Every request is counted (:attr:`PostgrestStandIn.requests`, :attr:`PostgrestStandIn.log`), so
benchmarks can report HTTP requests per job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import pq, sql

from .postgrest_schema import Listener, Routine, SchemaCache, load_role_settings, load_schema

logger = logging.getLogger(__name__)

#: HS256 secret shared by the stand-in and the keys minted here (>= 32 bytes, as PyJWT wants).
TEST_JWT_SECRET = "coursegen-test-jwt-secret-for-the-postgrest-stand-in"
#: the project's new API keys, in Supabase's format ``sb_<kind>_<22 random>_<8 checksum>``
TEST_SECRET_KEY = "sb_secret_Q2VydGFpbmx5Tm90UmVhbA_c0ffee42"
TEST_PUBLISHABLE_KEY = "sb_publishable_UHVibGljQnlEZXNpZ24xMjM_0ddba11e"
#: the opaque keys the gateway knows, and the role each one maps to
API_KEYS = {TEST_SECRET_KEY: "service_role", TEST_PUBLISHABLE_KEY: "anon"}
#: Supabase's default "Max Rows" (PostgREST's ``db-max-rows``)
SUPABASE_MAX_ROWS = 1000
#: PostgREST's ``db-pool`` and ``db-pool-acquisition-timeout`` defaults (``Config.hs``)
DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_ACQUISITION_TIMEOUT = 10.0
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
    """The legacy service-role key (a JWT): bypasses RLS, may call ``job_status_write``."""
    return mint_jwt("service_role", **claims)


def anon_key(**claims: Any) -> str:
    """The legacy anon key (a JWT) a browser holds."""
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


#: ``mapSQLtoHTTP`` (``src/library/PostgREST/Error.hs``, PostgREST 14), in its order: the first
#: row whose code equals the SQLSTATE (five characters) or begins it (two) gives the status.
#: The rows that look at the message, the role or the code's digits are in http_status_for.
_STATUS_ROWS: tuple[tuple[str, int], ...] = (
    ("08", 503),  # pg connection err
    ("09", 500),  # triggered action exception
    ("0L", 403),  # invalid grantor
    ("0P", 403),  # invalid role specification
    ("23503", 409),  # foreign_key_violation
    ("23505", 409),  # unique_violation
    ("25006", 405),  # read_only_sql_transaction
    ("21000", 0),  # cardinality_violation: see http_status_for
    ("22023", 0),  # invalid_parameter_value: see http_status_for
    ("25", 500),  # invalid tx state
    ("28", 403),  # invalid auth specification
    ("2D", 500),  # invalid tx termination
    ("38", 500),  # external routine exception
    ("39", 500),  # external routine invocation
    ("3B", 500),  # savepoint exception
    ("40", 500),  # tx rollback
    ("53400", 500),  # config limit exceeded
    ("53", 503),  # insufficient resources
    ("54", 500),  # too complex
    ("55", 500),  # obj not on prereq state
    ("57P01", 503),  # terminating connection due to administrator command
    ("57", 500),  # operator intervention
    ("58", 500),  # system error
    ("F0", 500),  # conf file error
    ("HV", 500),  # foreign data wrapper error
    ("P0001", 400),  # default code for "raise"
    ("P0", 500),  # PL/pgSQL Error
    ("XX", 500),  # internal Error
    ("42883", 0),  # undefined function: see http_status_for
    ("42P01", 404),  # undefined table
    ("42P17", 500),  # infinite recursion
    ("42501", 0),  # insufficient privilege: see http_status_for
    ("PT", 0),  # PTxyz: see http_status_for
)


def http_status_for(sqlstate: str, message: str = "", *, anonymous: bool) -> int:
    """PostgREST's HTTP status for a PostgreSQL error (``mapSQLtoHTTP``); 400 when no row fits.

    ``message`` is the error's primary message; ``anonymous``: the request ran as the anonymous
    role (PostgREST's ``authed`` is "the JWT role is not the anonymous role").
    """
    for code, status in _STATUS_ROWS:
        if sqlstate != code and not (len(code) == 2 and sqlstate.startswith(code)):
            continue
        if code == "21000":  # pg-safeupdate's refusal is a client error, the rest a server error
            return 400 if message.endswith("requires a WHERE clause") else 500
        if code == "22023":  # a JWT naming a role that does not exist
            return 401 if message.startswith("role") and message.endswith("does not exist") else 400
        if code == "42883":
            return 406 if message.startswith("function xmlagg(") else 404
        if code == "42501":
            return 401 if anonymous else 403
        if code == "PT":  # PTxyz answers xyz when xyz is a number
            digits = sqlstate[2:]
            return int(digits) if digits.isascii() and digits.isdigit() else 500
        return status
    return 400


def _from_pg_error(exc: psycopg.Error, *, anonymous: bool) -> ApiError:
    diag = exc.diag
    sqlstate = exc.sqlstate or "XX000"
    message = diag.message_primary or str(exc)
    status = http_status_for(sqlstate, message, anonymous=anonymous)
    return ApiError(
        status,
        sqlstate,
        message,
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


class _GatewayAnswer(Exception):
    """An answer of the gateway itself: ``{"message": ..., "hint": ...}``, no PostgREST code."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        body = {"message": message} | ({"hint": hint} if hint else {})
        self.response = httpx.Response(
            status, content=json.dumps(body).encode(), headers={"content-type": _JSON}
        )


# -- the transport --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the stand-in saw it."""

    method: str
    path: str
    role: str | None
    status: int


@dataclass(frozen=True)
class _Prefer:
    representation: bool
    count: bool


class PostgrestStandIn(httpx.BaseTransport):
    """Serves ``/rest/v1/...`` from PostgreSQL like PostgREST does (see the module docstring).

    ``conninfo`` names the database; the stand-in logs in as ``authenticator`` (trust
    authentication on the test clusters) unless ``authenticator_conninfo`` is given.
    ``max_rows``: PostgREST's ``db-max-rows`` (``None``: no limit); ``max_body_bytes``: the
    gateway's body limit (``None``: none); ``api_keys``: the project's opaque API keys and their
    roles; ``listen``: ``LISTEN pgrst`` for reloads (off: only :meth:`reload_schema_cache`);
    ``pool_size``, ``pool_acquisition_timeout``: PostgREST's ``db-pool`` and
    ``db-pool-acquisition-timeout``.
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
        max_rows: int | None = SUPABASE_MAX_ROWS,
        max_body_bytes: int | None = None,
        api_keys: Mapping[str, str] = API_KEYS,
        listen: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_acquisition_timeout: float = DEFAULT_POOL_ACQUISITION_TIMEOUT,
    ) -> None:
        self._conninfo = authenticator_conninfo or psycopg.conninfo.make_conninfo(
            conninfo, user="authenticator", password="", connect_timeout=connect_timeout
        )
        self._secret = jwt_secret
        self.schemas = schemas
        self.anon_role = anon_role
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self._api_keys = dict(api_keys)
        self._listen = listen
        self.pool_size = pool_size
        self.pool_acquisition_timeout = pool_acquisition_timeout
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._cache_lock = threading.Lock()
        self._cache: SchemaCache | None = None
        self._listener: Listener | None = None
        #: schema cache loads so far (the first, and each reload)
        self.schema_cache_loads = 0
        #: loads of the role settings (with each schema cache load, and on 'reload config')
        self.config_loads = 0
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
            authorization = self._gateway(request)
            claims = self._authenticate(authorization)
            role = str(claims.get("role") or self.anon_role)
            claims = claims | {"role": role}
            cache = self._schema_cache()
            response = self._route(request, authorization, claims, role, cache)
        except ApiError as exc:
            response = exc.response()
        except _GatewayAnswer as answer:
            response = answer.response
        with self._lock:
            self.log.append(Call(request.method, request.url.path, role, response.status_code))
        return response

    def close(self) -> None:
        with self._cache_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._drop_idle()

    # -- the gateway ------------------------------------------------------------------------

    def _gateway(self, request: httpx.Request) -> str | None:
        """What Supabase's gateway lets through, and the ``Authorization`` it forwards."""
        if self.max_body_bytes is not None and len(request.content) > self.max_body_bytes:
            raise _GatewayAnswer(413, "Request Entity Too Large")
        authorization = request.headers.get("authorization")
        apikey = request.headers.get("apikey")
        if not authorization and not apikey:
            raise _GatewayAnswer(
                401, "No API key found in request", "No `apikey` request header or url param was found."
            )
        key_role = None
        if apikey and apikey.startswith("sb_"):
            key_role = self._api_keys.get(apikey)
            if key_role is None:
                raise _GatewayAnswer(
                    401, "Invalid API key", "Double check your Supabase `anon` or `service_role` API key."
                )
        if authorization and not authorization.startswith("Bearer sb_"):
            return authorization  # a user's session, a legacy key: passed on as sent
        if authorization and authorization != f"Bearer {apikey}":
            raise _GatewayAnswer(
                401, "Invalid API key", "An API key in Authorization must equal the apikey header."
            )
        if key_role is not None:
            return f"Bearer {mint_jwt(key_role, secret=self._secret, expires_in=60)}"
        return f"Bearer {apikey}" if apikey else None

    # -- PostgREST's JWT check --------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> dict[str, Any]:
        if authorization is None:
            return {}
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _jwt_error("PGRST301", "Invalid Authorization header")
        token = value.strip()
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

    # -- the schema cache -------------------------------------------------------------------

    def _schema_cache(self) -> SchemaCache:
        """The loaded cache; the first call starts the listener, then loads it."""
        cache = self._cache
        if cache is not None:
            return cache
        with self._cache_lock:
            if self._listen and self._listener is None:
                self._listener = Listener(self._conninfo)
                # LISTEN before the load, so that no change made after the load goes unheard
                self._listener.start(self, PostgrestStandIn._on_notification, wait=10)
            if self._cache is None:
                self._load(schema=True)
            assert self._cache is not None
            return self._cache

    def reload_schema_cache(self) -> None:
        """What ``NOTIFY pgrst, 'reload schema'`` does: reread the catalogue and the role
        settings, then drop the idle connections (PostgREST flushes its pool)."""
        with self._cache_lock:
            self._load(schema=True)

    def _on_notification(self, payload: str) -> None:
        try:
            with self._cache_lock:
                if self._cache is None:
                    return  # nothing loaded yet: the next request loads everything
                if payload in ("", "reload schema"):
                    self._load(schema=True)
                elif payload == "reload config":
                    self._load(schema=False)
        except ApiError:  # the database went away in between: keep what was loaded
            logger.debug("PostgREST stand-in could not reload on %r", payload)

    def _load(self, *, schema: bool) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                role_settings = load_role_settings(conn)
                fresh = load_schema(conn, self.schemas) if schema else None
        except psycopg.Error:
            raise ApiError(
                503, "PGRST002", "Could not query the database for the schema cache. Retrying."
            ) from None
        self.config_loads += 1
        if fresh is None:
            assert self._cache is not None
            self._cache.role_settings = role_settings
            return
        fresh.role_settings = role_settings
        self._cache = fresh
        self.schema_cache_loads += 1
        self._drop_idle()

    # -- routing ----------------------------------------------------------------------------

    def _route(
        self,
        request: httpx.Request,
        authorization: str | None,
        claims: dict[str, Any],
        role: str,
        cache: SchemaCache,
    ) -> httpx.Response:
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
        context = _Context(request, authorization, claims, role, schema, cache, _prefer(request))
        if resource.startswith("rpc/"):
            if method != "POST":
                raise ApiError(405, "PGRST101", f"Only POST calls of functions are reproduced, not {method}")
            return self._rpc(context, resource[len("rpc/") :])
        if not resource or "/" in resource:
            raise ApiError(404, None, "no Route matched with those values")
        return self._table(context, resource)

    @contextmanager
    def _transaction(self, context: _Context, *, read_only: bool) -> Iterator[psycopg.Connection[Any]]:
        conn = self._connect()
        ok = False
        request = context.request
        try:
            with conn.transaction():
                if read_only:
                    conn.execute("set transaction read only")
                headers = {k.lower(): v for k, v in request.headers.items()}
                if context.authorization is not None:
                    headers["authorization"] = context.authorization  # as the gateway forwarded it
                # PreQuery.txVarQuery's order: search_path, the role's settings, the role, ...
                settings = [("search_path", sql.Identifier(context.schema).as_string(conn))]
                settings += context.cache.role_settings.get(context.role, [])
                settings += [
                    ("role", context.role),
                    ("request.jwt.claims", json.dumps(context.claims)),
                    ("request.method", request.method),
                    ("request.path", request.url.path),
                    ("request.headers", json.dumps(headers)),
                ]
                conn.execute(
                    sql.SQL("select {}").format(
                        sql.SQL(", ").join(sql.SQL("pg_catalog.set_config(%s, %s, true)") for _ in settings)
                    ),
                    [item for pair in settings for item in pair],
                )
                yield conn
            ok = True
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or conn.closed or conn.broken:
                raise ApiError(
                    503, "PGRST001", "Database client error. Retrying the connection.", _first_line(exc)
                ) from None
            raise _from_pg_error(exc, anonymous=context.role == self.anon_role) from None
        except psycopg.Error as exc:
            ok = not (conn.closed or conn.broken)
            raise _from_pg_error(exc, anonymous=context.role == self.anon_role) from None
        finally:
            self._release(conn, ok)

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of the pool: an idle one, else a new one while fewer than ``pool_size``
        are in use, else the first one released within ``pool_acquisition_timeout``."""
        if not self._slots.acquire(timeout=self.pool_acquisition_timeout):
            raise ApiError(504, "PGRST003", "Timed out acquiring connection from connection pool.")
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.OperationalError as exc:
            self._slots.release()
            raise ApiError(
                503, "PGRST000", "Database connection error. Retrying the connection.", _first_line(exc)
            ) from None

    def _release(self, conn: psycopg.Connection[Any], ok: bool) -> None:
        try:
            if ok and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
                with self._lock:
                    self._idle.append(conn)
                    return
            conn.close()
        finally:
            self._slots.release()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- functions --------------------------------------------------------------------------

    def _rpc(self, context: _Context, name: str) -> httpx.Response:
        request, schema = context.request, context.schema
        body = _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(
                400, "PGRST102", "Empty or invalid json", "a function takes a JSON object of arguments"
            )
        fn, args = self._find_function(context.cache, schema, name, set(body))
        filtered = any(key not in _RESERVED_PARAMS for key in request.url.params)
        if (filtered or "order" in request.url.params) and not (fn.retset and fn.composite):
            raise ApiError(
                400,
                "PGRST100",
                "filters on a function's result are reproduced for set-returning functions"
                " of a row type only",
            )
        where, values = _filters(request, "_pgrst_source")
        values["body"] = json.dumps(body)
        limit, offset = self._range(request) if fn.retset else (None, 0)
        query = _call_sql(
            schema, name, fn, args, where, _order(request), limit, offset, count=context.prefer.count
        )
        with self._transaction(context, read_only=fn.volatile in ("s", "i")) as conn:
            text, page, total = conn.execute(query, values).fetchone()
        headers = {"content-range": _content_range(offset, page, total)}
        if fn.void:
            return httpx.Response(204, headers=headers)
        return httpx.Response(
            _range_status(offset, page, total),
            content=(text or "null").encode(),
            headers={"content-type": _JSON, **headers},
        )

    def _find_function(
        self, cache: SchemaCache, schema: str, name: str, keys: set[str]
    ) -> tuple[Routine, list[Any]]:
        matches = []
        for routine in cache.routines.get((schema, name), []):
            required = {t.name for t in routine.args if not t.has_default}
            if required <= keys <= {t.name for t in routine.args}:
                matches.append((routine, [t for t in routine.args if t.name in keys]))
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

    def _range(self, request: httpx.Request) -> tuple[int | None, int]:
        """``limit`` and ``offset`` as asked, then restricted to ``db-max-rows``
        (``restrictRange``: the range's end moves to ``offset + max_rows - 1`` at most)."""
        limit, offset = _limit_offset(request)
        if self.max_rows is not None:
            limit = self.max_rows if limit is None else min(limit, self.max_rows)
        return limit, offset

    # -- tables -----------------------------------------------------------------------------

    def _table(self, context: _Context, name: str) -> httpx.Response:
        request, schema = context.request, context.schema
        table = sql.Identifier(schema, name)
        if (schema, name) not in context.cache.relations:
            raise ApiError(404, "PGRST205", f"Could not find the table '{schema}.{name}' in the schema cache")
        method = request.method.upper()
        where, values = _filters(request, schema, name)
        if method in ("GET", "HEAD"):
            limit, offset = self._range(request)
            total = (
                sql.SQL("(select pg_catalog.count(*) from {} where {})").format(table, where)
                if context.prefer.count
                else sql.SQL("null::bigint")
            )
            query = sql.SQL(
                "select coalesce(pg_catalog.json_agg(_pgrst_t), '[]')::text, pg_catalog.count(_pgrst_t), {} "
                "from (select {} from {} where {}{}{}) _pgrst_t"
            ).format(total, _columns(request), table, where, _order(request), _limit_sql(limit, offset))
            with self._transaction(context, read_only=True) as conn:
                text, page, total_rows = conn.execute(query, values).fetchone()
            return httpx.Response(
                _range_status(offset, page, total_rows),
                content=text.encode(),
                headers={"content-type": _JSON, "content-range": _content_range(offset, page, total_rows)},
            )
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
            status = 200 if context.prefer.representation else 204
        elif method == "DELETE":
            body = None
            statement = sql.SQL("delete from {t} where {w} returning {t}.*").format(t=table, w=where)
            status = 200 if context.prefer.representation else 204
        else:
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")
        query = sql.SQL(
            "with _pgrst_rows as ({}) "
            "select coalesce(pg_catalog.json_agg(_pgrst_rows), '[]')::text from _pgrst_rows"
        ).format(statement)
        with self._transaction(context, read_only=False) as conn:
            text = conn.execute(query, {**values, "body": json.dumps(body)}).fetchone()[0]
        if context.prefer.representation:
            return httpx.Response(status, content=text.encode(), headers={"content-type": _JSON})
        return httpx.Response(201 if status == 201 else 204)


@dataclass(frozen=True)
class _Context:
    """One request, once the gateway and the JWT check let it through."""

    request: httpx.Request
    authorization: str | None
    claims: dict[str, Any]
    role: str
    schema: str
    cache: SchemaCache
    prefer: _Prefer


def _prefer(request: httpx.Request) -> _Prefer:
    tokens = {
        token.strip()
        for value in request.headers.get_list("prefer")
        for token in value.split(",")
        if token.strip()
    }
    return _Prefer(
        representation="return=representation" in tokens,
        count=bool(tokens & {"count=exact", "count=planned", "count=estimated"}),
    )


def _content_range(offset: int, page: int, total: int | None) -> str:
    """``contentRangeH``: ``<first>-<last>/<total>``, ``*`` for an empty page or unknown total."""
    shown = f"{offset}-{offset + page - 1}" if page > 0 and total != 0 else "*"
    return f"{shown}/{'*' if total is None else total}"


def _range_status(offset: int, page: int, total: int | None) -> int:
    """``rangeStatus``: 206 when a counted total holds more rows than were returned; an offset
    past a counted total is 416 ``PGRST103``."""
    if total is None:
        return 200
    if offset > total:
        raise ApiError(416, "PGRST103", "Requested range not satisfiable")
    return 206 if page < total else 200


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


def _call_sql(
    schema: str,
    name: str,
    fn: Routine,
    args: list[Any],
    where: sql.Composable,
    order: sql.Composable,
    limit: int | None,
    offset: int,
    *,
    count: bool,
) -> sql.Composed:
    """``callPlanToQuery`` inside ``mainCall``: the call in a CTE, then its rows filtered,
    ordered and limited like a table's. Answers the body, the page's row count and (``count``)
    the total of the filtered rows."""
    function = sql.Identifier(schema, name)
    scalar = not fn.composite
    if args:
        # fromJsonBodyF: the body as one json parameter, its keys read once by json_to_record
        # into the arguments' types; callPlanToQuery: the function called laterally with each
        # argument by name
        source = sql.SQL(
            "(select %(body)s::pg_catalog.json as json_data) as pgrst_payload, "
            "lateral (select {names} from pg_catalog.json_to_record(pgrst_payload.json_data) "
            "as _({defs}) limit 1) as pgrst_body, "
            "lateral {call}"
        ).format(
            names=sql.SQL(", ").join(sql.Identifier(a.name) for a in args),
            defs=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(a.name), a.type) for a in args),
            call=_call_it(
                function,
                sql.SQL(", ").join(
                    sql.SQL("{n} := pgrst_body.{n}").format(n=sql.Identifier(a.name)) for a in args
                ),
                scalar,
            ),
        )
    else:
        source = _call_it(function, sql.SQL(""), scalar)
    if not fn.retset:
        value = sql.SQL("_pgrst_call.pgrst_scalar" if scalar else "_pgrst_call")
        return sql.SQL("select pg_catalog.to_json({})::text, 1::bigint, null::bigint from {}").format(
            value, source
        )
    total = (
        sql.SQL("(select pg_catalog.count(*) from _pgrst_source where {})").format(where)
        if count
        else sql.SQL("null::bigint")
    )
    return sql.SQL(
        "with _pgrst_source as (select {columns} from {source}) "
        "select coalesce(pg_catalog.json_agg({value}), '[]')::text, pg_catalog.count(_pgrst_t), {total} "
        "from (select * from _pgrst_source where {where}{order}{limit}) _pgrst_t"
    ).format(
        columns=sql.SQL("_pgrst_call.pgrst_scalar" if scalar else "_pgrst_call.*"),
        source=source,
        value=sql.SQL("_pgrst_t.pgrst_scalar" if scalar else "_pgrst_t"),
        total=total,
        where=where,
        order=order,
        limit=_limit_sql(limit, offset),
    )


def _call_it(function: sql.Composable, arguments: sql.Composable, scalar: bool) -> sql.Composable:
    """``callIt``: a scalar (or set of scalars) in a subquery column ``pgrst_scalar``, a row type
    as the function's own columns."""
    if scalar:
        return sql.SQL("(select {}({}) as pgrst_scalar) as _pgrst_call").format(function, arguments)
    return sql.SQL("{}({}) as _pgrst_call").format(function, arguments)


def _columns(request: httpx.Request) -> sql.Composable:
    select = request.url.params.get("select", "*").replace(" ", "")
    if select == "*":
        return sql.SQL("*")
    names = select.split(",")
    if not all(n and n.replace("_", "").isalnum() for n in names):
        raise ApiError(400, "PGRST100", f'"failed to parse select parameter ({select})"')
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _order(request: httpx.Request) -> sql.Composable:
    """``order=<col>[.asc|.desc][.nullsfirst|.nullslast],...``"""
    order = request.url.params.get("order")
    if not order:
        return sql.SQL("")
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
        terms.append(sql.SQL("{} {}{}").format(sql.Identifier(column), sql.SQL(direction), sql.SQL(nulls)))
    return sql.SQL(" order by ") + sql.SQL(", ").join(terms)


def _limit_offset(request: httpx.Request) -> tuple[int | None, int]:
    """``limit=<n>`` (``None``: none asked) and ``offset=<n>`` (0 by default)."""
    found: dict[str, int] = {}
    for key in ("limit", "offset"):
        value = request.url.params.get(key)
        if value is None:
            continue
        if not value.isascii() or not value.isdigit():
            raise ApiError(400, "PGRST100", f'"failed to parse {key} ({value})"')
        found[key] = int(value)
    return found.get("limit"), found.get("offset", 0)


def _limit_sql(limit: int | None, offset: int) -> sql.Composable:
    parts = [sql.SQL(" limit {}").format(sql.Literal(limit))] if limit is not None else []
    if offset:
        parts.append(sql.SQL(" offset {}").format(sql.Literal(offset)))
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

    class Server(ThreadingHTTPServer):
        # a real server's backlog, not socketserver's 5: a hundred clients connecting at once
        # would otherwise see connections reset
        request_queue_size = 1024

    server = Server((host, 0), Handler)
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
