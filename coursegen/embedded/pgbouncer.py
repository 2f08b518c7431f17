"""PgBouncer (Debian's package) in front of PostgreSQL for the tests and benchmarks."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .os_user import _grant_traverse, _OsUser, _pg_os_user
from .postgres import PG_SUPERUSER, _server_env
from .service import HOST, LocalServiceError, ServiceStartError, _free_port, _log_size, _log_tail, _Service

logger = logging.getLogger(__name__)

#: where Debian's ``pgbouncer`` package puts the binary (``/usr/sbin`` is not on every PATH)
PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
_PGBOUNCER_START_TIMEOUT = 30.0


def pgbouncer_binary() -> Path | None:
    """The ``pgbouncer`` executable (PATH, then Debian's place), or None when not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for candidate in PGBOUNCER_PATHS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class LocalPgBouncer(_Service):
    """PgBouncer on 127.0.0.1 in front of a PostgreSQL server, in transaction mode by default:
    what Supabase's pooler (port 6543) does to a client's connections.

    Every database of ``upstream_host:upstream_port`` is served under its own name; each
    (database, user) gets at most ``pool_size`` server connections, which clients share one
    transaction at a time (a client beyond them waits for one; up to 1,000 clients).
    Authentication is trust, as on the local clusters; ``users`` are the roles it lets in. The
    admin console (database ``pgbouncer``) answers ``SHOW`` commands: :meth:`show`.

    PgBouncer refuses to run as root: when this process is root it runs as the OS user
    PostgreSQL runs as (``postgres``), its directory handed to that user. It runs in the
    foreground of a child process; ``stop()`` ends it (SIGTERM: immediate shutdown).
    """

    service = "PgBouncer"

    def __init__(
        self,
        work_dir: Path,
        upstream_port: int,
        *,
        upstream_host: str = HOST,
        pool_size: int = 10,
        pool_mode: str = "transaction",
        users: tuple[str, ...] = (PG_SUPERUSER,),
        binary: Path | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.users = users
        self.binary = binary
        self.log_path = self.work_dir / "pgbouncer.log"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalServiceError("LocalPgBouncer has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, dbname: str = "postgres", user: str = PG_SUPERUSER) -> str:
        """Connection URL through the pooler, e.g. ``postgresql://postgres@127.0.0.1:PORT/db``."""
        return f"postgresql://{quote(user, safe='')}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        """Write the configuration, start PgBouncer and wait until it accepts connections.

        Raises:
            ServiceStartError: not installed, or it did not come up (the message has its log).
        """
        if self.running:
            return
        binary = self.binary or pgbouncer_binary()
        if binary is None:
            raise ServiceStartError(
                self.service, "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
            )
        user = _pg_os_user()
        if self._port is None:
            self._port = _free_port()
        self._write_config(user)
        offset = _log_size(self.log_path)
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                [str(binary), str(self.work_dir / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.work_dir,
                env=_server_env(),
                **kwargs,
            )
        except OSError as exc:
            raise ServiceStartError(self.service, f"cannot run {binary}: {exc}") from exc
        deadline = started + _PGBOUNCER_START_TIMEOUT
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.poll()
                self.stop()
                raise ServiceStartError(
                    self.service,
                    f"port {self._port}: " + ("did not start in time" if code is None else f"exited {code}"),
                    _log_tail(self.log_path, offset),
                )
            time.sleep(0.02)
        logger.info(
            "%s listening on %s:%d, %s mode, %d server connections per pool, in front of %s:%d "
            "(started in %.2fs)",
            self.service,
            HOST,
            self._port,
            self.pool_mode,
            self.pool_size,
            self.upstream_host,
            self.upstream_port,
            time.monotonic() - started,
        )

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM), then SIGKILL after 10 s; a no-op if not running."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        logger.info("%s on port %s stopped", self.service, self._port)

    def show(self, what: str) -> list[dict[str, Any]]:
        """The rows of the admin console's ``SHOW <what>`` (``POOLS``, ``SERVERS``, ``CLIENTS``,
        ``STATS``...), as dicts. The console speaks the simple query protocol only."""
        if not what.replace("_", "").isalpha():
            raise ValueError(f"not a SHOW command: {what!r}")
        import psycopg

        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(f"SHOW {what.upper()}".encode())
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise LocalServiceError(f"SHOW {what}: {result.error_message.decode(errors='replace')}")
            names = [result.fname(i).decode() for i in range(result.nfields)]  # type: ignore[union-attr]
            return [
                {
                    name: (None if (value := result.get_value(row, col)) is None else value.decode())
                    for col, name in enumerate(names)
                }
                for row in range(result.ntuples)
            ]

    def __repr__(self) -> str:
        return f"<LocalPgBouncer port={self._port} pool_size={self.pool_size} running={self.running}>"

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _write_config(self, user: _OsUser | None) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        users = "".join(f'"{name}" ""\n' for name in self.users)
        (self.work_dir / "userlist.txt").write_text(users)
        (self.work_dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.upstream_host} port={self.upstream_port}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self._port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.work_dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 1000\n"
            f"admin_users = {PG_SUPERUSER}\n"
            f"stats_users = {PG_SUPERUSER}\n"
            f"logfile = {self.log_path}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        if user is None:
            return
        for path in (self.work_dir, *self.work_dir.iterdir()):
            os.chown(path, user.uid, user.gid)
        _grant_traverse(self.work_dir.parent, user)
