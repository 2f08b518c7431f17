"""Metrics of a fleet of worker processes through one endpoint, and exposition for producers.

Workers (``dramatiq <module> --processes N``): ``middleware.install(broker, ..., metrics=True)``
adds :class:`WorkerPrometheus` to the broker. It wraps Dramatiq's own ``Prometheus``
middleware (no longer a default in Dramatiq 2.x) so that:

* it boots in worker processes only (``after_process_boot``, which only the dramatiq CLI emits):
  a producer importing the same broker module never touches the directory, nor switches
  prometheus_client to multiprocess mode;
* the worker processes and the exposition server agree on ONE directory, :func:`multiproc_dir`
  (``dramatiq_prom_db``, else ``PROMETHEUS_MULTIPROC_DIR``, else Dramatiq's default); both
  variables are set to it before prometheus_client is first imported, so the status-sync
  metrics (:mod:`middleware.sync_metrics`, created when the writer thread starts at worker boot)
  land in it next to Dramatiq's own;
* files left there by the processes of an earlier run are removed at boot
  (:func:`clean_multiproc_dir`): counters restart from zero, no dead process's gauge lingers;
* the CLI forks one exposition server (:func:`serve_worker_metrics`) that merges every worker
  process's files on ``dramatiq_prom_host:dramatiq_prom_port`` (default ``0.0.0.0:9191``).

The directory comes from the environment of the ``dramatiq`` command, not from a constructor
argument: the exposition server is forked from the CLI's main process, which never imports the
broker module, so the environment is all the two sides share.

Producers (a web app, a script, a CLI): :func:`start_metrics_server` or :func:`metrics_wsgi_app`
serve the process's own metrics (the ``pending`` events it wrote).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from dramatiq import Broker, Message, Middleware

from .sync_metrics import get_metrics

logger = logging.getLogger(__name__)

#: Dramatiq's default directory (``dramatiq.middleware.metrics_endpoint.DB_PATH``)
DEFAULT_DIR = os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
DEFAULT_HOST = "0.0.0.0"  # Dramatiq's default: scraped from other hosts
DEFAULT_PORT = 9191

# prometheus_client's per-process files: counter_<pid>.db, histogram_<pid>.db, gauge_<mode>_<pid>.db
_PROCESS_FILE = re.compile(r"^[a-z]+(?:_[a-z]+)?_(\d+)\.db$")


def multiproc_dir(environ: Mapping[str, str] | None = None) -> str:
    """The one directory of the fleet's metric files.

    ``dramatiq_prom_db`` (Dramatiq's variable) when set, else ``PROMETHEUS_MULTIPROC_DIR``
    (prometheus_client's), else Dramatiq's default. Workers and the exposition server both
    resolve it here, so setting either variable is enough.
    """
    env = os.environ if environ is None else environ
    return env.get("dramatiq_prom_db") or env.get("PROMETHEUS_MULTIPROC_DIR") or DEFAULT_DIR


def clean_multiproc_dir(directory: str, *, parent_pid: int | None = None) -> list[str]:
    """Create ``directory`` and remove the metric files of processes that are not running
    children of ``parent_pid`` (default: this process's parent, the dramatiq CLI), that is the
    files of an earlier run; returns the names removed.

    Called by every worker process as it boots, before it creates any metric: a file with this
    process's own pid is stale too (pids are reused, notably in containers). A sibling's file is
    left alone, so the processes of one fleet can boot in any order without a lock.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    os.makedirs(directory, exist_ok=True)
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _PROCESS_FILE.match(name)
        if match is None or _is_running_child(int(match.group(1)), parent):
            continue
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:  # another sibling removed it first
            continue
        removed.append(name)
    return removed


def _is_running_child(pid: int, parent: int) -> bool:
    if pid == os.getpid():
        return False
    if not os.path.isdir("/proc/self"):  # no procfs: settle for "running"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return False
    # "pid (command) state ppid ...": the command may hold spaces and parentheses
    return int(fields[fields.rindex(b")") + 2 :].split()[1]) == parent


class WorkerPrometheus(Middleware):
    """Dramatiq's ``Prometheus`` middleware, booted in worker processes only (see the module).

    :func:`middleware.install` places it. A message that a middleware placed before it skips
    or fails before it starts (the status middleware skips cancelled jobs) is counted as
    processed without leaving Dramatiq's in-progress gauge at -1, which plain ``Prometheus``
    would do.
    """

    def __init__(self) -> None:
        self.directory: str | None = None
        self._prometheus: Any = None

    def __repr__(self) -> str:
        return f"WorkerPrometheus(directory={self.directory!r})"

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_worker_metrics]

    def after_process_boot(self, broker: Broker) -> None:
        directory = multiproc_dir()
        other = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if other and os.path.abspath(other) != os.path.abspath(directory):
            logger.warning(
                "dramatiq_prom_db and PROMETHEUS_MULTIPROC_DIR differ; using dramatiq_prom_db (%s).",
                directory,
                extra={"action": "metrics_dir_conflict"},
            )
        removed = clean_multiproc_dir(directory)
        if removed:
            logger.info(
                "Removed %d metric files of an earlier run from %s.",
                len(removed),
                directory,
                extra={"action": "metrics_dir_cleaned", "files": len(removed)},
            )
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        os.environ["dramatiq_prom_db"] = directory
        values = sys.modules.get("prometheus_client.values")
        if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
            logger.error(
                "prometheus_client was imported before this worker process booted: its metrics "
                "stay in memory and are missing from the fleet's endpoint.",
                extra={"action": "metrics_not_multiprocess"},
            )

        from dramatiq.middleware import prometheus as dramatiq_prometheus

        # The module reads dramatiq_prom_db when first imported (normally just now); its hooks
        # read DB_PATH at call time, so a module imported earlier is pointed here too.
        dramatiq_prometheus.DB_PATH = directory
        prometheus = dramatiq_prometheus.Prometheus()
        prometheus.after_process_boot(broker)
        self._prometheus, self.directory = prometheus, directory

    # -- Dramatiq's hooks, delegated once booted ------------------------------------------

    def after_nack(self, broker: Broker, message: Message[Any]) -> None:
        if self._prometheus is not None:
            self._prometheus.after_nack(broker, message)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if self._prometheus is not None:
            self._prometheus.after_enqueue(broker, message, delay)

    def before_delay_message(self, broker: Broker, message: Message[Any]) -> None:
        if self._prometheus is not None:
            self._prometheus.before_delay_message(broker, message)

    def before_process_message(self, broker: Broker, message: Message[Any]) -> None:
        if self._prometheus is not None:
            self._prometheus.before_process_message(broker, message)

    def after_process_message(
        self,
        broker: Broker,
        message: Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self._prometheus is not None:
            self._started(broker, message).after_process_message(
                broker, message, result=result, exception=exception
            )

    def after_skip_message(self, broker: Broker, message: Message[Any]) -> None:
        if self._prometheus is not None:
            self._started(broker, message).after_skip_message(broker, message)

    def _started(self, broker: Broker, message: Message[Any]) -> Any:
        """Dramatiq's middleware, having seen ``message`` start: one skipped or failed by a
        middleware before us never reached our ``before_process_message``; start it now, so
        that the in-progress gauge's decrement that follows has its increment."""
        prometheus = self._prometheus
        if message.message_id not in prometheus.message_start_times:
            prometheus.before_process_message(broker, message)
        return prometheus

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self._prometheus is not None:
            self._prometheus.after_worker_shutdown(broker, worker)


def serve_worker_metrics() -> int:
    """The exposition server the dramatiq CLI forks (``WorkerPrometheus.forks``).

    Serves the merge of every worker process's files in :func:`multiproc_dir` on
    ``dramatiq_prom_host:dramatiq_prom_port``, until the CLI stops it.
    """
    directory = multiproc_dir()
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    host = os.environ.get("dramatiq_prom_host", DEFAULT_HOST)
    port = int(os.environ.get("dramatiq_prom_port", DEFAULT_PORT))

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    _server, thread = start_http_server(port, host, registry=registry)
    logger.info(
        "Serving the worker processes' metrics on http://%s:%d/metrics (files in %s).",
        host,
        port,
        directory,
        extra={"action": "metrics_serving", "port": port},
    )
    thread.join()  # SIGTERM from the CLI ends this process (SystemExit raised here)
    return 0


# -- producers ------------------------------------------------------------------------------


def exposition_registry() -> Any:
    """What this process should expose: the merge of ``PROMETHEUS_MULTIPROC_DIR`` when set
    (a producer that runs several processes, like gunicorn workers), else its own registry."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def start_metrics_server(port: int, addr: str = DEFAULT_HOST) -> tuple[Any, Any]:
    """Serve this producer's metrics on ``addr:port`` from a daemon thread; returns
    ``(server, thread)`` (``server.shutdown()`` stops it).

    For a script or a CLI. Workers need nothing of this: :class:`WorkerPrometheus` serves theirs.
    """
    from prometheus_client import start_http_server

    get_metrics()  # the sync metrics are listed from the first scrape on
    return start_http_server(port, addr, registry=exposition_registry())


def metrics_wsgi_app() -> Callable[..., Any]:
    """A WSGI app serving this producer's metrics, to mount at ``/metrics`` in a web app."""
    from prometheus_client import make_wsgi_app

    get_metrics()
    return make_wsgi_app(exposition_registry())
