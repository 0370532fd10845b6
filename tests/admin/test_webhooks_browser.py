"""Webhook screens in real headless Chromium: add an endpoint (secret shown once), let the worker deliver
an event to a real receiver that verifies it with `standardwebhooks`, read the delivery log and resend."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

# Chromium and the signed-in tab live with the resources browser test; live_admin is overridden here.
from test_resources_browser import chromium, signed_in_page  # noqa: F401
from webhook_receiver import Receiver
from werkzeug.serving import make_server

from admin.app import create_app
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown
from worker.webhooks import queue_change_webhooks, send_webhooks

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def hook_settings(admin_settings: Settings) -> Settings:
    """Admin and worker share these: the receiver is on 127.0.0.1, so the SSRF guard must allow it."""
    return admin_settings.replace(webhook_allow_private_targets=True, worker_metrics_port=0)


@pytest.fixture(scope="module")
def live_admin(hook_settings: Settings) -> Iterator[str]:
    app: Flask = create_app(hook_settings, config={"AUTH_RATE_LIMIT": "10000 per minute"})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
async def worker(hook_settings: Settings, pg: Any) -> AsyncIterator[dict[str, Any]]:
    ctx: dict[str, Any] = {"settings": hook_settings, "consumer_name": f"browser-{uuid.uuid4().hex[:6]}"}
    await open_resources(ctx)
    try:
        yield ctx
    finally:
        await shutdown(ctx)


async def deliver(ctx: dict[str, Any]) -> None:
    await queue_change_webhooks(ctx)
    while await send_webhooks(ctx):
        pass


async def test_endpoint_delivery_log_and_resend_in_the_browser(
        signed_in_page: Any, pg: psycopg.Connection[Any], worker: dict[str, Any]) -> None:  # noqa: F811
    page = signed_in_page
    receiver = Receiver(secret="")
    receiver.start()
    try:
        await page.goto("/webhookendpointview/add")
        await page.fill("#url", receiver.url)
        await page.fill("#description", "billing system")
        await page.select_option("#event_types", ["license.suspended", "license.revoked"])
        await page.click("form button[type=submit]")
        receiver.secret = (await page.inner_text("#webhook-secret")).strip()
        assert receiver.secret.startswith("whsec_")

        await page.goto("/webhookendpointview/list/")
        listing = await page.inner_text("body")
        assert receiver.url in listing and "license.suspended, license.revoked" in listing
        assert "enabled" in listing

        (customer,) = pg.execute("INSERT INTO customers (name) VALUES ('Umbrella') RETURNING id").fetchone() or (0,)
        (license_id,) = pg.execute("INSERT INTO licenses (customer_id, license_key) VALUES (%s, 'HL-BROWSER-HOOK-1')"
                                   " RETURNING id", (customer,)).fetchone() or (0,)
        pg.execute("UPDATE licenses SET status = 'suspended' WHERE id = %s", (license_id,))
        await deliver(worker)
        got = receiver.accepted()
        assert [(r.payload["type"], r.verified) for r in got] == [("license.suspended", True)]
        assert got[0].payload["data"]["license_key"] == "HL-BROWSER-HOOK-1"

        await page.goto("/webhookdeliveryview/list/")
        row = page.locator("table tr", has_text="license.suspended")
        assert await row.locator(".hl-delivery").get_attribute("data-status") == "delivered"
        await row.locator("a[href*='/webhookdeliveryview/show/']").first.click()
        assert got[0].webhook_id in await page.inner_text("body")
        assert "HL-BROWSER-HOOK-1" in await page.inner_text("pre.hl-payload")
        attempts = page.locator("table", has_text="Latency (ms)")
        assert "200" in await attempts.inner_text() and '{"ok": true}' in await attempts.inner_text()

        await page.click("[id='btn-action-WebhookDeliveryView.action-resend']")
        await page.click("#modal-confirm-ok")
        await page.wait_for_selector("text=queued")
        await deliver(worker)
        ids = [r.webhook_id for r in receiver.accepted()]
        assert ids == [got[0].webhook_id, got[0].webhook_id]  # sent again, under the same webhook-id
        assert pg.execute("SELECT manual FROM webhook_attempts ORDER BY id").fetchall() == [(False,), (True,)]
    finally:
        receiver.stop()


async def test_the_dashboard_tells_of_a_disabled_endpoint_in_the_browser(
        signed_in_page: Any, pg: psycopg.Connection[Any]) -> None:  # noqa: F811
    page = signed_in_page
    pg.execute("INSERT INTO webhook_endpoints (url, secret_encrypted, enabled, disabled_at, disabled_reason) "
               "VALUES ('https://hooks.example/x', 'x', false, now(), "
               "'no successful delivery since 2026-11-25 10:00 UTC')")
    await page.goto("/dashboard/")
    alert = page.locator("#webhook-alerts li[data-state='disabled']")
    assert "hooks.example" in await alert.inner_text()
    await alert.locator("a").click()
    assert "no successful delivery since 2026-11-25 10:00 UTC" in await page.inner_text("body")
