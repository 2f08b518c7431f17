"""monitoring/prometheus/alerts.yml: valid, unit-tested with promtool, documented, and reading
only metrics the code exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import MONITORING
from tests.support.promql import metric_names

RULES = MONITORING / "prometheus" / "alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "alerts.test.yml"
ALERTS = {
    "JobStatusSyncFailureRatioHigh",
    "JobStatusSyncLagHigh",
    "JobStatusOutboxNotDraining",
    "JobStatusSyncStalled",
    "JobStatusDeadLetters",
    "JobStatusEventsLost",
    "JobStatusRetentionBehind",
    "JobStatusRetentionLagStale",
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = run(promtool, "check", "rules", str(RULES), cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the failure ratio threshold at 1% a 2% ratio fires."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 0.05", "> 0.01", 1))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "failure ratio of 2%" in done.stdout + done.stderr


def test_the_eight_alerts_exist() -> None:
    assert {rule["alert"] for rule in alert_rules()} == ALERTS


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    checks = [
        check for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for check in test["alert_rule_test"]
    ]
    for alert in ALERTS:
        mine = [check for check in checks if check["alertname"] == alert]
        assert any(check["exp_alerts"] for check in mine), f"{alert} is never tested firing"
        assert any(not check["exp_alerts"] for check in mine), f"{alert} is never tested not firing"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_summary_a_description_and_a_runbook(rule: dict[str, Any]) -> None:
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert rule["labels"]["severity"] in {"warning", "critical"}
    path, _, anchor = annotations["runbook_url"].partition("#")
    # the runbooks of monitoring/README.md, or one of monitoring/runbooks/
    assert path == "monitoring/README.md" or re.fullmatch(r"monitoring/runbooks/[a-z0-9-]+\.md", path), path
    runbook = MONITORING.parent / path
    headings = re.findall(r"^#+ (.+)$", runbook.read_text(), flags=re.MULTILINE)
    assert anchor in {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    assert anchor == rule["alert"].lower()


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alerts_read_only_exported_metrics(
    rule: dict[str, Any], exported_metric_names: frozenset[str]
) -> None:
    names = metric_names(rule["expr"])
    assert names, f"no metric found in {rule['expr']!r}"
    assert names <= exported_metric_names, f"not exported: {sorted(names - exported_metric_names)}"
