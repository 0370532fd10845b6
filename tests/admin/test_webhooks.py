"""Webhook screens through the admin's HTTP interface: endpoints (SSRF guard, secret shown once and
stored encrypted, audit), resend, and the dashboard telling of disabled endpoints."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from admin_support import Admin, action, post_form
from flask.testing import FlaskClient

from heartline.settings import Settings
from heartline.webhooks.secrets import SecretBox


def add_endpoint(client: FlaskClient, url: str, events: list[str]) -> str:
    return post_form(client, "/webhookendpointview/add", {"url": url, "description": "CRM sync",
                                                           "event_types": events},
                     follow=True).get_data(as_text=True)


def test_private_and_loopback_targets_are_refused_in_the_form(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    for url in ("http://127.0.0.1:8080/hook", "http://10.0.0.5/hook", "http://169.254.169.254/latest",
                "ftp://93.184.216.34/"):
        page = add_endpoint(client, url, [])
        assert "loopback, private or reserved" in page or "http:// or https://" in page, url
    assert pg.execute("SELECT count(*) FROM webhook_endpoints").fetchone() == (0,)


def test_an_endpoint_is_created_with_a_secret_shown_once_and_stored_encrypted(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, admin = signed_in
    page = add_endpoint(client, "https://93.184.216.34/hooks", ["session.started", "license.suspended"])
    found = re.search(r'id="webhook-secret">(whsec_[A-Za-z0-9+/=]+)<', page)
    assert found, page
    row = pg.execute("SELECT id, url, event_types, secret_encrypted, enabled FROM webhook_endpoints").fetchone()
    assert row and row[1:3] == ("https://93.184.216.34/hooks", ["session.started", "license.suspended"])
    assert found.group(1) not in row[3]
    assert SecretBox(admin_settings).open(row[3]) == found.group(1)
    listing = client.get("/webhookendpointview/list/").get_data(as_text=True)
    assert "session.started, license.suspended" in listing and found.group(1) not in listing
    assert pg.execute("SELECT actor FROM audit_log WHERE table_name = 'webhook_endpoints'").fetchall() == [
        (f"admin:{admin.username}",)]

    action(client, "webhookendpointview", "rotate_secret", [row[0]])
    rotated = pg.execute("SELECT secret_encrypted FROM webhook_endpoints").fetchone()
    assert rotated and SecretBox(admin_settings).open(rotated[0]) != found.group(1)


def test_resend_queues_the_delivery_again_and_the_dashboard_tells_of_disabled_endpoints(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, _admin = signed_in
    sealed = SecretBox(admin_settings).seal("whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=")
    (endpoint,) = pg.execute("INSERT INTO webhook_endpoints (url, secret_encrypted, enabled, disabled_at, "
                             "disabled_reason) VALUES ('https://93.184.216.34/h', %s, false, now(), "
                             "'no successful delivery since 2026-11-25 10:00 UTC') RETURNING id",
                             (sealed,)).fetchone() or (0,)
    pg.execute("INSERT INTO webhook_messages (id, event_type, payload) VALUES ('msg_1', 'license.created', '{}')")
    (delivery,) = pg.execute("INSERT INTO webhook_deliveries (message_id, endpoint_id, status, attempts) "
                             "VALUES ('msg_1', %s, 'failed', 10) RETURNING id", (endpoint,)).fetchone() or (0,)

    page = action(client, "webhookdeliveryview", "resend", [delivery]).get_data(as_text=True)
    assert "queued" in page and "Disabled endpoints get nothing until enabled again" in page
    assert pg.execute("SELECT status, manual_resend, next_attempt_at <= now() FROM webhook_deliveries"
                      ).fetchone() == ("pending", True, True)

    dashboard = client.get("/dashboard/").get_data(as_text=True)
    assert 'id="webhook-alerts"' in dashboard
    assert "no successful delivery since 2026-11-25 10:00 UTC" in dashboard
