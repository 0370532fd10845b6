"""A CRM conversion in real headless Chromium: move an institution to won, convert it, follow the link
to the customer, and a second click creates nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

# The live admin, Chromium and signed-in tab fixtures live with the resources browser test.
from test_resources_browser import chromium, live_admin, signed_in_page  # noqa: F401

from heartline import crm

pytestmark = pytest.mark.browser


async def test_won_institution_converts_to_a_customer_in_the_browser(
        signed_in_page: Any, pg: psycopg.Connection[Any]) -> None:  # noqa: F811
    page = signed_in_page
    (inst,) = pg.execute("INSERT INTO crm_institutions (name, city, stage) VALUES"
                         " ('Stadtwerke Kiel', 'Kiel', 'proposal') RETURNING id").fetchone() or (0,)
    pg.execute("INSERT INTO crm_contacts (institution_id, name, email) VALUES (%s, 'Ada', 'ada@swk.example')",
               (inst,))

    await page.goto("/crm/pipeline")
    await page.click("#pipeline [data-stage='proposal'] a:has-text('Stadtwerke Kiel')")
    assert await page.inner_text("#institution-name") == "Stadtwerke Kiel"
    assert await page.locator("#convert-form").count() == 0

    await page.select_option("#stage-form select[name=stage]", "won")
    await page.click("#stage-form button[type=submit]")
    assert await page.inner_text("#stage") == "won"
    assert "Stage: proposal → won" in await page.inner_text("#timeline")

    # A double click sends the form twice; the conversion still happens once.
    await page.dblclick("#convert-form button[type=submit]")
    await page.locator("#customer").wait_for()
    (customer_id, name, email) = pg.execute("SELECT id, name, email FROM customers").fetchone() or (0, "", "")
    assert (name, email) == ("Stadtwerke Kiel", "ada@swk.example")
    assert pg.execute("SELECT count(*) FROM customers").fetchone() == (1,)
    flash = await page.inner_text(".alert")
    assert f"Customer #{customer_id} created." in flash or f"Already converted: customer #{customer_id}." in flash
    assert "Converted to customer" in await page.inner_text("#timeline")
    assert await page.locator("#convert-form").count() == 0
    assert crm.convert_to_customer(pg, inst, actor="admin:other").created is False

    await page.click("#customer")
    await page.wait_for_url(f"**/customerview/show/{customer_id}")
    await page.get_by_text("ada@swk.example").first.wait_for()
    stage_audit = pg.execute(
        "SELECT actor FROM audit_log WHERE table_name = 'crm_institutions' AND operation = 'UPDATE'"
        " AND new_values ->> 'stage' = 'won' AND old_values ->> 'stage' = 'proposal'").fetchall()
    assert stage_audit == [(f"admin:{page.admin.username}",)]
