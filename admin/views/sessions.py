"""Live sessions (the durable mirror the worker writes) with a terminate action, and session history."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import flash, g
from flask_appbuilder import AppBuilder, ModelView, action
from wtforms import SelectField
from wtforms.fields.choices import SelectChoice

from admin import permissions
from admin.audit import current_admin, record_event
from admin.models.core import LicenseSession, SessionBorrow, SessionHistory
from admin.plane import PlaneError
from admin.views.base import ReadableInterface, back_to_origin, plane, timestamps
from heartline.plane.events import EndReason

log = logging.getLogger("admin.sessions")

READ_ONLY = ["can_list", "can_show"]


class LiveSessionView(ModelView):
    """Mirror of the plane's live sessions; lags it by at most the worker's flush interval."""

    datamodel = ReadableInterface(LicenseSession)
    class_permission_name = permissions.LIVE_SESSIONS
    list_title = show_title = "Live sessions"
    base_permissions = READ_ONLY

    list_columns = ["session_token", "license", "device", "started_at", "last_heartbeat_at",
                    "heartbeat_count", "client_version", "client_ip"]
    show_columns = list_columns + ["hardware_fingerprint"]
    # support gets a token or an address from a customer: both searchable (admin/views/filters.py)
    search_columns = ["session_token", "client_ip", "license", "device", "started_at", "last_heartbeat_at",
                      "client_version"]
    order_columns = ["started_at", "last_heartbeat_at", "heartbeat_count"]
    base_order = ("started_at", "desc")
    label_columns = {"session_token": "Session", "heartbeat_count": "Heartbeats",
                     "last_heartbeat_at": "Last heartbeat", "client_ip": "Client IP"}
    formatters_columns = timestamps("started_at", "last_heartbeat_at")

    @action("terminate", "Terminate", "End the selected sessions now? The clients must start new ones.",
            "fa-stop")
    def terminate(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in items if isinstance(items, list) else [items]:
            try:
                ended = plane().terminate_session(item.license_id, str(item.session_token))
            except PlaneError as exc:
                flash(f"Session {item.session_token} could not be ended: {exc}", "danger")
                continue
            # the plane is Redis: no trigger sees this, so the audit row is written here
            record_event(session, table="license_sessions", operation="DELETE", row_id=str(item.session_token),
                         event="session.terminated", license_id=item.license_id, ended=ended)
            session.commit()
            log.info("session.terminated license_id=%s token=%s ended=%s by=%s", item.license_id,
                     item.session_token, ended, current_admin())
            if ended:
                flash(f"Session {item.session_token} terminated; it moves to the history within seconds.",
                      "success")
            else:
                flash(f"Session {item.session_token} had already ended.", "info")
        return back_to_origin(self)


class SessionHistoryView(ModelView):
    datamodel = ReadableInterface(SessionHistory)
    class_permission_name = permissions.SESSION_HISTORY
    list_title = show_title = "Session history"
    base_permissions = READ_ONLY

    list_columns = ["session_token", "license", "device", "started_at", "ended_at", "end_reason",
                    "heartbeat_count", "client_version"]
    show_columns = list_columns + ["lapses", "hardware_fingerprint", "client_ip"]
    search_columns = ["session_token", "client_ip", "license", "device", "end_reason", "started_at", "ended_at",
                      "hardware_fingerprint"]
    order_columns = ["started_at", "ended_at", "end_reason", "heartbeat_count"]
    base_order = ("ended_at", "desc")
    label_columns = {"session_token": "Session", "heartbeat_count": "Heartbeats", "end_reason": "Reason",
                     "lapses": "Missed deadlines", "client_ip": "Client IP"}
    # the reasons as a list to pick from, not a text box
    search_form_extra_fields = {
        "end_reason": SelectField("Reason", choices=[SelectChoice(r.value, r.value) for r in EndReason])}
    formatters_columns = timestamps("started_at", "ended_at")


class BorrowView(ModelView):
    """Seats borrowed for offline use; revoking ends the session now, and the client is refused at its
    next online contact (a lease already handed out stays verifiable offline until its end)."""

    datamodel = ReadableInterface(SessionBorrow)
    class_permission_name = permissions.BORROWS
    list_title = show_title = "Borrowed seats"
    base_permissions = READ_ONLY

    list_columns = ["license", "hardware_fingerprint", "borrowed_at", "until", "state", "returned_at",
                    "revoked_at"]
    show_columns = ["id", "license", "session_token", "hardware_fingerprint", "borrowed_at", "until", "state",
                    "returned_at", "revoked_at", "revoked_by"]
    search_columns = ["license", "hardware_fingerprint", "borrowed_at", "until"]
    order_columns = ["borrowed_at", "until"]
    base_order = ("borrowed_at", "desc")
    label_columns = {"hardware_fingerprint": "Device", "state": "State", "id": "Borrow"}
    formatters_columns = timestamps("borrowed_at", "until", "returned_at", "revoked_at")

    @action("revoke", "Revoke", "Revoke the selected borrows? Their seats are freed now.", "fa-ban")
    def revoke(self, items: Any) -> Any:
        actor = str(g.get("heartline_actor") or "admin")
        session = self.datamodel.session
        for item in items if isinstance(items, list) else [items]:
            if item.state != "open":
                flash(f"Borrow {item.id} is already {item.state}.", "info")
                continue
            item.revoked_at = dt.datetime.now(dt.UTC)
            item.revoked_by = actor
            session.commit()
            try:
                plane().terminate_session(item.license_id, str(item.session_token))
            except PlaneError as exc:
                flash(f"Borrow {item.id} revoked, but its seat could not be freed now: {exc}", "danger")
                continue
            log.info("session.borrow.revoked license_id=%s borrow_id=%s", item.license_id, item.id)
            flash(f"Borrow {item.id} revoked; its seat is free.", "success")
        return back_to_origin(self)


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(LiveSessionView, "Live sessions", icon="fa-heartbeat", category="Sessions",
                        category_icon="fa-heartbeat")
    appbuilder.add_view(SessionHistoryView, "Session history", icon="fa-history", category="Sessions")
    appbuilder.add_view(BorrowView, "Borrowed seats", icon="fa-suitcase", category="Sessions")
