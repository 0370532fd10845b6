"""A pool import in real headless Chromium: sign in (password + TOTP), upload a CSV file, read the
per-line report.  Also defines the live-admin and signed-in-page fixtures test_crm_browser.py uses."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from admin_support import Admin
from flask import Flask
from werkzeug.serving import make_server

from admin.app import create_app
from heartline.settings import Settings

pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    """A Chromium for Playwright: HEARTLINE_TEST_CHROMIUM, the distribution's, or Playwright's own (None)."""
    return os.environ.get("HEARTLINE_TEST_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def live_admin(admin_settings: Settings) -> Iterator[str]:
    """The whole admin served over real HTTP on a free port; yields its base URL."""
    app: Flask = create_app(admin_settings, config={"AUTH_RATE_LIMIT": "10000 per minute"})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Any]:
    # The async API on the suite's event loop: the sync one would run a loop of its own, which the
    # suite's async fixtures (db) then refuse to share the thread with.
    from playwright.async_api import Error, async_playwright

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                                       args=["--no-sandbox"])
        except Error as exc:
            pytest.skip(f"no Chromium for Playwright: {exc.message.splitlines()[0]}")
        yield browser
        await browser.close()


@pytest.fixture
async def signed_in_page(chromium: Any, live_admin: str, make_admin: Callable[..., Admin]) -> AsyncIterator[Any]:
    """A browser tab signed in as a new admin, who enrolled TOTP through the pages; `page.admin` is
    that admin."""
    admin = make_admin("browser")
    context = await chromium.new_context(base_url=live_admin)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    await page.goto("/login/")
    await page.fill("#username", admin.username)
    await page.fill("#password", admin.password)
    await page.click("input[type=submit]")
    admin.secret = (await page.inner_text("#totp-secret")).strip()
    await page.fill("#code", admin.code())
    await page.click("#confirm")
    await page.click("#continue")
    page.admin = admin
    try:
        yield page
    finally:
        await context.close()


async def test_pool_import_in_the_browser_reports_each_line(
        signed_in_page: Any, pg: psycopg.Connection[Any]) -> None:
    page = signed_in_page
    await page.goto("/resources/import")
    await page.select_option("#resource_type", "domain")
    await page.set_input_files("#file", files=[{
        "name": "domains.csv", "mimeType": "text/csv",
        "buffer": "domain\nshop.example\nBücher.example\nbad_name.example\nshop.example\n".encode()}])
    await page.click("#import-form button[type=submit]")

    rows = page.locator("#import-report tbody tr")
    await rows.first.wait_for()
    report = {int(await row.get_attribute("data-line") or 0): await row.get_attribute("data-outcome")
              for row in await rows.all()}
    assert report == {2: "added", 3: "added", 4: "refused", 5: "duplicate"}
    assert "U+005F" in await page.inner_text("#import-report tr[data-line='4']")
    assert "xn--bcher-kva.example" in await page.inner_text("#import-report tr[data-line='3']")
    assert (await page.inner_text("#import-summary")).split() == ["2", "added", "1", "duplicate", "1", "refused"]

    assert pg.execute("SELECT value FROM resource_pools ORDER BY value").fetchall() == [
        ("shop.example",), ("xn--bcher-kva.example",)]
    await page.goto("/resources/")
    assert await page.inner_text("#pool-stats tr[data-type='domain'] td.free") == "2"
    actors = pg.execute("SELECT DISTINCT actor FROM audit_log WHERE table_name = 'resource_pools'").fetchall()
    assert actors == [(f"admin:{page.admin.username}",)]
