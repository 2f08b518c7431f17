"""Both status stores, ready for a test database: the store-level suite runs on each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from middleware.stores.base import StatusStore
from middleware.stores.postgres import PostgresStatusStore
from middleware.stores.supabase import SupabaseStatusStore

from .postgrest import STAND_IN_URL, PostgrestStandIn, service_key

STORE_KINDS = ("postgres", "supabase")


@contextmanager
def open_store(kind: str, conninfo: str) -> Iterator[StatusStore]:
    """``postgres``: psycopg straight to ``conninfo``. ``supabase``: the real supabase client with
    the service-role key, through the PostgREST stand-in serving ``conninfo``."""
    if kind == "postgres":
        store = PostgresStatusStore(conninfo)
        try:
            yield store
        finally:
            store.close()
        return
    if kind != "supabase":
        raise ValueError(f"unknown store kind {kind!r}")
    stand_in = PostgrestStandIn(conninfo)
    http = httpx.Client(transport=stand_in)
    supabase_store = SupabaseStatusStore(STAND_IN_URL, service_key(), http_client=http)
    try:
        yield supabase_store
    finally:
        supabase_store.close()
        http.close()
        stand_in.close()
