"""The admin's backup banner in real headless Chromium: shown on every page while the newest backup is
older than 26 hours (or the last attempt failed), gone once a fresh backup is recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

# The live admin, Chromium and signed-in tab fixtures live with the resources browser test.
from test_resources_browser import chromium, live_admin, signed_in_page  # noqa: F401

pytestmark = pytest.mark.browser


def record(pg: psycopg.Connection[Any], kind: str, age: timedelta, detail: str | None = None) -> None:
    pg.execute("INSERT INTO backup_events (occurred_at, kind, trigger, name, detail) "
               "VALUES (%s, %s, 'scheduled', 'server_backup_20261129_030000', %s)",
               (datetime.now(UTC) - age, kind, detail))


async def test_stale_backup_shows_a_banner_on_every_page_until_a_fresh_one_exists(
        signed_in_page: Any, pg: psycopg.Connection[Any]) -> None:  # noqa: F811
    page = signed_in_page
    record(pg, "created", timedelta(hours=30))
    for path in ("/", "/licenseview/list/", "/crm/pipeline"):
        await page.goto(path)
        banner = await page.inner_text("#backup-banner")
        assert "Backups need attention" in banner and "the newest backup is 30 h" in banner, path

    record(pg, "failed", timedelta(minutes=5), "create: pg_dump failed: disk full")
    await page.goto("/")
    assert "the last backup attempt failed 5 min ago: create: pg_dump failed: disk full" in \
        await page.inner_text("#backup-banner")

    record(pg, "created", timedelta(minutes=1))
    await page.goto("/")
    assert await page.locator("#backup-banner").count() == 0


async def test_the_login_page_shows_no_banner(chromium: Any, live_admin: str,  # noqa: F811
                                              pg: psycopg.Connection[Any]) -> None:
    record(pg, "created", timedelta(days=3))
    context = await chromium.new_context(base_url=live_admin)
    try:
        page = await context.new_page()
        await page.goto("/login/")
        assert await page.locator("#username").count() == 1
        assert await page.locator("#backup-banner").count() == 0
    finally:
        await context.close()
