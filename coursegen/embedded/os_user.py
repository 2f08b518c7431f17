"""The OS user PostgreSQL (and PgBouncer) run as when this process is root.

PostgreSQL refuses to run as root. When this process is root, the cluster runs as the ``postgres``
OS user if it exists, else as a system user ``coursegen-pg`` created on first use; the data
directory is handed to that user, and the directories it needs to reach are made traversable and
readable for it (``o+x`` on the parents of the data directory, ``o+rX`` on the installation).
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .service import LocalServiceError

logger = logging.getLogger(__name__)

#: OS user PostgreSQL runs as when this process is root, if it exists (Debian's package creates it).
PG_OS_USER = "postgres"
#: OS user created to run PostgreSQL when this process is root and no ``postgres`` user exists.
PG_FALLBACK_OS_USER = "coursegen-pg"


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
    for name in (PG_OS_USER, PG_FALLBACK_OS_USER):
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
