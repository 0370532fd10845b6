"""Devices (activations) per license, with a deactivate action that ends the device's sessions."""

from __future__ import annotations

import logging
from typing import Any

from flask import flash, g
from flask_appbuilder import AppBuilder, ModelView, action
from sqlalchemy import text

from admin import permissions
from admin.audit import current_admin
from admin.models.core import DeviceRegistration
from admin.plane import PlaneError
from admin.views.base import ReadableInterface, back_to_origin, plane, timestamps
from heartline.plane.events import EndReason

log = logging.getLogger("admin.devices")


class DeviceView(ModelView):
    datamodel = ReadableInterface(DeviceRegistration)
    class_permission_name = permissions.DEVICES
    list_title = show_title = "Devices"
    base_permissions = ["can_list", "can_show"]

    list_columns = ["license", "device_name", "device_type", "hardware_fingerprint", "is_active",
                    "first_activated_at", "last_seen_at"]
    show_columns = list_columns + ["deactivated_at", "deactivation_reason"]
    search_columns = ["license", "device_name", "hardware_fingerprint", "is_active", "last_seen_at"]
    order_columns = ["device_name", "first_activated_at", "last_seen_at", "is_active"]
    base_order = ("first_activated_at", "desc")
    label_columns = {"is_active": "Active", "hardware_fingerprint": "Fingerprint"}
    formatters_columns = timestamps("first_activated_at", "last_seen_at", "deactivated_at")

    @action("deactivate", "Deactivate", "Deactivate the selected devices? Their live sessions end now and "
            "they free a place under the device limit.", "fa-power-off")
    def deactivate(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in items if isinstance(items, list) else [items]:
            if not item.is_active:
                continue
            session.execute(
                text("UPDATE device_registrations SET is_active = false, deactivated_at = now(), "
                     "deactivation_reason = :why WHERE id = :id AND is_active"),
                {"why": f"deactivated by {g.get('heartline_actor', 'admin')}", "id": item.id})
            session.commit()
            try:
                ended = plane().end_device_sessions(item.license_id, item.hardware_fingerprint,
                                                    EndReason.DEVICE_DEACTIVATED, item.id)
            except PlaneError as exc:
                flash(f"Device {item} deactivated, but its sessions could not be ended: {exc}", "danger")
                continue
            log.info("device.deactivated license_id=%s device_id=%s sessions_ended=%s by=%s",
                     item.license_id, item.id, ended, current_admin())
            flash(f"Device {item} deactivated; {ended} live session(s) ended.", "success")
        return back_to_origin(self)


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(DeviceView, "Devices", icon="fa-laptop", category="Licensing")
