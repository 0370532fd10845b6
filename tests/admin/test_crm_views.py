"""The CRM screens through Flask's test client: institution with contacts and timeline, stage changes,
conversion to a customer, my open tasks, search and CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg
import pytest
from admin_support import Admin, csrf_token, post_form
from flask import Flask
from flask.testing import FlaskClient

from admin.app import create_app
from heartline.settings import Settings


@pytest.fixture(scope="module")
def admin_app(admin_settings: Settings) -> Flask:
    """The admin with every screen, these included (the shared fixture leaves them out)."""
    app = create_app(admin_settings, config={"AUTH_RATE_LIMIT": "10000 per minute"})
    app.config["TESTING"] = True
    return app


def _add_institution(client: FlaskClient, pg: psycopg.Connection[Any], name: str, **fields: str) -> int:
    response = post_form(client, "/institutionview/add", {"name": name, **fields})
    assert response.status_code == 302, response.get_data(as_text=True)
    row = pg.execute("SELECT id FROM crm_institutions WHERE name = %s", (name,)).fetchone()
    assert row
    return int(row[0])


def test_won_institution_converts_to_one_customer_through_the_screens(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    inst = _add_institution(client, pg, "Klinikum Nord", city="Hamburg", country="DE")
    assert pg.execute("SELECT owner, stage FROM crm_institutions").fetchone() == (admin.username, "lead")
    contact = post_form(client, "/contactview/add", {"institution": str(inst), "name": "Dr. Weber",
                                                     "email": "weber@kn.example", "role": "CIO"})
    assert contact.status_code == 302
    page = f"/crm/institution/{inst}"
    html = client.get(page).get_data(as_text=True)
    assert "Dr. Weber" in html and "Becomes a customer once won" in html

    refused = post_form(client, f"{page}/convert", {}, page=page, follow=True).get_data(as_text=True)
    assert "INSTITUTION_NOT_WON" in refused
    for stage in ("contacted", "qualified", "proposal", "won"):
        post_form(client, f"{page}/stage", {"stage": stage}, page=page)
    html = client.get(page).get_data(as_text=True)
    assert 'id="stage">won<' in html and "Convert to customer" in html
    assert "Stage: proposal → won" in html

    converted = post_form(client, f"{page}/convert", {}, page=page, follow=True).get_data(as_text=True)
    customer = pg.execute("SELECT id, name, email FROM customers").fetchall()
    assert len(customer) == 1 and customer[0][1:] == ("Klinikum Nord", "weber@kn.example")
    assert f"Customer #{customer[0][0]} created." in converted
    assert 'id="customer"' in converted
    # a second click (stale page) finds the link and creates nothing
    again = client.post(f"{page}/convert", data={"csrf_token": csrf_token(html)}, follow_redirects=True)
    assert f"Already converted: customer #{customer[0][0]}." in again.get_data(as_text=True)
    assert pg.execute("SELECT count(*) FROM customers").fetchone() == (1,)

    audit = pg.execute(
        "SELECT actor, old_values ->> 'stage', new_values ->> 'stage' FROM audit_log"
        " WHERE table_name = 'crm_institutions' AND operation = 'UPDATE'"
        " AND old_values ->> 'stage' IS DISTINCT FROM new_values ->> 'stage' ORDER BY id").fetchall()
    actor = f"admin:{admin.username}"
    assert audit == [(actor, "lead", "contacted"), (actor, "contacted", "qualified"),
                     (actor, "qualified", "proposal"), (actor, "proposal", "won")]


def test_unknown_stage_and_missing_institution_are_refused_cleanly(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    inst = _add_institution(client, pg, "Stadtwerke")
    page = f"/crm/institution/{inst}"
    refused = post_form(client, f"{page}/stage", {"stage": "signed"}, page=page, follow=True)
    assert refused.status_code == 200 and "INVALID_STAGE" in refused.get_data(as_text=True)
    missing = post_form(client, "/crm/institution/999999/convert", {}, page=page, follow=True)
    assert "INSTITUTION_NOT_FOUND" in missing.get_data(as_text=True)
    assert client.get("/crm/institution/999999", follow_redirects=True).status_code == 200
    assert client.get("/crm/export.csv?stage=bogus").status_code == 422


def test_tasks_show_on_my_open_tasks_until_done(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    inst = _add_institution(client, pg, "Uni Kiel")
    page = f"/crm/institution/{inst}"
    post_form(client, f"{page}/activity", {"kind": "task", "subject": "Send offer", "due_at": "2020-01-02"},
              page=page)
    post_form(client, f"{page}/activity", {"kind": "call", "subject": "Intro call"}, page=page)
    bad = post_form(client, f"{page}/activity", {"kind": "call", "subject": "x", "due_at": "2020-01-02"},
                    page=page, follow=True).get_data(as_text=True)
    assert "only tasks have a due date" in bad
    tasks = client.get("/crm/tasks").get_data(as_text=True)
    assert "Send offer" in tasks and "(overdue)" in tasks and "Intro call" not in tasks
    (task_id,) = pg.execute("SELECT id FROM crm_activities WHERE subject = 'Send offer'").fetchone() or (0,)
    post_form(client, f"/crm/tasks/{task_id}/done", {}, page="/crm/tasks")
    assert "Send offer" not in client.get("/crm/tasks").get_data(as_text=True)
    timeline = client.get(page).get_data(as_text=True)
    assert "Intro call" in timeline and "done" in timeline


def test_pipeline_search_and_export(signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _admin = signed_in
    kiel = _add_institution(client, pg, "Uni Kiel", city="Kiel")
    _add_institution(client, pg, "Hafen AG", city="Bremen")
    post_form(client, "/contactview/add", {"institution": str(kiel), "name": "Jana Meer", "email": "jana@kiel.example"})
    post_form(client, f"/crm/institution/{kiel}/stage", {"stage": "qualified"}, page=f"/crm/institution/{kiel}")

    pipeline = client.get("/crm/pipeline").get_data(as_text=True)
    qualified = pipeline.split('data-stage="qualified"')[1].split('data-stage="proposal"')[0]
    assert "Uni Kiel" in qualified and "Hafen AG" not in qualified

    hits = client.get("/crm/search?q=jana@").get_data(as_text=True)
    assert "Uni Kiel" in hits and "Jana Meer" in hits and "Hafen AG" not in hits

    export = client.get("/crm/export.csv")
    assert export.mimetype == "text/csv" and "attachment" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert {(r["name"], r["stage"]) for r in rows} == {("Uni Kiel", "qualified"), ("Hafen AG", "lead")}
    only = list(csv.DictReader(io.StringIO(client.get("/crm/export.csv?stage=qualified").get_data(as_text=True))))
    assert [r["contacts"] for r in only] == ["Jana Meer <jana@kiel.example>"]

    assert "Uni Kiel" in client.get("/institutionview/list/").get_data(as_text=True)
    assert client.get(f"/institutionview/show/{kiel}").status_code == 200
    assert client.get("/activityview/list/").status_code == 200
    assert client.get("/activityview/add").status_code == 200


def test_activity_form_accepts_a_due_date_only_for_tasks(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, admin = signed_in
    inst = _add_institution(client, pg, "Uni Rostock")
    refused = post_form(client, "/activityview/add", {"institution": str(inst), "kind": "call",
                                                      "subject": "Call", "due_at": "2030-05-01T10:00"})
    assert refused.status_code == 200 and "Only tasks have a due date." in refused.get_data(as_text=True)
    added = post_form(client, "/activityview/add", {"institution": str(inst), "kind": "task",
                                                    "subject": "Offer", "due_at": "2030-05-01T10:00"})
    assert added.status_code == 302
    row = pg.execute("SELECT kind, owner, due_at = '2030-05-01 10:00+00' FROM crm_activities").fetchone()
    assert row == ("task", admin.username, True)
