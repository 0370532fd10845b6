"""Devices per license: the deactivate action frees the place and ends the device's sessions."""

from __future__ import annotations

from typing import Any

import psycopg
from admin_rows import license_row
from admin_support import Admin, action, is_live, plane_events, start_live_session
from flask.testing import FlaskClient
from shared_support import one

from heartline.settings import Settings


def test_deactivating_a_device_ends_its_sessions_and_marks_it_inactive(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, admin = signed_in
    lic = license_row(pg)
    token = start_live_session(admin_settings, lic["id"], "fp-old")
    kept = start_live_session(admin_settings, lic["id"], "fp-new")
    dev_id = one(pg.execute(
        "SELECT id FROM device_registrations WHERE hardware_fingerprint = 'fp-old'"))[0]
    page = client.get(f"/deviceview/list/?_flt_0_license={lic['id']}").get_data(as_text=True)
    assert "fp-old" in page and "fp-new" in page
    page = action(client, "deviceview", "deactivate", [dev_id]).get_data(as_text=True)
    assert "1 live session(s) ended" in page
    active, deactivated_at, reason = one(pg.execute(
        "SELECT is_active, deactivated_at, deactivation_reason FROM device_registrations WHERE id = %s",
        (dev_id,)))
    assert not active and deactivated_at is not None and admin.username in reason
    assert not is_live(admin_settings, lic["id"], token) and is_live(admin_settings, lic["id"], kept)
    ended = [(e.session_token, e.reason)
             for e in plane_events(admin_settings, lic["id"]) if e.kind == "ended"]
    assert ended == [(token, "device_deactivated")]
    assert one(pg.execute("SELECT actor FROM audit_log WHERE table_name = 'device_registrations' "
                      "AND operation = 'UPDATE'"))[0] == f"admin:{admin.username}"
