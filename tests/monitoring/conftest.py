"""What the monitoring files are checked against: the metric names the code really exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"

# A worker process in miniature: boot WorkerPrometheus (Dramatiq's metrics), create the sync
# metrics, give every metric a sample, and list the sample names the endpoint would serve.
_EXPORTED = """
import json, os, sys
os.environ["dramatiq_prom_db"] = sys.argv[1]
from dramatiq.brokers.stub import StubBroker
from middleware.metrics_endpoint import WorkerPrometheus
from middleware.sync_metrics import get_metrics

booted = WorkerPrometheus()
booted.after_process_boot(StubBroker(middleware=[]))
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

objects = list(vars(booted._prometheus).values()) + list(vars(get_metrics()).values())
for metric in [m for m in objects if isinstance(m, MetricWrapperBase)]:
    child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
    getattr(child, {"counter": "inc", "gauge": "set", "histogram": "observe"}[metric._type])(1)
registry = CollectorRegistry()
MultiProcessCollector(registry, path=sys.argv[1])
print(json.dumps(sorted({s.name for family in registry.collect() for s in family.samples})))
"""


@pytest.fixture(scope="session")
def exported_metric_names(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """Sample names a worker's endpoint serves: ``..._total``, ``..._bucket``, gauges, ..."""
    directory = tmp_path_factory.mktemp("prometheus")
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
    done = subprocess.run(
        [sys.executable, "-c", _EXPORTED, str(directory)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return frozenset(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def promtool() -> str:
    """The promtool binary (Debian: `apt-get install prometheus`); CI must have it."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (apt-get install --no-install-recommends prometheus)")
    assert path is not None
    return path
