"""The dashboard: live sessions, heartbeats per minute, expiring licenses, devices near their limit and
the edges' refusal codes, as charts."""

from __future__ import annotations

import datetime as dt
import http.server
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from admin_rows import device, license_row
from admin_support import Admin, start_live_session
from flask import Flask
from flask.testing import FlaskClient
from shared_support import one

from admin.views.dashboard import parse_refusals
from heartline.settings import Settings

METRICS = """# HELP heartline_edge_refusals_total Error answers by code
# TYPE heartline_edge_refusals_total counter
heartline_edge_refusals_total{code="SESSION_LIMIT_REACHED"} 7.0
heartline_edge_refusals_total{code="HEARTBEAT_TOO_FREQUENT"} 3.0
heartline_edge_refusals_created{code="SESSION_LIMIT_REACHED"} 1.7e9
heartline_edge_requests_total{route="/v1/sessions",method="POST",status="201"} 40.0
"""


@pytest.fixture
def edge_metrics() -> Iterator[str]:
    """A real HTTP server answering /metrics with the edge's exposition format."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_refusal_counts_are_summed_by_code_across_edges() -> None:
    totals = parse_refusals(METRICS + METRICS)
    assert totals == {"SESSION_LIMIT_REACHED": 14, "HEARTBEAT_TOO_FREQUENT": 6}


def test_dashboard_draws_its_charts_from_real_data(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings,
        edge_metrics: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = signed_in
    app: Flask = client.application
    soon = license_row(pg, valid_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=5),
                       license_key="HL-SOON-00001")
    license_row(pg, valid_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=90), license_key="HL-LATER-0001")
    full = license_row(pg, device_limit=2, concurrent_sessions_limit=1, license_key="HL-FULL-00001")
    device(pg, full["id"], "fp-1")
    device(pg, full["id"], "fp-2")
    roomy = license_row(pg, device_limit=10, concurrent_sessions_limit=1, license_key="HL-ROOMY-0001")
    device(pg, roomy["id"], "fp-1")
    start_live_session(admin_settings, soon["id"], "fp-live")
    now = one(pg.execute("SELECT date_trunc('minute', now())"))[0]
    pg.execute("SELECT ensure_heartbeat_partition(%s)", (now.date(),))
    pg.execute("SELECT ensure_heartbeat_partition(%s)", ((now - dt.timedelta(hours=1)).date(),))
    for i in range(9):
        pg.execute("INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token) "
                   "VALUES (%s, %s, %s, %s)", (now - dt.timedelta(minutes=i % 3), f"0-{i}", soon["id"],
                                               str(uuid.uuid4())))
    monkeypatch.setitem(app.config, "HEARTLINE_SETTINGS",
                        admin_settings.replace(admin_edge_metrics_urls=edge_metrics))
    page = client.get("/dashboard/").get_data(as_text=True)
    live = re.search(r'id="live-sessions">.*?<div class="hl-big">(\d+)</div>', page, re.DOTALL)
    assert live and live.group(1) == "1"
    assert "last hour: 9" in page
    assert page.count("<svg") >= 4
    expiring = page[page.index('id="expiring-chart"'):page.index('id="near-limit-chart"')]
    assert "HL-SOON-00001" in expiring and "HL-LATER-0001" not in expiring
    near = page[page.index('id="near-limit-chart"'):page.index('id="refusals-chart"')]
    assert "HL-FULL-00001" in near and "2/2" in near and "HL-ROOMY-0001" not in near
    refusals = page[page.index('id="refusals-chart"'):]
    assert refusals.index("SESSION_LIMIT_REACHED") < refusals.index("HEARTBEAT_TOO_FREQUENT")
    assert "unreachable" not in refusals


def test_dashboard_says_when_edge_metrics_are_unreachable(signed_in: tuple[FlaskClient, Admin],
                                                          admin_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = signed_in
    app: Flask = client.application
    monkeypatch.setitem(app.config, "HEARTLINE_SETTINGS",
                        admin_settings.replace(admin_edge_metrics_urls="http://127.0.0.1:9/metrics"))
    page = client.get("/dashboard/").get_data(as_text=True)
    assert "Edge metrics unreachable: http://127.0.0.1:9/metrics" in page


def test_the_root_sends_to_login_or_dashboard(client: FlaskClient, signed_in: tuple[FlaskClient, Admin],
                                              admin_app: Flask) -> None:
    anonymous = admin_app.test_client()
    assert "/login/" in anonymous.get("/").location
    signed, _ = signed_in
    assert signed.get("/").location.endswith("/dashboard/")
