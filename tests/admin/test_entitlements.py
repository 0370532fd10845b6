"""Entitlement screens: entitlements with fixed codes, product defaults, and a license's own entitlements
chosen on its form; every change audited with the admin as actor."""

from __future__ import annotations

from typing import Any

import psycopg
from admin_support import Admin, post_form
from flask.testing import FlaskClient
from test_licenses import add_customer, add_license, license_form


def test_entitlements_product_defaults_and_license_entitlements_in_the_admin(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    assert post_form(client, "/entitlementview/add", {"code": "EXPORT_PDF", "name": "PDF export"}).status_code == 302
    assert post_form(client, "/entitlementview/add", {"code": "CLOUD", "name": "Cloud sync"}).status_code == 302
    refused = post_form(client, "/entitlementview/add", {"code": "has space", "name": "x"},
                        follow=True).get_data(as_text=True)
    assert "starting with a letter or digit" in refused
    duplicate = post_form(client, "/entitlementview/add", {"code": "CLOUD", "name": "again"},
                          follow=True).get_data(as_text=True)
    assert "exists already" in duplicate
    ids = dict(pg.execute("SELECT code, id FROM entitlements").fetchall())
    assert set(ids) == {"EXPORT_PDF", "CLOUD"}
    edit_page = client.get(f"/entitlementview/edit/{ids['CLOUD']}").get_data(as_text=True)
    assert 'name="code"' not in edit_page  # codes are fixed once given out

    assert post_form(client, "/productentitlementview/add",
                     {"product": "studio", "entitlement": str(ids["CLOUD"])}).status_code == 302

    customer = add_customer(client, pg)
    lic = add_license(client, pg, customer)
    response = post_form(client, f"/licenseview/edit/{lic['id']}",
                         {**license_form(customer), "entitlements": [str(ids["EXPORT_PDF"])]})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert pg.execute("SELECT entitlement_id FROM license_entitlements WHERE license_id = %s",
                      (lic["id"],)).fetchall() == [(ids["EXPORT_PDF"],)]
    show = client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)
    assert "EXPORT_PDF" in show

    audited = pg.execute("SELECT DISTINCT table_name, actor FROM audit_log WHERE table_name LIKE '%%entitlements' "
                         "ORDER BY 1").fetchall()
    actor = f"admin:{admin.username}"
    assert audited == [("entitlements", actor), ("license_entitlements", actor), ("product_entitlements", actor)]
