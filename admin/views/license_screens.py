"""Licenses: generated keys, limits validated like the database CHECKs, suspend / reactivate / extend.

Every change drops the license from the plane's cache, so the edge reloads it from PostgreSQL at the
next request (and within HEARTLINE_LICENSE_CACHE_S at the latest, by its version check).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import current_app, flash, g, request, url_for
from flask_appbuilder import AppBuilder, ModelView, action
from markupsafe import Markup
from sqlalchemy import text
from wtforms import Form
from wtforms.fields import Field
from wtforms.validators import DataRequired, NumberRange, Optional, ValidationError

from admin import permissions
from admin.audit import current_admin
from admin.fields import NumberField, TextField, UtcDateTimeField
from admin.models.core import License
from admin.plane import PlaneError
from admin.views.base import ReadableInterface, back_to_origin, plane, timestamps, when
from admin.views.devices import DeviceView
from admin.views.sessions import LiveSessionView, SessionHistoryView
from heartline.license_keys import new_license_key

log = logging.getLogger("admin.licenses")

DEFAULT_INTERVAL_S = 30  # sql/0001 licenses_timeout_exceeds_interval: coalesce(interval, 30)
DEFAULT_TIMEOUT_S = 60   # and coalesce(timeout, 60)
EXTEND_BY = dt.timedelta(days=365)


class LicenseStatus:
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


def sessions_within_device_limit(form: Form, field: Field) -> None:
    """concurrent_sessions_limit <= device_limit (CHECK licenses_sessions_limit_range)."""
    devices = form.device_limit.data  # type: ignore[attr-defined]
    if field.data is not None and devices is not None and field.data > devices:
        raise ValidationError(f"Concurrent sessions ({field.data}) cannot exceed the device limit "
                              f"({devices}): every session runs on its own device.")


def timeout_exceeds_interval(form: Form, field: Field) -> None:
    """coalesce(timeout, 60) > coalesce(interval, 30) (CHECK licenses_timeout_exceeds_interval)."""
    interval = form.heartbeat_interval_s.data or DEFAULT_INTERVAL_S  # type: ignore[attr-defined]
    timeout = field.data or DEFAULT_TIMEOUT_S
    if timeout <= interval:
        raise ValidationError(f"The heartbeat timeout ({timeout} s) must be greater than the heartbeat "
                              f"interval ({interval} s); empty fields mean {DEFAULT_TIMEOUT_S} s and "
                              f"{DEFAULT_INTERVAL_S} s.")


def interval_below_timeout(form: Form, field: Field) -> None:
    """The same CHECK seen from the interval, when the timeout is left empty (FAB skips the validators of
    an empty optional field, so the timeout field's check would not run)."""
    if form.heartbeat_timeout_s.data is None and field.data is not None:  # type: ignore[attr-defined]
        timeout_exceeds_interval(form, form.heartbeat_timeout_s)  # type: ignore[attr-defined]


def valid_until_after_valid_from(form: Form, field: Field) -> None:
    """valid_until > valid_from (CHECK licenses_valid_range); the form's datetimes are naive UTC."""
    start = getattr(form, "valid_from", None)
    if field.data is None or start is None or start.data is None:
        return
    if field.data.replace(tzinfo=None) <= start.data.replace(tzinfo=None):
        raise ValidationError("'Valid until' must be after 'valid from'.")


NONNEGATIVE = NumberRange(min=0, message="A quota cannot be negative.")


class LicenseView(ModelView):
    datamodel = ReadableInterface(License)
    class_permission_name = permissions.LICENSES
    list_title = show_title = add_title = edit_title = "Licenses"
    related_views = [DeviceView, LiveSessionView, SessionHistoryView]
    # No delete: a license's history and audit trail outlive it; suspend or revoke instead.
    base_permissions = ["can_list", "can_show", "can_add", "can_edit"]
    # the license's key and status above the form / the details (heartline/license_*.html)
    show_template = "heartline/license_show.html"
    edit_template = "heartline/license_edit.html"

    list_columns = ["license_key", "customer", "product", "status", "valid_until", "device_limit",
                    "concurrent_sessions_limit"]
    show_columns = ["license_key", "customer", "product", "status", "valid_from", "valid_until",
                    "device_limit", "concurrent_sessions_limit", "heartbeat_interval_s",
                    "heartbeat_timeout_s", "offline_grace_s", "max_borrow_s", "resume_grace_s", "entitlements",
                    "device_change_limit",
                    "device_changes",
                    "device_changes_reset_at",
                    "quota_domains", "quota_ipv4", "quota_phones", "notes", "version", "created_at",
                    "updated_at"]
    add_columns = ["customer", "product", "valid_from", "valid_until", "device_limit",
                   "concurrent_sessions_limit", "heartbeat_interval_s", "heartbeat_timeout_s", "entitlements",
                   "device_change_limit", "offline_grace_s", "max_borrow_s", "resume_grace_s", "quota_domains", "quota_ipv4", "quota_phones", "notes"]
    edit_columns = add_columns
    search_columns = ["license_key", "customer", "product", "status", "valid_until"]
    order_columns = ["license_key", "product", "status", "valid_until", "device_limit"]
    base_order = ("id", "desc")
    label_columns = {
        "concurrent_sessions_limit": "Concurrent sessions",
        "heartbeat_interval_s": "Heartbeat interval (s)",
        "heartbeat_timeout_s": "Heartbeat timeout (s)",
        "device_change_limit": "Device changes per 30 days", "device_changes": "Device changes (30 days)",
        "device_changes_reset_at": "Device changes reset",
        "offline_grace_s": "Offline grace (s)",
        "max_borrow_s": "Longest borrow (s)",
        "resume_grace_s": "Resume grace (s)",
        "quota_domains": "Quota: domains", "quota_ipv4": "Quota: IPv4 addresses",
        "quota_phones": "Quota: phone numbers",
    }
    formatters_columns = {
        "license_key": lambda key: Markup('{} <a class="small" href="{}">heartbeats</a>').format(
            key, url_for("HeartbeatView.index", license=key)),
        **timestamps("valid_from", "created_at", "updated_at", "device_changes_reset_at"),
        "valid_until": lambda v: when(v) if v else "never expires",
        "heartbeat_interval_s": lambda v: f"{v} s" if v else f"default ({DEFAULT_INTERVAL_S} s)",
        "heartbeat_timeout_s": lambda v: f"{v} s" if v else f"default ({DEFAULT_TIMEOUT_S} s)",
        "entitlements": lambda v: ", ".join(map(str, v)) if v else "none of its own",
    }
    description_columns = {
        "device_limit": "1 to 10 devices may be activated.",
        "concurrent_sessions_limit": "At least 1, at most the device limit.",
        "heartbeat_interval_s": "Empty: 30 s.",
        "heartbeat_timeout_s": "Empty: 60 s. Must exceed the interval.",
        "entitlements": "The license's own; its product's defaults (Licensing → Product defaults) come on top.",
        "device_change_limit": "Device changes (a deactivation, then an activation in its place) allowed per "
                               "30 days; empty: no limit.",
        "offline_grace_s": "How long past its last answer a client may work without reaching the server "
                           "(signed into every answer). 0: none; at most 30 days.",
        "max_borrow_s": "The longest a client may borrow its seat for offline use. 0: borrowing not "
                        "allowed; at most 90 days.",
        "resume_grace_s": "How long past a missed heartbeat deadline the same device may bring its session "
                          "back (if a seat is free; the lapsed session holds none). 0: none; at most 1 day.",
    }
    # Timestamps typed as YYYY-MM-DD HH:MM, 24-hour UTC (admin/fields.py); every field as wide as FAB's.
    add_form_extra_fields = edit_form_extra_fields = {
        "valid_from": UtcDateTimeField("Valid from (UTC)", validators=[Optional()],
                                       description="YYYY-MM-DD HH:MM, 24-hour UTC. Empty: now."),
        "valid_until": UtcDateTimeField("Valid until (UTC)", validators=[Optional(), valid_until_after_valid_from],
                                        description="YYYY-MM-DD HH:MM, 24-hour UTC. Empty: never expires."),
        # The database defaults, shown in the form (FAB would leave these required fields empty).
        "product": TextField("Product", default="default",
                               validators=[DataRequired(message="Name the product this license is for.")]),
        "quota_domains": NumberField("Quota: domains", default=0, validators=[NONNEGATIVE],
                                     description="How many pooled domains the license may hold."),
        "quota_ipv4": NumberField("Quota: IPv4 addresses", default=0, validators=[NONNEGATIVE],
                                  description="How many pooled IPv4 addresses the license may hold."),
        "quota_phones": NumberField("Quota: phone numbers", default=0, validators=[NONNEGATIVE],
                                    description="How many pooled phone numbers the license may hold."),
        # CHECKs licenses_offline_grace_range and licenses_max_borrow_range (sql/0010)
        "offline_grace_s": NumberField("Offline grace (s)", default=0, validators=[
            Optional(), NumberRange(min=0, max=2_592_000, message="Between 0 and 2592000 s (30 days).")]),
        "max_borrow_s": NumberField("Longest borrow (s)", default=0, validators=[
            Optional(), NumberRange(min=0, max=7_776_000, message="Between 0 and 7776000 s (90 days).")]),
        # CHECK licenses_resume_grace_range (sql/0014)
        "resume_grace_s": NumberField("Resume grace (s)", default=0, validators=[
            Optional(), NumberRange(min=0, max=86_400, message="Between 0 and 86400 s (1 day).")]),
    }
    validators_columns = {
        "customer": [DataRequired(message="Choose the customer this license belongs to.")],
        "device_limit": [DataRequired(message="Enter a device limit between 1 and 10."),
                         NumberRange(min=1, max=10, message="The device limit must be between 1 and 10.")],
        "concurrent_sessions_limit": [
            DataRequired(message="Enter a concurrent sessions limit of at least 1."),
            NumberRange(min=1, message="The concurrent sessions limit must be at least 1."),
            sessions_within_device_limit],
        "heartbeat_interval_s": [Optional(), NumberRange(min=1, message="The interval must be at least 1 s."),
                                 interval_below_timeout],
        "device_change_limit": [Optional(), NumberRange(min=0, max=1000,
                                                        message="Between 0 and 1000, or empty for no limit.")],
        "heartbeat_timeout_s": [timeout_exceeds_interval, Optional(),
                                NumberRange(min=2, message="The timeout must be at least 2 s.")],
    }

    def pre_add(self, item: License) -> None:
        item.license_key = new_license_key()
        item.status = LicenseStatus.ACTIVE
        _empty_quotas_are_zero(item)
        if item.valid_from is None:
            item.valid_from = dt.datetime.now(dt.UTC)

    def process_form(self, form: Form, is_created: bool) -> None:
        """An edit whose 'valid from' was left empty keeps the stored start.  Done on the form, before it
        fills the row: the entitlements field queries while filling, and would flush a NULL start."""
        if not is_created and form.valid_from.data is None:  # type: ignore[attr-defined]
            form.valid_from.data = self.datamodel.session.execute(  # type: ignore[attr-defined]
                text("SELECT valid_from FROM licenses WHERE id = :id"),
                {"id": int(request.view_args["pk"])}).scalar_one()  # type: ignore[index]

    def pre_update(self, item: License) -> None:
        _empty_quotas_are_zero(item)
        if item.valid_from is None:  # left empty in the form: keep the stored start
            session = self.datamodel.session
            with session.no_autoflush:
                item.valid_from = session.execute(
                    text("SELECT valid_from FROM licenses WHERE id = :id"), {"id": item.id}).scalar_one()

    def post_add(self, item: License) -> None:
        log.info("license.created license_id=%s actor=%s", item.id, g.get("heartline_actor"))
        flash(f"License key: {item.license_key}", "info")

    def post_update(self, item: License) -> None:
        refresh_edge_cache(item.id)

    # -- actions --------------------------------------------------------------------------------------

    @action("suspend", "Suspend", "Suspend the selected licenses? Their live sessions end now.",
            "fa-pause")
    def suspend(self, items: Any) -> Any:
        return self._stop_licenses(items, LicenseStatus.SUSPENDED, "suspended")

    @action("revoke", "Revoke", "Revoke the selected licenses for good? Their live sessions end now.",
            "fa-ban")
    def revoke(self, items: Any) -> Any:
        return self._stop_licenses(items, LicenseStatus.REVOKED, "revoked")

    def _stop_licenses(self, items: Any, status: str, verb: str) -> Any:
        """Set `status` and end the live sessions of each selected license not already in it."""
        for item in _as_list(items):
            if item.status == status:
                continue
            version = self._set_status(item, status)
            try:
                # one plane script switches the cached status and ends the sessions, so no start slips
                # in between; end_reason has no 'revoked': a revoked license's sessions end as suspended
                ended = max(0, plane().suspend_license(item.id, status, version))
            except PlaneError as exc:
                flash(f"{item.license_key} {verb}, but its sessions could not be ended: {exc}", "danger")
                continue
            refresh_edge_cache(item.id)
            log.info("license.%s license_id=%s sessions_ended=%s by=%s", verb, item.id, ended, current_admin())
            flash(f"{item.license_key} {verb}; {ended} live session(s) ended.", "success")
        return back_to_origin(self)

    @action("reactivate", "Reactivate", "Reactivate the selected licenses?", "fa-play")
    def reactivate(self, items: Any) -> Any:
        for item in _as_list(items):
            if item.status == LicenseStatus.ACTIVE:
                continue
            self._set_status(item, LicenseStatus.ACTIVE)
            refresh_edge_cache(item.id)
            log.info("license.reactivated license_id=%s by=%s", item.id, current_admin())
            flash(f"{item.license_key} is active again.", "success")
        return back_to_origin(self)

    @action("reset_device_changes", "Reset device changes", "Start the selected licenses' device-change count "
            "from zero?", "fa-undo")
    def reset_device_changes(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in _as_list(items):
            session.execute(text("UPDATE licenses SET device_changes_reset_at = now() WHERE id = :id"),
                            {"id": item.id})
            session.commit()
            refresh_edge_cache(item.id)
            flash(f"{item.license_key}: device changes counted from now on.", "success")
        return back_to_origin(self)

    @action("extend", "Extend by 1 year", "Extend the selected licenses by one year?", "fa-calendar-plus-o")
    def extend(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in _as_list(items):
            # from the later of now and the current end, so an expired license gets a full year
            new_end = session.execute(
                text("UPDATE licenses SET valid_until = greatest(coalesce(valid_until, now()), now()) + "
                     ":by WHERE id = :id RETURNING valid_until"),
                {"by": EXTEND_BY, "id": item.id}).scalar_one()
            session.commit()
            refresh_edge_cache(item.id)
            log.info("license.extended license_id=%s valid_until=%s by=%s", item.id, new_end, current_admin())
            flash(f"{item.license_key} valid until {when(new_end)}.", "success")
        return back_to_origin(self)

    def _set_status(self, item: License, status: str) -> int:
        """Set the status; returns the row's new version."""
        session = self.datamodel.session
        version = session.execute(text("UPDATE licenses SET status = :s WHERE id = :id RETURNING version"),
                                  {"s": status, "id": item.id}).scalar_one()
        session.commit()
        log.info("license.status license_id=%s status=%s actor=%s", item.id, status, g.get("heartline_actor"))
        return int(version)


def refresh_edge_cache(license_id: int) -> None:
    """Drop the license from the plane's cache: the edge reloads it from PostgreSQL at the next request."""
    try:
        plane().invalidate_license(license_id)
    except PlaneError as exc:
        flash(f"Saved, but the edge cache could not be refreshed ({exc}); edges pick the change up by "
              "their version check.", "warning")


def _empty_quotas_are_zero(item: License) -> None:
    for quota in ("quota_domains", "quota_ipv4", "quota_phones", "offline_grace_s", "max_borrow_s",
                  "resume_grace_s"):
        if getattr(item, quota) is None:
            setattr(item, quota, 0)


def _as_list(items: Any) -> list[Any]:
    return list(items) if isinstance(items, list) else [items]


def license_for_header(pk: Any) -> License | None:
    """The license a show / edit page is about, for its header (None for a pk that is not one)."""
    try:
        license_id = int(pk)
    except (TypeError, ValueError):
        return None
    if not 0 < license_id < 2**63:
        return None
    return current_app.appbuilder.session.get(License, license_id)  # type: ignore[attr-defined,no-any-return]


def register(appbuilder: AppBuilder) -> None:
    current_app.jinja_env.globals["hl_license"] = license_for_header  # register runs in the app context
    appbuilder.add_view(LicenseView, "Licenses", icon="fa-key", category="Licensing")
