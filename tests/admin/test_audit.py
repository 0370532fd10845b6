"""Every admin action that changes state leaves an audit row naming the admin, and a log line naming them,
including actions that only touch Redis (terminating a live session)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from admin_rows import license_row, mirror_session
from admin_support import Admin, action, enrol, post_form, start_live_session
from flask import Flask
from flask.testing import FlaskClient
from shared_support import one

from heartline.apikeys import display_prefix, generate_key, hash_key
from heartline.settings import Settings


def test_every_state_changing_action_writes_an_audit_row_and_a_log_line_naming_the_admin(
        signed_in: tuple[FlaskClient, Admin], admin_app: Flask, make_admin: Callable[..., Admin],
        pg: psycopg.Connection[Any], admin_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    client, admin = signed_in
    actor = f"admin:{admin.username}"
    caplog.set_level(logging.INFO)

    def rows_since(mark: int) -> set[tuple[str, str, str | None]]:
        """(table, operation, event) of this admin's audit rows after id `mark`."""
        return {(t, op, ev) for t, op, ev, who in pg.execute(
            "SELECT table_name, operation, new_values->>'event', actor FROM audit_log WHERE id > %s",
            (mark,)).fetchall() if who == actor}

    def mark() -> int:
        return int(one(pg.execute("SELECT coalesce(max(id), 0) FROM audit_log"))[0])

    lic = license_row(pg)
    token = start_live_session(admin_settings, lic["id"], "fp-audit")
    mirror_session(pg, lic["id"], token, "fp-audit")

    before = mark()
    assert f"Session {token} terminated" in action(client, "livesessionview", "terminate", [token]).get_data(
        as_text=True)
    assert ("license_sessions", "DELETE", "session.terminated") in rows_since(before)
    terminated = pg.execute("SELECT row_id, new_values->>'license_id' FROM audit_log WHERE "
                            "new_values->>'event' = 'session.terminated'").fetchone()
    assert terminated == (token, str(lic["id"]))
    assert any(f"token={token}" in r.getMessage() and f"by={admin.username}" in r.getMessage()
               for r in caplog.records)

    for name in ("suspend", "reactivate", "extend", "revoke"):
        before = mark()
        action(client, "licenseview", name, [lic["id"]])
        assert ("licenses", "UPDATE", None) in rows_since(before), name
        assert any(f"license_id={lic['id']}" in r.getMessage() and f"by={admin.username}" in r.getMessage()
                   and name.rstrip("e") in r.getMessage() for r in caplog.records), name

    key = generate_key()
    key_id = one(pg.execute("INSERT INTO api_keys (name, display_prefix, key_hash, created_by) "
                        "VALUES ('k', %s, %s, 'test') RETURNING id", (display_prefix(key), hash_key(key))
                        ))[0]
    before = mark()
    action(client, "apikeyview", "revoke", [key_id])
    assert ("api_keys", "UPDATE", None) in rows_since(before)

    post_form(client, "/resources/import", {"resource_type": "domain", "text": "audit.example"})
    page = f"/resources/license/{lic['id']}"
    pg.execute("UPDATE licenses SET quota_domains = 1 WHERE id = %s", (lic["id"],))
    post_form(client, f"{page}/allocate", {"resource_type": "domain", "count": "1"}, page=page)
    (resource_id,) = one(pg.execute("SELECT id FROM resource_pools WHERE value = 'audit.example'"))
    before = mark()
    post_form(client, f"{page}/release", {"resource_id": str(resource_id)}, page=page)
    assert ("resource_pools", "UPDATE", None) in rows_since(before)

    other = make_admin("lost")
    enrol(admin_app.test_client(), other)
    before = mark()
    action(client, "users", "reset_2fa", [other.id])
    assert ("admin_totp", "DELETE", "totp.reset") in rows_since(before)
