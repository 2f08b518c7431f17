"""monitoring/grafana/job-status-sync.json: valid, every panel queries something, every query
reads only metrics the code exports, and the panels the runbooks talk about are there."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import MONITORING
from tests.support.promql import metric_names

DASHBOARD = MONITORING / "grafana" / "job-status-sync.json"

#: what an operator must find on the dashboard
REQUIRED = {
    "job_status_sync_events_total",  # events by status
    "job_status_sync_writes_total",  # failure ratio
    "job_status_sync_failures_total",
    "job_status_sync_write_seconds_bucket",  # write latency percentiles
    "job_status_sync_lag_seconds_bucket",  # lag percentiles
    "job_status_sync_queue_depth",
    "job_status_sync_outbox_depth",
    "job_status_sync_dead_letter_depth",  # durability
    "job_status_sync_lost_events_total",
    "job_status_retention_lag_seconds",  # retention
    "dramatiq_messages_total",  # Dramatiq's own
    "dramatiq_message_errors_total",
    "dramatiq_messages_inprogress",
    "dramatiq_message_duration_milliseconds_bucket",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.extend(panel.get("panels", []))  # panels of a collapsed row
        if panel["type"] != "row":
            out.append(panel)
    return out


def queries() -> list[str]:
    found = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            found.append(re.sub(r"^label_values\((.*), *\w+\)$", r"\1", query["query"]))
    return found


def test_the_dashboard_is_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "job"} <= names
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_panel_has_queries() -> None:
    assert len(panels()) >= 8
    for panel in panels():
        assert panel["title"] and panel["targets"], f"panel {panel['id']} has no query"
        assert all(target["expr"].strip() and target["refId"] for target in panel["targets"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_query_reads_only_exported_metrics(exported_metric_names: frozenset[str]) -> None:
    for expr in queries():
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported_metric_names, f"{expr!r} reads {sorted(names - exported_metric_names)}"


def test_the_dashboard_shows_what_operators_need() -> None:
    used = set().union(*(metric_names(expr) for expr in queries()))
    assert REQUIRED <= used, f"missing: {sorted(REQUIRED - used)}"
    titles = " ".join(panel["title"].lower() for panel in panels())
    for words in ("status", "failure ratio", "latency", "lag", "outbox", "memory", "messages"):
        assert words in titles


def test_the_name_check_catches_a_misspelled_metric(exported_metric_names: frozenset[str]) -> None:
    """What the checks above rely on: a typo or a counter without _total is not exported."""
    for wrong in (
        'sum(rate(job_status_sync_event_total{job=~"$job"}[$__rate_interval]))',
        "sum(rate(job_status_sync_writes[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(job_status_sync_lag_seconds[5m])))",
    ):
        assert not metric_names(wrong) <= exported_metric_names, wrong


def test_every_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables replaced) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr}
        for n, expr in enumerate(
            expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
            for expr in queries()
        )
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "rate(x{job=~}[5m])"])
def test_the_promql_check_can_fail(promtool: str, tmp_path: Path, expr: str) -> None:
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "bad", "expr": expr}]}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
