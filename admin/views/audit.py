"""The audit log: every change to business tables, who made it and old → new values (read-only)."""

from __future__ import annotations

from typing import Any

from flask_appbuilder import AppBuilder, ModelView
from markupsafe import Markup, escape

from admin import permissions
from admin.models.core import AuditLog
from admin.views.base import ReadableInterface, timestamps

# Columns that change with every update and only add noise to the diff.
NOISE = {"updated_at", "version"}


def render_changes(changes: list[tuple[str, Any, Any]]) -> Markup:
    rows = []
    for column, old, new in changes:
        if column in NOISE and old is not None and new is not None:
            continue
        cells = []
        if old is not None:
            cells.append(f'<span class="hl-diff-old">{escape(_short(old))}</span>')
        if old is not None and new is not None:
            cells.append(" → ")
        if new is not None:
            cells.append(f'<span class="hl-diff-new">{escape(_short(new))}</span>')
        rows.append(f"<b>{escape(column)}</b>: {''.join(cells)}")
    return Markup('<div class="hl-json">' + "<br>".join(rows) + "</div>")


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class AuditLogView(ModelView):
    datamodel = ReadableInterface(AuditLog)
    class_permission_name = permissions.AUDIT_LOG
    list_title = show_title = "Audit log"
    base_permissions = ["can_list", "can_show"]

    list_columns = ["occurred_at", "actor", "table_name", "operation", "row_id", "changes"]
    show_columns = list_columns
    search_columns = ["table_name", "actor", "operation", "row_id", "occurred_at"]
    order_columns = ["occurred_at", "actor", "table_name"]
    base_order = ("occurred_at", "desc")
    label_columns = {"occurred_at": "When", "table_name": "Table", "row_id": "Row",
                     "changes": "Changes (old → new)"}
    formatters_columns = {"changes": render_changes, **timestamps("occurred_at")}
    page_size = 50


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(AuditLogView, "Audit log", icon="fa-list-alt", category="System")
