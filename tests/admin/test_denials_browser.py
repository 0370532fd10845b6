"""The denial dashboard in real headless Chromium: refused starts sent through the edge's HTTP API and
rolled up by the worker show up per license and customer, linked to the license, the customer and its CRM
institution; the period switch and the CSV export (formula cells quoted) work."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest

# Chromium and the signed-in tab live with the resources browser test.
from test_resources_browser import chromium, live_admin, signed_in_page  # noqa: F401

from edge.app import create_app as create_edge
from heartline.apikeys import create_api_key
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown
from worker.history import record_session_events

pytestmark = pytest.mark.browser

# Screenshots for the docs (docs/hooks turns <!-- screenshot: ... --> into them when present).
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
async def edge(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    key = await create_api_key(db, "denials-browser", created_by="tests")
    app = create_edge(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge",
            headers={"X-API-Key": key.key}) as client:
        yield client


@pytest.fixture
async def worker(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[dict[str, Any]]:
    ctx: dict[str, Any] = {"settings": settings.replace(worker_metrics_port=0),
                           "consumer_name": f"denials-{uuid.uuid4().hex[:6]}"}
    await open_resources(ctx)
    try:
        yield ctx
    finally:
        await shutdown(ctx)


async def test_denial_dashboard_and_csv_in_the_browser(
        signed_in_page: Any, pg: psycopg.Connection[Any], edge: httpx.AsyncClient,  # noqa: F811
        worker: dict[str, Any], make_license: Any, make_customer: Any, db: asyncpg.Connection,
        tmp_path: Path) -> None:
    page = signed_in_page
    # A customer that hits its session limit today, with its CRM institution ...
    umbrella = await make_customer("Umbrella Labs")
    full = await make_license(customer_id=umbrella, concurrent_sessions_limit=1, device_limit=3,
                              product="Modeler")
    institution = await db.fetchval("INSERT INTO crm_institutions (name, stage, customer_id) "
                                    "VALUES ('Umbrella Research Institute', 'won', $1) RETURNING id", umbrella)
    await db.execute("INSERT INTO crm_contacts (institution_id, name) VALUES ($1, 'Dr. Ada')", institution)
    body = {"license_key": full["license_key"]}
    assert (await edge.post("/v1/sessions", json={**body, "hardware_fingerprint": "box-1"})).status_code == 201
    for n in range(3):
        refused = await edge.post("/v1/sessions", json={**body, "hardware_fingerprint": f"box-{n + 2}"})
        assert refused.json()["error"]["code"] == "SESSION_LIMIT_REACHED", refused.text
    while await record_session_events(worker):
        pass
    assert pg.execute("SELECT sum(refusals) FROM license_refusals_daily").fetchone() == (3,)
    # ... and one whose name a spreadsheet would run as a formula, refused 20 days ago only.
    formula = await make_customer("=HYPERLINK(\"http://evil.example\",\"x\")")
    old = await make_license(customer_id=formula)
    await db.execute("INSERT INTO license_refusals_daily (license_id, day, code, refusals, last_at) "
                     "VALUES ($1, (now() AT TIME ZONE 'UTC')::date - 20, 'DEVICE_LIMIT_REACHED', 7, "
                     "now() - interval '20 days')", old["id"])

    await page.goto("/denials/?days=7")
    licenses = page.locator("#denial-licenses tbody tr[data-license]")
    assert await licenses.count() == 1
    row = page.locator(f"#denial-licenses tr[data-license='{full['id']}']")
    assert await row.locator(".limit-hits").inner_text() == "3"
    assert "Umbrella Research Institute" in await row.inner_text()
    customer_row = page.locator(f"#denial-customers tr[data-customer='{umbrella}']")
    assert "won" in await customer_row.inner_text()

    await page.click("#denial-periods >> text=30 days")
    await page.wait_for_url("**/denials/?days=30")
    assert await licenses.count() == 2
    # the most refused first
    assert await licenses.first.get_attribute("data-license") == str(old["id"])
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "admin-denials.png"), full_page=True)

    async with page.expect_download() as download_info:
        await page.click("#denials-csv")
    download = await download_info.value
    saved = tmp_path / "denials.csv"
    await download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [(r["license_key"], r["limit_hits"], r["session_limit"], r["device_limit"]) for r in rows] == [
        (old["license_key"], "7", "0", "7"), (full["license_key"], "3", "3", "0")]
    assert rows[0]["customer"].startswith("'=HYPERLINK")  # quoted: text, not a formula
    assert rows[1]["institution"] == "Umbrella Research Institute" and rows[1]["stage"] == "won"

    # the links lead to the CRM institution and the customer
    await page.goto("/denials/?days=30")
    await page.locator(f"#denial-customers tr[data-customer='{umbrella}'] a",
                       has_text="Umbrella Research Institute").click()
    await page.wait_for_url(f"**/crm/institution/{institution}")
    assert "Dr. Ada" in await page.inner_text("body")
    await page.go_back()
    await page.locator(f"#denial-licenses tr[data-license='{full['id']}'] a", has_text="Umbrella Labs").click()
    await page.wait_for_url(f"**/customerview/show/{umbrella}")

    bad = await page.goto("/denials/?days=12")
    assert bad is not None and bad.status == 400
    assert "INVALID_PERIOD" in await page.inner_text("body")


async def test_the_denial_dashboard_asks_for_a_signed_in_admin(chromium: Any, live_admin: str) -> None:  # noqa: F811
    context = await chromium.new_context(base_url=live_admin)
    page = await context.new_page()
    try:
        await page.goto("/denials/export.csv")
        assert "/login" in page.url
    finally:
        await context.close()
