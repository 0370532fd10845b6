"""The resource screens through Flask's test client: import report, dashboard, allocate / release."""

from __future__ import annotations

import io
import re
from typing import Any

import psycopg
import pytest
from admin_support import Admin, action, csrf_token, post_form
from flask import Flask
from flask.testing import FlaskClient

from admin.app import create_app
from heartline.settings import Settings


@pytest.fixture(scope="module")
def admin_app(admin_settings: Settings) -> Flask:
    """The admin with every screen, these included (the shared fixture leaves them out)."""
    app = create_app(admin_settings.replace(resource_low_watermark=3, resource_quarantine_days=7),
                     config={"AUTH_RATE_LIMIT": "10000 per minute"})
    app.config["TESTING"] = True
    return app


def _license(pg: psycopg.Connection[Any], **quotas: int) -> int:
    customer = pg.execute("INSERT INTO customers (name) VALUES ('ACME') RETURNING id").fetchone()
    assert customer
    cols = ", ".join(["customer_id", "license_key", *quotas])
    marks = ", ".join(["%s"] * (2 + len(quotas)))
    row = pg.execute(f"INSERT INTO licenses ({cols}) VALUES ({marks}) RETURNING id",
                     [customer[0], f"HL-TEST-{customer[0]:08d}", *quotas.values()]).fetchone()
    assert row
    return int(row[0])


def _outcomes(html: str) -> dict[int, str]:
    return {int(line): outcome for line, outcome in
            re.findall(r'data-line="(\d+)" data-outcome="(\w+)"', html)}


def test_pasted_import_shows_a_report_per_line_and_adds_only_good_values(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    text = "8.8.4.1\n10.0.0.1\nnot-an-ip\n8.8.4.1\n8.8.4.2\n"
    response = post_form(client, "/resources/import", {"resource_type": "ipv4", "text": text})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert _outcomes(html) == {1: "added", 2: "refused", 3: "refused", 4: "duplicate", 5: "added"}
    assert "private or special-purpose range" in html
    assert "repeats line 1" in html
    rows = pg.execute("SELECT value FROM resource_pools ORDER BY value").fetchall()
    assert rows == [("8.8.4.1",), ("8.8.4.2",)]
    actors = pg.execute("SELECT DISTINCT actor FROM audit_log WHERE table_name = 'resource_pools'").fetchall()
    assert actors == [(f"admin:{admin.username}",)]


def test_csv_upload_import_skips_the_header_and_reports_lines(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    token = csrf_token(client.get("/resources/import").get_data(as_text=True))
    upload = io.BytesIO(b"phone,owner\n+49 30 1234567,x\n0301234567,y\n")
    response = client.post("/resources/import", content_type="multipart/form-data", data={
        "csrf_token": token, "resource_type": "phone", "text": "", "file": (upload, "phones.csv")})
    assert response.status_code == 200
    assert _outcomes(response.get_data(as_text=True)) == {2: "added", 3: "refused"}
    assert pg.execute("SELECT value FROM resource_pools").fetchall() == [("+49301234567",)]


def test_import_without_values_is_a_400_not_an_error(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    assert post_form(client, "/resources/import", {"resource_type": "ipv4", "text": "  "}).status_code == 400
    assert post_form(client, "/resources/import", {"resource_type": "bogus", "text": "8.8.8.8"}).status_code == 400
    assert pg.execute("SELECT count(*) FROM resource_pools").fetchone() == (0,)


def test_dry_run_import_adds_nothing(signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    response = post_form(client, "/resources/import",
                         {"resource_type": "domain", "text": "a.example\n", "dry_run": "1"})
    assert _outcomes(response.get_data(as_text=True)) == {1: "added"}
    assert "nothing added" in response.get_data(as_text=True)
    assert pg.execute("SELECT count(*) FROM resource_pools").fetchone() == (0,)


def test_allocation_over_quota_is_refused_with_a_clear_message_and_release_quarantines(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    license_id = _license(pg, quota_domains=1)
    post_form(client, "/resources/import", {"resource_type": "domain", "text": "a.example\nb.example"})
    page = f"/resources/license/{license_id}"

    done = post_form(client, f"{page}/allocate", {"resource_type": "domain", "count": "1"}, page=page,
                     follow=True).get_data(as_text=True)
    assert "Allocated a.example" in done
    refused = post_form(client, f"{page}/allocate", {"resource_type": "domain", "count": "1"}, page=page,
                        follow=True).get_data(as_text=True)
    assert (f"Refused (RESOURCE_QUOTA_EXCEEDED): License {license_id} may hold 1 domains and holds 1: "
            "allocating 1 more would exceed its quota") in refused
    assert pg.execute("SELECT value FROM resource_pools WHERE license_id = %s", (license_id,)).fetchall() == [
        ("a.example",)]

    (resource_id,) = pg.execute("SELECT id FROM resource_pools WHERE value = 'a.example'").fetchone() or (0,)
    released = post_form(client, f"{page}/release", {"resource_id": str(resource_id)}, page=page,
                         follow=True).get_data(as_text=True)
    assert "Released a.example into quarantine for 7 days" in released
    row = pg.execute("SELECT status, quarantined_until - now() > interval '6 days' FROM resource_pools"
                     " WHERE id = %s", (resource_id,)).fetchone()
    assert row == ("quarantined", True)
    history = pg.execute("SELECT allocated_by, released_by FROM resource_allocations").fetchall()
    assert history == [(f"admin:{admin.username}", f"admin:{admin.username}")]


def test_bad_allocation_input_is_refused_without_a_server_error(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    license_id = _license(pg, quota_ipv4=1)
    page = f"/resources/license/{license_id}"
    for data in ({"resource_type": "ipv4", "count": "abc"}, {"resource_type": "nope", "count": "1"},
                 {"resource_type": "ipv4", "count": "-3"}):
        response = post_form(client, f"{page}/allocate", data, page=page, follow=True)
        assert response.status_code == 200
        assert "between 1 and 1000" in response.get_data(as_text=True)
    exhausted = post_form(client, f"{page}/allocate", {"resource_type": "ipv4", "count": "1"}, page=page,
                          follow=True).get_data(as_text=True)
    assert "RESOURCE_POOL_EXHAUSTED" in exhausted
    bad_release = post_form(client, f"{page}/release", {"resource_id": "x"}, page=page, follow=True)
    assert "Select the resources to release" in bad_release.get_data(as_text=True)
    assert client.get("/resources/license/999999", follow_redirects=True).status_code == 200


def test_dashboard_shows_counts_per_type_and_warns_when_low(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    post_form(client, "/resources/import", {"resource_type": "domain",
                                            "text": "a.example\nb.example\nc.example\nd.example"})
    post_form(client, "/resources/import", {"resource_type": "ipv4", "text": "8.8.4.1"})
    html = client.get("/resources/").get_data(as_text=True)
    assert re.search(r'data-type="domain"[^>]*>\s*<td>Domains</td>\s*<td class="free">4</td>', html)
    # phones were never stocked: no warning for them
    assert 'data-low="ipv4"' in html and 'data-low="phone"' not in html and 'data-low="domain"' not in html
    assert "IPv4 addresses running low" in html and "Ipv4" not in html
    found = client.get("/resources/license?q=HL-NOPE", follow_redirects=True).get_data(as_text=True)
    assert "No license with key or id" in found


def test_pool_list_and_history_screens_render(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    post_form(client, "/resources/import", {"resource_type": "domain", "text": "listed.example"})
    assert "listed.example" in client.get("/resourcepoolview/list/").get_data(as_text=True)
    assert client.get("/resourceallocationview/list/").status_code == 200


def test_an_oversized_import_is_refused_with_413(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    token = csrf_token(client.get("/resources/import").get_data(as_text=True))
    huge = b"8.8.4.1\n" * (3 * 1024 * 1024 // 8)
    upload = client.post("/resources/import", content_type="multipart/form-data", data={
        "csrf_token": token, "resource_type": "ipv4", "text": "", "file": (io.BytesIO(huge), "big.csv")})
    assert upload.status_code == 413 and "limited to 2 MB" in upload.get_data(as_text=True)
    # a pasted text beyond Flask's form field limit (MAX_FORM_MEMORY_SIZE, 500 kB) is refused too
    pasted = client.post("/resources/import", data={"csrf_token": token, "resource_type": "ipv4",
                                                    "text": huge.decode()})
    assert pasted.status_code == 413
    assert pg.execute("SELECT count(*) FROM resource_pools").fetchone() == (0,)


def test_retire_and_reinstate_actions_leave_allocated_resources_alone(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    license_id = _license(pg, quota_ipv4=1)
    post_form(client, "/resources/import", {"resource_type": "ipv4", "text": "8.8.4.1\n8.8.4.2"})
    page = f"/resources/license/{license_id}"
    post_form(client, f"{page}/allocate", {"resource_type": "ipv4", "count": "1"}, page=page)
    ids = [row[0] for row in pg.execute("SELECT id FROM resource_pools ORDER BY id").fetchall()]
    retired = action(client, "resourcepoolview", "retire", ids)
    assert "Retired 1 resource(s)" in retired.get_data(as_text=True)
    assert pg.execute("SELECT value, status FROM resource_pools ORDER BY id").fetchall() == [
        ("8.8.4.1", "allocated"), ("8.8.4.2", "retired")]
    reinstated = action(client, "resourcepoolview", "reinstate", ids)
    assert "Reinstated 1 resource(s)" in reinstated.get_data(as_text=True)
    assert pg.execute("SELECT status FROM resource_pools WHERE value = '8.8.4.2'").fetchone() == ("available",)


def test_ids_beyond_bigint_are_404_or_refused_not_server_errors(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    huge = str(2**63)
    assert client.get(f"/resources/license/{huge}").status_code == 404
    assert client.get(f"/crm/institution/{huge}").status_code == 404
    license_id = _license(pg, quota_ipv4=1)
    page = f"/resources/license/{license_id}"
    refused = post_form(client, f"{page}/release", {"resource_id": huge}, page=page, follow=True)
    assert "Select the resources to release" in refused.get_data(as_text=True)
    assert client.get(f"/resources/license?q={huge}", follow_redirects=True).status_code == 200
