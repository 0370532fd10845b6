"""System API keys: generated on the "New API key" page (subtitle "Lizenzserver Administration") and shown
once, listed and revoked in one place."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from admin_support import Admin, action, post_form
from flask.testing import FlaskClient
from shared_support import one


def test_generating_a_key_shows_it_once_and_stores_only_its_hash(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    page = client.get("/system/").get_data(as_text=True)
    assert "Lizenzserver Administration" in page and "No API keys yet" in page
    assert 'id="system-subtitle"' in page  # the seed's name, as the subtitle only
    page = post_form(client, "/system/", {"name": "ERP connector"}).get_data(as_text=True)
    key = re.search(r'id="new-api-key">(AF-\d{4}-[A-Za-z0-9]{32})<', page)
    assert key, page
    name, prefix, key_hash, created_by = one(pg.execute(
        "SELECT name, display_prefix, key_hash, created_by FROM api_keys"))
    assert (name, created_by) == ("ERP connector", f"admin:{admin.username}")
    assert bytes(key_hash) == hashlib.sha256(key.group(1).encode()).digest()
    assert key.group(1)[:12] in prefix
    again = client.get("/system/").get_data(as_text=True)
    assert key.group(1) not in again and "1 active key(s), 0 revoked" in again  # shown once
    # one place lists the keys: the API keys screen, with the prefix only, and a way back to a new key
    assert prefix not in again
    listed = client.get("/apikeyview/list/").get_data(as_text=True)
    assert key.group(1) not in listed and prefix in listed and 'id="new-api-key-link"' in listed
    assert one(pg.execute("SELECT actor FROM audit_log WHERE table_name = 'api_keys'"))[0] == \
        f"admin:{admin.username}"


def test_a_key_needs_a_name(signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    page = post_form(client, "/system/", {"name": ""}).get_data(as_text=True)
    assert "This field is required." in page and 'id="new-api-key"' not in page
    assert one(pg.execute("SELECT count(*) FROM api_keys"))[0] == 0


def test_revoking_a_key_marks_it_revoked_once(signed_in: tuple[FlaskClient, Admin],
                                              pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    post_form(client, "/system/", {"name": "old integration"})
    key_id = one(pg.execute("SELECT id FROM api_keys"))[0]
    page = action(client, "apikeyview", "revoke", [key_id]).get_data(as_text=True)
    assert "revoked; edges refuse it within" in page
    revoked_at = one(pg.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (key_id,)))[0]
    assert revoked_at is not None
    page = action(client, "apikeyview", "revoke", [key_id]).get_data(as_text=True)
    assert "was already revoked" in page
    assert one(pg.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (key_id,)))[0] == revoked_at
