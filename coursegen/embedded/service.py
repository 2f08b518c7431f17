"""The ground every embedded service stands on: the base class, its errors, free ports, log tails.

Every service listens on TCP 127.0.0.1 only, on a free port picked at the first start and kept for
the life of the object: ``stop()`` followed by ``start()`` comes back on the same port, so URLs
handed out before an outage stay valid after it (the fault tests rely on this).
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 40


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
