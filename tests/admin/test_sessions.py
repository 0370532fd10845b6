"""Live sessions (the worker's mirror) with the terminate action, and the session history filters."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from admin_rows import device, history, license_row, mirror_session
from admin_support import Admin, action, is_live, plane_events, start_live_session
from flask.testing import FlaskClient

from heartline.settings import Settings


def test_terminating_a_live_session_ends_it_in_the_plane_as_admin_terminated(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any], admin_settings: Settings) -> None:
    client, _ = signed_in
    lic = license_row(pg)
    token = start_live_session(admin_settings, lic["id"], "fp-term")
    other = start_live_session(admin_settings, lic["id"], "fp-keep")
    mirror_session(pg, lic["id"], token, "fp-term")
    mirror_session(pg, lic["id"], other, "fp-keep")
    page = client.get("/livesessionview/list/").get_data(as_text=True)
    assert token in page and other in page
    page = action(client, "livesessionview", "terminate", [token]).get_data(as_text=True)
    assert f"Session {token} terminated" in page
    assert not is_live(admin_settings, lic["id"], token)
    assert is_live(admin_settings, lic["id"], other)
    ended = [(e.session_token, e.reason)
             for e in plane_events(admin_settings, lic["id"]) if e.kind == "ended"]
    assert ended == [(token, "admin_terminated")]
    # a second click finds it ended and says so, without a second event
    page = action(client, "livesessionview", "terminate", [token]).get_data(as_text=True)
    assert "had already ended" in page
    assert len([e for e in plane_events(admin_settings, lic["id"]) if e.kind == "ended"]) == 1


def test_live_sessions_are_read_only(signed_in: tuple[FlaskClient, Admin]) -> None:
    client, _ = signed_in
    assert client.get("/livesessionview/add").status_code == 403
    assert client.get("/sessionhistoryview/add").status_code == 403
    assert client.get("/auditlogview/add").status_code == 403


def test_history_filters_by_license_device_reason_and_time(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    a, b = license_row(pg), license_row(pg)
    dev = device(pg, a["id"], "fp-laptop", device_name="laptop")
    now = dt.datetime.now(dt.UTC)
    t_admin = history(pg, a["id"], "admin_terminated", ended=now, device_id=dev)
    t_timeout = history(pg, a["id"], "timeout", ended=now - dt.timedelta(days=2))
    t_other = history(pg, b["id"], "client_end", ended=now)

    def listed(query: str) -> set[str]:
        page = client.get(f"/sessionhistoryview/list/?{query}").get_data(as_text=True)
        return {t for t in (t_admin, t_timeout, t_other) if t in page}

    assert listed("") == {t_admin, t_timeout, t_other}
    page = client.get("/sessionhistoryview/list/").get_data(as_text=True)
    # reasons to pick from (FAB's search widget carries the field's HTML as a JSON string)
    assert '\\u003coption value=\\"admin_terminated\\"\\u003e' in page
    assert listed("_flt_0_end_reason=admin_terminated") == {t_admin}
    assert listed(f"_flt_0_license={a['id']}") == {t_admin, t_timeout}
    assert listed(f"_flt_0_device={dev}") == {t_admin}
    since = (now - dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert listed(f"_flt_1_ended_at={since}") == {t_admin, t_other}


def test_sessions_are_searchable_by_token_and_client_ip(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    """What support gets from a customer: a token (or its first characters) and an address."""
    client, _ = signed_in
    lic = license_row(pg)
    tokens = [str(uuid.uuid4()) for _ in range(3)]
    for n, (token, ip) in enumerate(zip(tokens, ("203.0.113.7", "203.0.113.99", "198.51.100.1"), strict=True)):
        mirror_session(pg, lic["id"], token, f"fp-{n}")
        pg.execute("UPDATE license_sessions SET client_ip = %s WHERE session_token = %s", (ip, token))
    ended = history(pg, lic["id"], "timeout", ended=dt.datetime.now(dt.UTC))
    pg.execute("UPDATE session_history SET client_ip = '203.0.113.7' WHERE session_token = %s", (ended,))

    def listed(view: str, query: str) -> set[str]:
        answer = client.get(f"/{view}/list/?{query}")
        assert answer.status_code == 200, query
        page = answer.get_data(as_text=True)
        return {t for t in (*tokens, ended) if t in page}

    # filters: 0 = equal, 1 = starts with (tokens) / in network (addresses)
    assert listed("livesessionview", f"_flt_0_session_token={tokens[1]}") == {tokens[1]}
    assert listed("livesessionview", f"_flt_1_session_token={tokens[2][:8]}") == {tokens[2]}
    assert listed("livesessionview", f"_flt_0_session_token={tokens[0].upper()}") == {tokens[0]}
    assert listed("livesessionview", "_flt_0_client_ip=203.0.113.7") == {tokens[0]}
    assert listed("livesessionview", "_flt_1_client_ip=203.0.113.0/24") == {tokens[0], tokens[1]}
    assert listed("sessionhistoryview", "_flt_0_client_ip=203.0.113.7") == {ended}
    assert listed("sessionhistoryview", f"_flt_1_session_token={ended[:13]}") == {ended}
    # what is not a token or an address finds nothing, and is no error
    for query in ("_flt_0_session_token=not-a-token", "_flt_1_session_token=%25%27", "_flt_0_client_ip=999.1.1.1",
                  "_flt_1_client_ip=nonsense"):
        assert listed("livesessionview", query) == set()
    # the search form offers both, as text boxes
    page = client.get("/livesessionview/list/").get_data(as_text=True)
    assert "Client IP" in page and "In network" in page and "Starts with" in page
