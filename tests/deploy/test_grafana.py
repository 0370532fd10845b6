"""deploy/grafana/heartline.json and the alert rules query only metrics that exist: every metric they name
is compared with a real scrape of a running `heartline edge` and `heartline worker` after real traffic
(a device activated, a session started, a heartbeat, a refusal, the worker storing them).  Every
dashboard query must also parse as PromQL (checked by promtool when it is installed)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from ops_stack import running_stack
from prometheus_client.parser import text_string_to_metric_families

from heartline import apikeys

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "heartline.json"
RULES = ROOT / "deploy" / "prometheus" / "heartline.rules.yml"
METRIC = re.compile(r"\bheartline_[a-z0-9_]+\b")
# Series Prometheus itself makes for every target, not exported by Heartline.
PROMETHEUS_OWN = {"up"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def sample_names(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


async def _licensed(database_url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(database_url, server_settings={"heartline.actor": "test"})
    try:
        customer = await conn.fetchval("INSERT INTO customers (name) VALUES ('Dashboard') RETURNING id")
        license_key = f"HL-DASH-{int(time.time() * 1000) % 10**10:010d}"
        await conn.execute("INSERT INTO licenses (customer_id, license_key, device_limit, concurrent_sessions_limit) "
                           "VALUES ($1, $2, 2, 1)", customer, license_key)
        return license_key, (await apikeys.create_api_key(conn, "dashboard test")).key
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def scrapes(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(edge /metrics, worker /metrics) after real traffic, once the worker stored it."""
    license_key, api_key = asyncio.run(_licensed(database_url))
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("dashboard")) as stack, \
            httpx.Client(base_url=stack.edge_url, headers={"X-API-Key": api_key}, timeout=10) as edge:
        device = {"license_key": license_key, "hardware_fingerprint": "fp-dashboard"}
        assert edge.post("/v1/devices/activate", json=device).status_code == 201
        started = edge.post("/v1/sessions", json=device)
        assert started.status_code == 201, started.text
        token = started.json()["session_token"]
        assert edge.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": license_key}).status_code == 200
        # a second device beyond the one-session limit: a refusal with its code
        other = {"license_key": license_key, "hardware_fingerprint": "fp-dashboard-2"}
        assert edge.post("/v1/devices/activate", json=other).status_code == 201
        refused = edge.post("/v1/sessions", json=other)
        assert refused.json()["error"]["code"] == "SESSION_LIMIT_REACHED"
        worker = ""
        for _ in range(300):  # until the worker stored the heartbeat and the session start
            worker = httpx.get(f"{stack.worker_url}/metrics", timeout=10).text
            if ('heartline_worker_heartbeats_stored_total 1.0' in worker
                    and 'heartline_worker_session_events_total{kind="started"} 1.0' in worker):
                break
            time.sleep(0.1)
        return httpx.get(f"{stack.edge_url}/metrics", timeout=10).text, worker


def test_every_dashboard_query_names_metrics_the_running_edge_and_worker_export(
        scrapes: tuple[str, str]) -> None:
    edge, worker = scrapes
    exported = sample_names(edge) | sample_names(worker)
    queries = dashboard_queries()
    named = {name for expr in queries for name in METRIC.findall(expr)}
    assert len(named) >= 15
    assert named - exported == set(), f"the dashboard queries metrics no process exports: {named - exported}"
    # and the scrape really came from both processes
    assert "heartline_edge_requests_total" in exported and "heartline_worker_stream_length" in exported


def test_every_alert_rule_names_metrics_the_running_edge_and_worker_export(scrapes: tuple[str, str]) -> None:
    edge, worker = scrapes
    exported = sample_names(edge) | sample_names(worker) | PROMETHEUS_OWN
    named = {name for expr in rule_queries() for name in METRIC.findall(expr)}
    assert named - exported == set(), f"alerts query metrics no process exports: {named - exported}"


def test_metric_names_are_checked_against_the_scrape_not_assumed() -> None:
    # the comparison above fails for a misspelt metric: a name the scrape never has is reported
    exposition = "# TYPE heartline_live_sessions gauge\nheartline_live_sessions 3.0\n"
    named = set(METRIC.findall("max(heartline_live_session)"))
    assert named - sample_names(exposition) == {"heartline_live_session"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not found: apt-get install prometheus")
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses recording rules: one per query, Grafana's $__rate_interval replaced by a duration
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"heartline_dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "heartline" and dashboard["title"] == "Heartline"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
