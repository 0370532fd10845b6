"""The device-change limit in the admin: set on the license form, the count shown, reset by an action;
every step audited."""

from __future__ import annotations

from typing import Any

import psycopg
from admin_support import Admin, action, post_form
from flask.testing import FlaskClient
from test_licenses import add_customer, add_license, license_form


def test_limit_count_and_reset_in_the_admin(signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    customer = add_customer(client, pg)
    refused = post_form(client, "/licenseview/add", license_form(customer, device_change_limit=-1))
    assert "Between 0 and 1000" in refused.get_data(as_text=True)
    lic = add_license(client, pg, customer, device_change_limit=1)
    assert pg.execute("SELECT device_change_limit FROM licenses WHERE id = %s", (lic["id"],)).fetchone() == (1,)
    (device,) = pg.execute("INSERT INTO device_registrations (license_id, hardware_fingerprint) VALUES (%s, 'a') "
                           "RETURNING id", (lic["id"],)).fetchone() or (0,)
    pg.execute("UPDATE device_registrations SET is_active = false, deactivated_at = now() WHERE id = %s", (device,))
    pg.execute("UPDATE device_changes SET replaced_at = now() WHERE license_id = %s", (lic["id"],))
    assert "1 of 1" in client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)

    page = action(client, "licenseview", "reset_device_changes", [lic["id"]]).get_data(as_text=True)
    assert "device changes counted from now on" in page
    assert "0 of 1" in client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)
    audited = pg.execute("SELECT actor, new_values ? 'device_changes_reset_at' FROM audit_log "
                         "WHERE table_name = 'licenses' AND operation = 'UPDATE' ORDER BY id DESC LIMIT 1").fetchone()
    assert audited == (f"admin:{admin.username}", True)
