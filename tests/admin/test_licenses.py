"""Customers and licenses through the admin: generated keys, form checks that mirror the database CHECKs,
edits reaching the edge's cache, suspend / reactivate / extend, and the audit actor."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
import pytest
import redis
from admin_support import Admin, action, is_live, plane_events, post_form, start_live_session
from flask.testing import FlaskClient
from shared_support import one

from heartline.plane import keys
from heartline.settings import Settings


def add_customer(client: FlaskClient, pg: psycopg.Connection[Any], name: str = "ACME GmbH") -> int:
    response = post_form(client, "/customerview/add", {"name": name, "company": "ACME",
                                                       "email": "ops@acme.example"})
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(one(pg.execute("SELECT max(id) FROM customers WHERE name = %s", (name,)))[0])


def license_form(customer_id: int, **fields: Any) -> dict[str, Any]:
    form = {"customer": str(customer_id), "product": "studio", "device_limit": "3",
            "concurrent_sessions_limit": "2", "heartbeat_interval_s": "", "heartbeat_timeout_s": "",
            "quota_domains": "0", "quota_ipv4": "0", "quota_phones": "0", "notes": "",
            "valid_from": "", "valid_until": ""}
    form.update({k: str(v) for k, v in fields.items()})
    return form


def add_license(client: FlaskClient, pg: psycopg.Connection[Any], customer_id: int,
                **fields: Any) -> dict[str, Any]:
    response = post_form(client, "/licenseview/add", license_form(customer_id, **fields))
    assert response.status_code == 302, response.get_data(as_text=True)
    columns = ("id", "license_key", "status", "device_limit", "concurrent_sessions_limit", "valid_until")
    row = pg.execute(f"SELECT {', '.join(columns)} FROM licenses WHERE customer_id = %s "
                     "ORDER BY id DESC LIMIT 1", (customer_id,)).fetchone()
    assert row
    return dict(zip(columns, row, strict=True))


def test_admin_creates_a_customer_and_a_license_with_a_generated_key(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    customer_id = add_customer(client, pg)
    lic = add_license(client, pg, customer_id, device_limit=4, concurrent_sessions_limit=4)
    assert re.fullmatch(r"HL(-[A-HJ-NP-Z2-9]{5}){4}", lic["license_key"])
    assert (lic["status"], lic["device_limit"], lic["concurrent_sessions_limit"]) == ("active", 4, 4)
    page = client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)
    assert lic["license_key"] in page
    actors = pg.execute("SELECT DISTINCT table_name, actor FROM audit_log "
                        "WHERE table_name IN ('customers', 'licenses') ORDER BY 1").fetchall()
    assert actors == [("customers", f"admin:{admin.username}"), ("licenses", f"admin:{admin.username}")]


def test_a_license_with_more_sessions_than_devices_is_refused_with_a_readable_message(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    customer_id = add_customer(client, pg)
    response = post_form(client, "/licenseview/add",
                         license_form(customer_id, device_limit=2, concurrent_sessions_limit=3))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Concurrent sessions (3) cannot exceed the device limit (2)" in page
    assert one(pg.execute("SELECT count(*) FROM licenses"))[0] == 0


def test_license_limits_outside_the_database_checks_are_refused_in_the_form(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    customer_id = add_customer(client, pg)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"device_limit": 11, "concurrent_sessions_limit": 1}, "The device limit must be between 1 and 10."),
        ({"device_limit": 0, "concurrent_sessions_limit": 1}, "Enter a device limit between 1 and 10."),
        ({"concurrent_sessions_limit": 0}, "Enter a concurrent sessions limit of at least 1."),
        ({"heartbeat_interval_s": 30, "heartbeat_timeout_s": 30},
         "The heartbeat timeout (30 s) must be greater than the heartbeat interval (30 s)"),
        ({"heartbeat_interval_s": 90},
         "The heartbeat timeout (60 s) must be greater than the heartbeat interval (90 s)"),
        ({"valid_from": "2026-06-01 00:00:00", "valid_until": "2026-05-01 00:00:00"},
         "'Valid until' must be after 'valid from'."),
        ({"quota_ipv4": -1}, "A quota cannot be negative."),
    ]
    for fields, message in cases:
        page = post_form(client, "/licenseview/add",
                         license_form(customer_id, **fields)).get_data(as_text=True)
        assert message in page, (fields, message)
    assert one(pg.execute("SELECT count(*) FROM licenses"))[0] == 0


def test_editing_limits_drops_the_license_from_the_edge_cache_and_is_audited(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, admin = signed_in
    lic = add_license(client, pg, add_customer(client, pg))
    start_live_session(admin_settings, lic["id"], "fp-edit")  # caches the license in the plane
    cache_key = keys.license_hash(lic["id"], admin_settings.stream_shards)
    with redis.Redis.from_url(admin_settings.redis_url or "") as r:
        assert r.exists(cache_key)
        response = post_form(client, f"/licenseview/edit/{lic['id']}",
                             license_form(one(pg.execute("SELECT customer_id FROM licenses WHERE id = %s",
                                                     (lic["id"],)))[0],
                                          device_limit=5, concurrent_sessions_limit=4))
        assert response.status_code == 302, response.get_data(as_text=True)
        assert "Changed Row" in client.get("/dashboard/").get_data(as_text=True)
        assert not r.exists(cache_key)
    old, new, actor = one(pg.execute(
        "SELECT old_values->>'device_limit', new_values->>'device_limit', actor FROM audit_log "
        "WHERE table_name = 'licenses' AND operation = 'UPDATE' ORDER BY id DESC LIMIT 1"))
    assert (old, new, actor) == ("3", "5", f"admin:{admin.username}")
    page = client.get("/auditlogview/list/?_flt_0_table_name=licenses").get_data(as_text=True)
    assert re.search(r'<b>device_limit</b>: <span class="hl-diff-old">3</span> → '
                     r'<span class="hl-diff-new">5</span>', page)


def test_the_resume_grace_is_edited_in_the_form_within_its_check_and_audited(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    customer_id = add_customer(client, pg)
    lic = add_license(client, pg, customer_id)
    assert one(pg.execute("SELECT resume_grace_s FROM licenses WHERE id = %s", (lic["id"],)))[0] == 0
    page = post_form(client, f"/licenseview/edit/{lic['id']}",
                     license_form(customer_id, resume_grace_s=86401)).get_data(as_text=True)
    assert "Between 0 and 86400 s (1 day)." in page
    response = post_form(client, f"/licenseview/edit/{lic['id']}", license_form(customer_id, resume_grace_s=300))
    assert response.status_code == 302, response.get_data(as_text=True)
    old, new, actor = one(pg.execute(
        "SELECT old_values->>'resume_grace_s', new_values->>'resume_grace_s', actor FROM audit_log "
        "WHERE table_name = 'licenses' AND operation = 'UPDATE' ORDER BY id DESC LIMIT 1"))
    assert (old, new, actor) == ("0", "300", f"admin:{admin.username}")
    assert "Resume grace (s)" in client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)


def test_suspending_a_license_ends_its_live_sessions(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, admin = signed_in
    lic = add_license(client, pg, add_customer(client, pg))
    tokens = [start_live_session(admin_settings, lic["id"], fp) for fp in ("fp-a", "fp-b")]
    page = action(client, "licenseview", "suspend", [lic["id"]]).get_data(as_text=True)
    assert "2 live session(s) ended" in page
    assert one(pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)))[0] == "suspended"
    assert not any(is_live(admin_settings, lic["id"], t) for t in tokens)
    ended = {e.session_token: e.reason for e in plane_events(admin_settings, lic["id"]) if e.kind == "ended"}
    assert ended == {t: "license_suspended" for t in tokens}
    assert one(pg.execute("SELECT actor FROM audit_log WHERE table_name = 'licenses' AND operation = 'UPDATE' "
                      "ORDER BY id DESC LIMIT 1"))[0] == f"admin:{admin.username}"
    action(client, "licenseview", "reactivate", [lic["id"]])
    assert one(pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)))[0] == "active"


def test_extending_a_license_adds_a_year_from_its_end_or_from_now(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    customer_id = add_customer(client, pg)
    future = add_license(client, pg, customer_id, valid_until="2031-01-01 00:00:00")
    open_ended = add_license(client, pg, customer_id)
    action(client, "licenseview", "extend", [future["id"], open_ended["id"]])
    until = dict(pg.execute("SELECT id, valid_until FROM licenses").fetchall())
    assert until[future["id"]] == dt.datetime(2032, 1, 1, tzinfo=dt.UTC)
    from_now = until[open_ended["id"]] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < from_now <= dt.timedelta(days=365)


def test_licenses_cannot_be_deleted_but_can_be_revoked(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, _ = signed_in
    lic = add_license(client, pg, add_customer(client, pg))
    token = start_live_session(admin_settings, lic["id"], "fp-r")
    page = client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)
    assert "/licenseview/delete/" not in page
    assert client.post(f"/licenseview/delete/{lic['id']}").status_code in (400, 403, 404, 405)
    page = action(client, "licenseview", "revoke", [lic["id"]]).get_data(as_text=True)
    assert "revoked; 1 live session(s) ended" in page
    assert one(pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)))[0] == "revoked"
    assert not is_live(admin_settings, lic["id"], token)


def test_a_customer_with_licenses_cannot_be_deleted_and_says_why(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    customer_id = add_customer(client, pg)
    add_license(client, pg, customer_id)
    response = post_form(client, f"/customerview/delete/{customer_id}", {},
                         page=f"/customerview/show/{customer_id}", follow=True)
    assert "This customer still has licenses; delete or move them first." in response.get_data(as_text=True)
    assert one(pg.execute("SELECT count(*) FROM customers WHERE id = %s", (customer_id,)))[0] == 1


def test_suspending_while_the_plane_is_unreachable_keeps_the_suspension_and_says_so(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = signed_in
    lic = add_license(client, pg, add_customer(client, pg))
    monkeypatch.setitem(client.application.config, "HEARTLINE_SETTINGS",
                        admin_settings.replace(redis_url="redis://127.0.0.1:9/0"))
    page = action(client, "licenseview", "suspend", [lic["id"]]).get_data(as_text=True)
    assert "suspended, but its sessions could not be ended" in page
    # the edges' license refresher ends them once it sees the new status
    assert one(pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)))[0] == "suspended"
