"""Heartbeats, newest first: before a license is named, the most recent ones of all licenses (one page, a
walk down the primary key's received_at of the newest partitions); for one license, paged by time (keyset
on received_at, event_id: a short walk down license_heartbeats_license_time per month partition).  There is
no paging through all heartbeats on purpose.  Devices are shown by name; the stream's event ids only serve
as page markers and are not shown.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import request
from flask_appbuilder import AppBuilder, BaseView, expose, has_access
from sqlalchemy import text
from sqlalchemy.orm import Session

from admin import permissions

PAGE_SIZE = 50

# The first two conditions are the index range (license_id = and received_at <=); the third breaks ties
# within the page marker's millisecond.
PAGE = text("""
    SELECT received_at, event_id, session_token, device_id
    FROM license_heartbeats
    WHERE license_id = :license_id
      AND received_at <= coalesce(CAST(:before AS timestamptz), 'infinity')
      AND (CAST(:before AS timestamptz) IS NULL OR received_at < :before OR event_id < :before_event)
    ORDER BY received_at DESC, event_id DESC
    LIMIT :limit
""")
RECENT = text("""
    SELECT received_at, event_id, session_token, device_id, license_id
    FROM license_heartbeats
    ORDER BY received_at DESC
    LIMIT :limit
""")
# Names for the page's rows: the devices and license keys of at most one page of heartbeats.
DEVICES = text("SELECT id, device_name, hardware_fingerprint FROM device_registrations WHERE id = ANY(:ids)")
LICENSE_KEYS = text("SELECT id, license_key FROM licenses WHERE id = ANY(:ids)")
FIND_LICENSE = text("SELECT id, license_key FROM licenses WHERE license_key = :q OR id::text = :q LIMIT 1")


def heartbeat_page(session: Session, license_id: int, before: dt.datetime | None = None,
                   before_event: str = "", limit: int = PAGE_SIZE) -> list[Any]:
    """One page of a license's heartbeats older than (before, before_event), newest first."""
    return list(session.execute(PAGE, {"license_id": license_id, "before": before,
                                       "before_event": before_event, "limit": limit}))


def recent_heartbeats(session: Session, limit: int = PAGE_SIZE) -> list[Any]:
    """The newest heartbeats of all licenses."""
    return list(session.execute(RECENT, {"limit": limit}))


def device_label(name: str | None, fingerprint: str | None) -> str:
    if name and fingerprint:
        return f"{name} ({fingerprint})"
    return name or fingerprint or "—"


def names_for(session: Session, rows: list[Any]) -> tuple[dict[int, str], dict[int, str]]:
    """{device id: "name (fingerprint)"} and {license id: key} for the rows of one page."""
    device_ids = sorted({r.device_id for r in rows if r.device_id is not None})
    license_ids = sorted({r.license_id for r in rows if getattr(r, "license_id", None) is not None})
    devices = {d.id: device_label(d.device_name, d.hardware_fingerprint)
               for d in session.execute(DEVICES, {"ids": device_ids})} if device_ids else {}
    keys = {r.id: r.license_key for r in session.execute(LICENSE_KEYS, {"ids": license_ids})} if license_ids else {}
    return devices, keys


class HeartbeatView(BaseView):
    route_base = "/heartbeats"
    default_view = "index"
    class_permission_name = permissions.HEARTBEATS

    @expose("/")
    @has_access
    def index(self) -> Any:
        session = self.appbuilder.session
        query = request.args.get("license", "").strip()
        license_row = session.execute(FIND_LICENSE, {"q": query}).first() if query else None
        rows: list[Any] = []
        error = None
        before = None
        if query and license_row is None:
            error = f"No license with key or id {query!r}."
        if license_row is not None:
            raw_before = request.args.get("before")
            if raw_before:
                try:
                    before = dt.datetime.fromisoformat(raw_before)
                except ValueError:
                    error = "The page marker is malformed; showing the newest heartbeats."
            rows = heartbeat_page(session, license_row.id, before if error is None else None,
                                  request.args.get("before_event", ""))
        elif not query:
            rows = recent_heartbeats(session)
        devices, license_keys = names_for(session, rows)
        session.commit()
        next_marker = None
        if license_row is not None and len(rows) == PAGE_SIZE:
            last = rows[-1]
            next_marker = {"license": query, "before": last.received_at.isoformat(),
                           "before_event": last.event_id}
        return self.render_template("heartline/heartbeats.html", query=query, license=license_row,
                                    rows=rows, error=error, next_marker=next_marker, paged=before is not None,
                                    devices=devices, license_keys=license_keys)


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(HeartbeatView, "Heartbeats", icon="fa-signal", category="Sessions")
