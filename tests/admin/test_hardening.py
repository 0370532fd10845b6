"""Answers instead of 500s, and the security headers: FAB's action and download routes, NUL bytes, ids
beyond 64 bits, values PostgreSQL refuses, PostgreSQL unreachable."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from admin_rows import license_row
from admin_support import Admin, csrf_token
from flask import Flask
from flask.testing import FlaskClient
from worker_support import TcpProxy

from admin.app import create_app
from heartline.settings import Settings


def test_unknown_actions_rows_and_downloads_answer_404_also_anonymously(
        client: FlaskClient, signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any],
        admin_app: Flask) -> None:
    anonymous = admin_app.test_client()
    assert anonymous.get("/licenseview/action/no_such_action/1").status_code == 404
    assert anonymous.get("/licenseview/download/anything.txt").status_code == 404
    admin, _ = signed_in
    lic = license_row(pg)
    assert admin.get(f"/licenseview/action/no_such_action/{lic['id']}").status_code == 404
    assert admin.get("/licenseview/download/anything.txt").status_code == 404
    token = csrf_token(admin.get("/licenseview/list/").get_data(as_text=True))
    for form in ({"action": "no_such_action", "rowid": [str(lic["id"])]},
                 {"action": "suspend", "rowid": [str(lic["id"] + 1000)]},        # no such row
                 {"action": "suspend", "rowid": ["99999999999999999999"]}):      # beyond 64 bits
        answer = admin.post("/licenseview/action_post", data={**form, "csrf_token": token})
        assert answer.status_code == 404, form
    assert pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)).fetchone() == ("active",)


def test_nul_bytes_and_out_of_range_values_answer_4xx(signed_in: tuple[FlaskClient, Admin]) -> None:
    client, _ = signed_in
    assert client.get("/licenseview/list/?_flt_0_license_key=a%00b").status_code == 400
    assert client.get("/customerview/list/?_flt_0_name=%00").status_code == 400
    assert client.get("/licenseview/show/99999999999999999999").status_code == 404
    assert client.get("/licenseview/list/?_flt_0_customer=99999999999999999999").status_code < 500
    assert client.get("/livesessionview/show/not-a-session-token").status_code in (400, 404)
    assert client.get("/licenseview/list/").status_code == 200      # and the session still works


def test_security_headers_on_every_answer_and_no_store_on_pages(
        client: FlaskClient, signed_in: tuple[FlaskClient, Admin]) -> None:
    login = client.get("/login/")
    admin, _ = signed_in
    page = admin.get("/licenseview/list/")
    for answer in (login, page):
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"
        policy = answer.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    nonce = page.headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in page.get_data(as_text=True)            # FAB's scripts carry it
    assert nonce not in admin.get("/licenseview/list/").headers["Content-Security-Policy"]  # fresh each time
    static = admin.get("/static/appbuilder/js/ab.js")
    assert static.status_code == 200 and static.headers.get("Cache-Control") != "no-store"
    static.close()


async def test_the_login_page_answers_503_while_postgres_is_unreachable(admin_settings: Settings) -> None:
    url = urlsplit(admin_settings.database_url or "")
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    netloc = url.netloc.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
    proxied = urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))
    app = await asyncio.to_thread(create_app, admin_settings.replace(database_url=proxied),
                                  view_modules=["admin.views.dashboard"], update_permissions=False)
    client = app.test_client()
    try:
        assert (await asyncio.to_thread(client.get, "/login/")).status_code == 200
        await proxy.cut()
        down = await asyncio.to_thread(client.get, "/login/")
        assert down.status_code == 503
        assert "database is unavailable" in down.get_data(as_text=True)
        assert down.headers["Retry-After"] == "5"
        await proxy.start()                      # the same port again: PostgreSQL is back
        assert (await asyncio.to_thread(client.get, "/login/")).status_code == 200
    finally:
        await proxy.cut()
