"""Recent heartbeats of one license, newest first, paged by time (keyset on received_at, event_id).

Always filtered by license and bounded by a LIMIT, so each page is a short walk down the index
license_heartbeats_license_time of each month partition; there is no "all heartbeats" list on purpose.
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
FIND_LICENSE = text("SELECT id, license_key FROM licenses WHERE license_key = :q OR id::text = :q LIMIT 1")


def heartbeat_page(session: Session, license_id: int, before: dt.datetime | None = None,
                   before_event: str = "", limit: int = PAGE_SIZE) -> list[Any]:
    """One page of a license's heartbeats older than (before, before_event), newest first."""
    return list(session.execute(PAGE, {"license_id": license_id, "before": before,
                                       "before_event": before_event, "limit": limit}))


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
        session.commit()
        next_marker = None
        if len(rows) == PAGE_SIZE:
            last = rows[-1]
            next_marker = {"license": query, "before": last.received_at.isoformat(),
                           "before_event": last.event_id}
        return self.render_template("heartline/heartbeats.html", query=query, license=license_row,
                                    rows=rows, error=error, next_marker=next_marker, paged=before is not None)


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(HeartbeatView, "Heartbeats", icon="fa-signal", category="Sessions")
