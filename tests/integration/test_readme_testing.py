"""README's "Testing your actors" example, run as a user would: its files copied into an empty
project, pytest run there as a subprocess with this project's Python (the kit comes from the
installed package's pytest11 entry points; nothing is installed or configured by hand)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Testing your actors"
_BLOCK = re.compile(r"```python\n# (?P<name>[\w/]+\.py)\b[^\n]*\n(?P<body>.*?)```", re.DOTALL)


def example_files() -> dict[str, str]:
    """The section's Python blocks, by the file name their first line gives."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return {m["name"]: f"# {m['name']}\n{m['body']}" for m in _BLOCK.finditer(section)}


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_example_passes_in_a_project_of_its_own_and_can_fail(pg_admin_url: str, tmp_path: Path) -> None:
    # pg_admin_url: PostgreSQL can run here (else skipped locally, failed in CI); the example
    # starts its own embedded server, as it would on a user's machine
    files = example_files()
    assert sorted(files) == ["app.py", "conftest.py", "test_app.py", "test_rows.py"]
    project = tmp_path / "project"
    project.mkdir()
    for name, body in files.items():
        (project / name).write_text(body, encoding="utf-8")

    done = run_pytest(project, f"--basetemp={tmp_path / 'base'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b4 passed\b", done.stdout), done.stdout

    # a wrong expectation fails: the example asserts something
    test_app = project / "test_app.py"
    test_app.write_text(test_app.read_text().replace('{"words": 4}', '{"words": 5}'), encoding="utf-8")
    wrong = run_pytest(project, "test_app.py", f"--basetemp={tmp_path / 'base2'}")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert re.search(r"\b1 failed, 2 passed\b", wrong.stdout), wrong.stdout
    assert "{'words': 4} == {'words': 5}" in wrong.stdout
