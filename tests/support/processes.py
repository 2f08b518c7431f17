"""Real processes for end-to-end tests: the ``dramatiq`` CLI worker and a producer script."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

# The producer: imports the app exactly as a user's script would, sends the payloads read from
# stdin and prints the message ids; the writer flushes at interpreter exit.
_PRODUCER = """
import importlib, json, sys
import coursegen.actors
request = json.load(sys.stdin)
actors = {}
out = []
for item in request["items"]:
    try:
        spec = item["actor"]
        if spec not in actors:
            module, _, name = spec.partition(":")
            actors[spec] = getattr(importlib.import_module(module), name)
        actor = actors[spec]
        payload = item["payload"]
        if item.get("unserializable"):
            payload = {**payload, "blob": {1, 2, 3}}  # a set: not JSON
        message = actor.send_with_options(args=(payload,), **item.get("options", {}))
        out.append({"job_id": message.message_id})
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps(out))
"""


def app_env(**values: str) -> dict[str, str]:
    """The environment of a subprocess: this one's, plus ``values`` (no stray app settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSEGEN_", "SUPABASE_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(values)
    return env


def send_jobs(
    env: dict[str, str],
    payloads: list[dict[str, Any]],
    *,
    actor: str = "coursegen.actors:generate_course",
    unserializable: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Send jobs (``generate_course`` by default, or ``module:actor``) from a producer process.

    ``unserializable`` adds a value JSON cannot carry to each payload.
    """
    items = [
        {"actor": actor, "payload": p, "options": options, "unserializable": unserializable} for p in payloads
    ]
    return _produce(env, items)


def send_mixed(env: dict[str, str], jobs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Send jobs of several actors (``(module:actor, payload)`` pairs, in order) from one
    producer process."""
    return _produce(env, [{"actor": actor, "payload": payload, "options": {}} for actor, payload in jobs])


def _produce(env: dict[str, str], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", _PRODUCER],
        input=json.dumps({"items": items}),
        capture_output=True,
        text=True,
        env=env,
        timeout=60 + len(items) / 500,  # ~0.2 ms a send; a loaded CI machine may take ten times that
        check=False,
    )
    assert done.returncode == 0, f"producer failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"worker did not stop within {timeout}s:\n{self.log[-3000:]}") from None
        return self.process.returncode


@contextmanager
def dramatiq_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    processes: int = 1,
    threads: int = 2,
    modules: tuple[str, ...] = (),
) -> Iterator[Worker]:
    """``dramatiq coursegen.actors`` as a subprocess, stopped with SIGTERM afterwards.

    Its metrics endpoint listens on a free port of 127.0.0.1 with its files next to the log,
    unless ``env`` says otherwise (never the shared default directory and port 9191).
    """
    env = {
        "dramatiq_prom_db": str(log_path.parent / f"{log_path.stem}-prometheus"),
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(free_port()),
        **env,
    }
    command = [
        str(BIN / "dramatiq"),
        "coursegen.actors",
        *modules,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = Worker(process, log_path)
    try:
        yield worker
    finally:
        worker.stop()
