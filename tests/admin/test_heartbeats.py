"""Heartbeats per license: newest first, paged by time without gaps or repeats, never unfiltered."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import psycopg
from admin_rows import device, license_row
from admin_support import Admin
from flask.testing import FlaskClient


def insert_heartbeats(pg: psycopg.Connection[Any], license_id: int, count: int, start: dt.datetime) -> None:
    token = str(uuid.uuid4())
    for month in {start.date().replace(day=1), (start + dt.timedelta(minutes=count)).date().replace(day=1)}:
        pg.execute("SELECT ensure_heartbeat_partition(%s)", (month,))
    with pg.cursor() as cur:
        cur.executemany(
            "INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token) "
            "VALUES (%s, %s, %s, %s)",
            # two heartbeats share each timestamp, so paging must order by event id too
            [(start + dt.timedelta(seconds=i // 2), f"{license_id}-{i:05d}", license_id, token)
             for i in range(count)])


def test_heartbeats_page_newest_first_without_gaps_or_repeats(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    lic, other = license_row(pg), license_row(pg)
    start = dt.datetime(2026, 1, 31, 23, 59, tzinfo=dt.UTC)  # crosses into the February partition
    insert_heartbeats(pg, lic["id"], 121, start)
    insert_heartbeats(pg, other["id"], 10, start)
    seen: list[str] = []
    license_page = client.get(f"/licenseview/show/{lic['id']}").get_data(as_text=True)
    url = f"/heartbeats/?license={lic['license_key']}"
    assert f'href="{url}"' in license_page
    pages = 0
    while url:
        page = client.get(url).get_data(as_text=True)
        seen += re.findall(r'data-event="(\d+-\d{5})"', page)
        assert not re.search(r">\d+-\d{5}<", page)  # the stream's ids are page markers, never shown
        older = re.search(r'id="older"\s+href="([^"]+)"', page)
        url = "/heartbeats/" + older.group(1).replace("&amp;", "&") if older else ""
        pages += 1
    assert pages == 3
    assert seen == [f"{lic['id']}-{i:05d}" for i in reversed(range(121))]


def test_heartbeats_list_recent_ones_before_a_license_is_named_with_device_names(
        signed_in: tuple[FlaskClient, Admin], pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    page = client.get("/heartbeats/").get_data(as_text=True)
    assert 'id="heartbeats"' in page and "No heartbeats." in page
    lic, other = license_row(pg), license_row(pg)
    dev = device(pg, lic["id"], "fp-office", device_name="office laptop")
    insert_heartbeats(pg, lic["id"], 3, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    insert_heartbeats(pg, other["id"], 60, dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    pg.execute("UPDATE license_heartbeats SET device_id = %s WHERE license_id = %s", (dev, lic["id"]))
    page = client.get("/heartbeats/").get_data(as_text=True)
    events = re.findall(r'data-event="(\d+-\d{5})"', page)
    assert len(events) == 50 and events[:3] == [f"{lic['id']}-{i:05d}" for i in (2, 1, 0)]
    assert "office laptop (fp-office)" in page and lic["license_key"] in page and other["license_key"] in page
    assert 'id="older"' not in page  # no paging through everything
    page = client.get(f"/heartbeats/?license={lic['license_key']}").get_data(as_text=True)
    assert page.count("office laptop (fp-office)") == 3 and other["license_key"] not in page


def test_heartbeats_of_a_license_refuse_bad_input(signed_in: tuple[FlaskClient, Admin],
                                                  pg: psycopg.Connection[Any]) -> None:
    client, _ = signed_in
    page = client.get("/heartbeats/?license=HL-NOPE").get_data(as_text=True)
    assert "No license with key or id" in page
    lic = license_row(pg)
    page = client.get(f"/heartbeats/?license={lic['id']}&before=yesterday").get_data(as_text=True)
    assert "page marker is malformed" in page


def test_a_heartbeat_page_is_an_index_walk(pg: psycopg.Connection[Any]) -> None:
    from admin.views.heartbeats import PAGE

    licenses = [license_row(pg) for _ in range(30)]
    for lic in licenses:
        insert_heartbeats(pg, lic["id"], 60, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    pg.execute("ANALYZE license_heartbeats")
    sql = (str(PAGE).replace(":license_id", "%(license_id)s").replace(":before_event", "%(e)s")
           .replace(":before", "%(before)s").replace(":limit", "%(limit)s"))
    for before in (None, dt.datetime(2026, 3, 1, 0, 0, 20, tzinfo=dt.UTC)):
        plan = "\n".join(r[0] for r in pg.execute(
            "EXPLAIN " + sql, {"license_id": licenses[7]["id"], "before": before, "e": "0-1", "limit": 50}))
        assert plan.splitlines()[0].startswith("Limit"), plan
        assert "license_heartbeats_license_time" in plan or "license_id_received_at_idx" in plan, plan
        assert "Index Cond: ((license_id =" in plan, plan
        # only the empty month partitions may be "scanned": at no cost
        scans = [line for line in plan.splitlines() if "Seq Scan" in line]
        assert all("cost=0.00..0.00" in line for line in scans), plan
