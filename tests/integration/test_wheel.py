"""The package as a deployment installs it: an sdist and wheels built from this tree carry the
schema, and `coursegen migrate` from a wheel installed in a fresh virtualenv, run from an
unrelated directory, applies every migration; without its SQL it fails, never "up to date".

Offline: the build uses this environment's setuptools (no build isolation, no index), and the
fresh virtualenv gets the wheel alone (``--no-deps``), then sees the project's dependencies
through a ``.pth`` file naming this environment's site-packages (a plain path entry: the
editable install's own ``.pth`` hooks there are not run, so ``coursegen`` comes from the wheel).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import app_env

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "supabase"
# What a checkout holds besides the sources: never part of a build.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    ".coursegen",
)  # fmt: skip


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def pip_wheel(source: Path, out: Path) -> Path:
    ok(
        run(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--quiet", "--wheel-dir", out, source,
            cwd=out.parent,
        )
    )  # fmt: skip
    (wheel,) = out.glob("coursegen-*.whl")
    return wheel


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path  # from the tree, as `pip install .` builds it
    wheel_from_sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An sdist and two wheels, built from a copy of the checkout (the build writes into its source)."""
    root = tmp_path_factory.mktemp("build")
    source = root / "coursegen"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    (root / "sdist").mkdir()
    name = ok(
        run(
            sys.executable, "-c",
            "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
            root / "sdist",
            cwd=source,
        )
    ).strip().splitlines()[-1]  # fmt: skip
    sdist = root / "sdist" / name
    return Built(
        sdist=sdist,
        wheel=pip_wheel(source, root / "wheel"),
        wheel_from_sdist=pip_wheel(sdist, root / "wheel-from-sdist"),
    )


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv holding ``wheel``; returns its bin directory."""
    ok(run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent))
    python = venv / "bin" / "python"
    ok(
        run(
            sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
            "--disable-pip-version-check", "--quiet", wheel,
            cwd=venv.parent,
        )
    )  # fmt: skip
    # Only now, so that pip did not see the editable coursegen and try to replace it.
    purelib = ok(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv))
    (Path(purelib.strip()) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def schema_files() -> dict[str, bytes]:
    """The checkout's SQL by path under supabase/: every migration and the local bootstrap."""
    files = [*SCHEMA.joinpath("migrations").glob("*.sql"), SCHEMA / "bootstrap" / "local.sql"]
    assert len(files) > 1
    return {path.relative_to(SCHEMA).as_posix(): path.read_bytes() for path in files}


def migration_versions() -> set[str]:
    return {path.name.partition("_")[0] for path in SCHEMA.joinpath("migrations").glob("*.sql")}


def test_the_sdist_and_the_wheels_carry_the_schema_and_every_module(built: Built) -> None:
    expected = schema_files()
    with tarfile.open(built.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        in_sdist = {
            member.name.removeprefix(f"{top}/supabase/"): sdist.extractfile(member).read()  # type: ignore[union-attr]
            for member in sdist.getmembers()
            if member.isfile() and member.name.startswith(f"{top}/supabase/")
        }
    assert in_sdist == expected

    modules = {
        path.relative_to(REPO).as_posix()
        for package in ("coursegen", "middleware")
        for path in REPO.joinpath(package).rglob("*.py")
    }
    for wheel in (built.wheel, built.wheel_from_sdist):
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            in_wheel = {
                name.removeprefix("coursegen/sql/"): archive.read(name)
                for name in names
                if name.startswith("coursegen/sql/")
            }
        assert in_wheel == expected, wheel.name
        assert {name for name in names if name.endswith(".py")} == modules, wheel.name
        assert not any(name.startswith("supabase/") for name in names), (
            "nothing lands on supabase-py's package"
        )


def test_an_installed_wheel_migrates_from_an_unrelated_directory(
    built: Built, empty_database_url: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    bin_dir = install(built.wheel, venv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = app_env(DATABASE_URL=empty_database_url)
    env.pop("PYTHONPATH", None)

    where = ok(
        run(
            bin_dir / "python", "-c",
            "import coursegen.migrate as m; print(m.__file__); print(m.migrations_dir())",
            cwd=elsewhere, env=env,
        )
    ).split()  # fmt: skip
    assert all(Path(path).is_relative_to(venv) for path in where), f"not the installed package: {where}"

    applied = ok(run(bin_dir / "coursegen", "migrate", cwd=elsewhere, env=env))
    versions = migration_versions()
    first, retention = applied.strip().splitlines()
    assert first == "applied: " + ", ".join(sorted(versions))
    assert retention.startswith("retention: not scheduled here"), retention  # no pg_cron here
    with psycopg.connect(empty_database_url) as conn:
        recorded = {
            row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")
        }
        job_status = conn.execute("select to_regclass('public.job_status')").fetchone()
    assert recorded == versions
    assert job_status == ("job_status",)

    again = ok(run(bin_dir / "coursegen", "migrate", cwd=elsewhere, env=env))
    assert again.startswith("nothing to apply"), again


@pytest.mark.parametrize(
    ("removed", "says"),
    [("sql/migrations", "no migrations directory at"), ("sql", "the SQL is missing")],
    ids=["no-migrations", "no-sql"],
)
def test_an_installed_wheel_without_its_sql_refuses_to_migrate(
    built: Built, empty_database_url: str, tmp_path: Path, removed: str, says: str
) -> None:
    venv = tmp_path / "venv"
    bin_dir = install(built.wheel, venv)
    package = ok(run(bin_dir / "python", "-c", "import coursegen; print(coursegen.__file__)", cwd=tmp_path))
    shutil.rmtree(Path(package.strip()).parent / removed)
    # A Supabase database (it has auth): the case that used to print "up to date" and apply nothing.
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("create schema auth")
    env = app_env(DATABASE_URL=empty_database_url)
    env.pop("PYTHONPATH", None)

    done = run(bin_dir / "coursegen", "migrate", cwd=tmp_path, env=env)

    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("coursegen migrate: ") and says in line, line
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regnamespace('supabase_migrations')").fetchone() == (None,)
