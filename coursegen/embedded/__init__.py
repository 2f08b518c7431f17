"""Embedded servers for ``coursegen dev`` and the tests (see the submodules)."""

from .postgres import (
    LocalPgBouncer,
    LocalPostgres,
    LocalRedis,
    LocalServiceError,
    ServiceStartError,
    debian_pg_bindir,
    embedded_pg_bindir,
    pgbouncer_binary,
)

__all__ = [
    "LocalPgBouncer",
    "LocalPostgres",
    "LocalRedis",
    "LocalServiceError",
    "ServiceStartError",
    "debian_pg_bindir",
    "embedded_pg_bindir",
    "pgbouncer_binary",
]
