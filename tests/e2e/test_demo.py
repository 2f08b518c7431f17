"""`make demo` (`coursegen dev`), the README's first command, as a user runs it: embedded Redis
and PostgreSQL, the real worker, courses generated and followed, one request too thin to become
a course, one job cancelled while it runs; then everything stopped and cleaned up."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import BIN, app_env

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROW = re.compile(r"^  [0-9a-f]{8}  (?P<label>.{16})  (?P<status>\w+)\s+attempt (?P<attempt>\S+)")


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (the demo's servers and worker)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_the_demo_runs_its_jobs_to_their_ends_and_leaves_nothing_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [str(BIN / "coursegen"), "dev", "--workdir", str(workdir), "--jobs", "2"],
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    out = done.stdout
    final = out[out.index("Final rows:") :]
    rows = {m["label"].strip(): m["status"] for line in final.splitlines() if (m := ROW.match(line))}
    assert rows.pop("Too thin") == "failed", final
    assert rows.pop("Cancel me") == "cancelled", final
    assert len(rows) == 2 and set(rows.values()) == {"completed"}, final
    assert "What a course looks like" in final and "  Module: " in final  # the course shown
    assert "  -> " in out  # the cancellation, as the demo user asked for it
    assert out.rstrip().endswith("Stopped the worker, Redis and PostgreSQL."), out[-500:]
    assert not workdir.exists()
    assert _processes_using(workdir) == []
