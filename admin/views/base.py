"""Shared pieces of the admin views: readable database refusals and access to settings / the plane."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, redirect, request, url_for
from flask_appbuilder.models.sqla.interface import SQLAInterface
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.wrappers import Response

from admin.plane import AdminPlane
from admin.views import filters
from heartline.settings import Settings

# What the database's named constraints mean, in the words a form error would use.  Forms check these
# first; the messages here catch what a form cannot see (a concurrent edit, a unique key).
CONSTRAINT_MESSAGES = {
    "licenses_device_limit_range": "The device limit must be between 1 and 10.",
    "licenses_sessions_limit_range":
        "The concurrent sessions limit must be at least 1 and not greater than the device limit.",
    "licenses_timeout_exceeds_interval":
        "The heartbeat timeout must be greater than the heartbeat interval (defaults: 60 s and 30 s).",
    "licenses_valid_range": "'Valid until' must be after 'valid from'.",
    "licenses_license_key_key": "This license key exists already.",
    "licenses_customer_id_fkey": "This customer still has licenses; delete or move them first.",
    "device_registrations_fingerprint_per_license": "This device is already registered for the license.",
    "customers_name_check": "A customer needs a name.",
}


class DatabaseRefusal(Exception):
    """A write the database refused; str() is the sentence shown to the admin."""


def refusal_message(exc: SQLAlchemyError) -> str:
    orig: Any = getattr(exc, "orig", None)
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name in CONSTRAINT_MESSAGES:
        return CONSTRAINT_MESSAGES[name]
    if isinstance(exc, IntegrityError):
        detail = getattr(diag, "message_detail", None) or getattr(diag, "message_primary", None)
        return f"The database refused the change: {detail or 'a constraint is violated'}."
    return "The database refused the change."


class HeartlineInterface(SQLAInterface):
    """SQLAInterface that knows PostgreSQL's UUID, INET and ARRAY columns: search filters that work and
    text fields in forms (admin/views/filters.py), instead of FAB's warnings on every screen."""

    filter_converter_class = filters.FilterConverter

    def is_uuid(self, col_name: str) -> bool:
        return filters.is_uuid(self, col_name)

    def is_inet(self, col_name: str) -> bool:
        return filters.is_inet(self, col_name)

    def is_array(self, col_name: str) -> bool:
        return filters.is_array(self, col_name)

    def is_string(self, col_name: str) -> bool:
        # forms (add, edit, search) show tokens and addresses as text fields
        return super().is_string(col_name) or self.is_uuid(col_name) or self.is_inet(col_name)


class ReadableInterface(HeartlineInterface):
    """HeartlineInterface whose refusals read as sentences instead of SQL errors."""

    def add(self, item: Any, commit: bool = True) -> None:
        try:
            super().add(item, commit)
        except SQLAlchemyError as exc:
            raise DatabaseRefusal(refusal_message(exc)) from None

    def edit(self, item: Any, commit: bool = True) -> None:
        try:
            super().edit(item, commit)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, SQLAlchemyError) else exc
            if isinstance(cause, SQLAlchemyError):
                raise DatabaseRefusal(refusal_message(cause)) from None
            raise

    def delete(self, item: Any, commit: bool = True) -> None:
        try:
            super().delete(item, commit)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, SQLAlchemyError) else exc
            if isinstance(cause, SQLAlchemyError):
                raise DatabaseRefusal(refusal_message(cause)) from None
            raise


def settings() -> Settings:
    return current_app.config["HEARTLINE_SETTINGS"]  # type: ignore[no-any-return]


def plane() -> AdminPlane:
    return AdminPlane(settings())


def when(value: dt.datetime | None) -> str:
    """Timestamps as the admins read them: to the second, in UTC; '—' for none."""
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def timestamps(*columns: str) -> dict[str, Callable[[Any], str]]:
    """formatters_columns entries rendering `columns` with `when`."""
    return {column: when for column in columns}


def back_to_origin(view: Any) -> Response:
    """Where an action lands: the page it was started from — the list, with its filters, page and order,
    or the show page — as the browser's Referer names it (same site only), else the view's list.

    FAB's get_redirect pops its page history once too often after a list action and lands on the page
    *before* the list (the dashboard, say)."""
    referrer = request.referrer
    if referrer:
        parts = urlsplit(referrer)
        if parts.netloc in ("", request.host) and parts.path.startswith("/") and "/action" not in parts.path:
            return redirect(parts.path + (f"?{parts.query}" if parts.query else ""))
    return redirect(url_for(f"{type(view).__name__}.list"))
