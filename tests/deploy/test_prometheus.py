"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests (`promtool test
rules`, synthetic series), the example configuration passes `promtool check config`, and every alert's
runbook link lands on a section of docs/operations.md.  promtool comes from Debian's `prometheus` package
(.ci/run installs it); without it these tests are skipped with that reason."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "heartline.rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")

# What the deployment must be warned about (issue 18), one alert or more each.
EXPECTED_ALERTS = {
    "HeartlineEdgeErrorRate", "HeartlineEdge503", "HeartlineHeartbeatLatencyHigh", "HeartlineWorkerBacklogGrowing",
    "HeartlineWorkerBehind", "HeartlinePostgresUnreachable", "HeartlineRedisUnreachable", "HeartlineTargetDown",
    "HeartlineReaperStalled", "HeartlineBackupStale", "HeartlineBackupFailed", "HeartlineBackupUploadStale",
    "HeartlineRedisMemoryNearLimit", "HeartlineSessionRefusalsSpiking",
}

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: apt-get install prometheus")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=PROMETHEUS)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in res.stdout


@needs_promtool
def test_rules_unit_tests_pass_against_synthetic_series() -> None:
    res = promtool("test", "rules", "heartline.rules.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_rules_unit_tests_can_fail(tmp_path: Path) -> None:
    # the same tests against rules whose backup threshold moved from 26 h to 30 h must fail
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 26 * 3600", "> 30 * 3600"))
    shutil.copy(PROMETHEUS / "heartline.rules.test.yml", tmp_path)
    res = subprocess.run([str(PROMTOOL), "test", "rules", "heartline.rules.test.yml"], capture_output=True,
                         text=True, timeout=120, check=False, cwd=tmp_path)
    assert res.returncode != 0
    assert "alertname: HeartlineBackupStale" in res.stdout + res.stderr


@needs_promtool
def test_example_prometheus_config_passes_promtool_check() -> None:
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_expected_alert_is_shipped_and_each_has_a_unit_test() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS / "heartline.rules.test.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert tested == EXPECTED_ALERTS


def test_every_alert_links_to_its_runbook_section_in_the_docs() -> None:
    # MkDocs (and GitHub) make a heading's id from its text, lowercased: "### HeartlineBackupStale"
    anchors = {re.sub(r"[^a-z0-9_-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
               for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"
        assert rule["labels"]["severity"] in {"warning", "critical"}
