"""How every list and show screen renders a value: one look for empty values, yes/no and timestamps.

FAB prints a value's str(): `None`, `True`, `2026-11-30 18:05:36.123456+00:00`.  The list and show
widgets here (installed on every ModelView by `install`, FAB's security screens included) pass each
cell through `cell`: empty → "—", booleans → yes / no, timestamps → `when` (24-hour UTC, to the second).
The show widget also has the Edit button and styles destructive actions (admin/templates/heartline/widgets).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from flask import Flask
from flask_appbuilder import AppBuilder, ModelView
from flask_appbuilder.security.views import RoleListWidget
from flask_appbuilder.widgets import ListWidget, ShowWidget
from markupsafe import Markup

from admin.views.base import when

EMPTY = "—"
# Actions shown as the destructive kind (red, after the others) wherever they appear.
DESTRUCTIVE_ACTIONS = frozenset({"revoke", "terminate", "delete", "retire", "disable"})


def cell(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not isinstance(value, Markup) and not value.strip()):
        return EMPTY
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, dt.datetime):
        return when(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple, set)) or type(value).__name__ == "InstrumentedList":
        items = [str(v) for v in value]
        return ", ".join(items) if items else EMPTY
    return value


class HeartlineListWidget(ListWidget):
    template = "heartline/widgets/list.html"


class HeartlineShowWidget(ShowWidget):
    template = "heartline/widgets/show.html"


class HeartlineRoleListWidget(RoleListWidget):
    template = "heartline/widgets/roles_list.html"


def _views(appbuilder: AppBuilder) -> Iterable[ModelView]:
    return (v for v in appbuilder.baseviews if isinstance(v, ModelView))


def install(app: Flask, appbuilder: AppBuilder) -> None:
    app.jinja_env.filters["hl_cell"] = cell
    app.jinja_env.globals["hl_destructive"] = DESTRUCTIVE_ACTIONS

    def can(permission: str, modelview_name: str) -> bool:
        for view in _views(appbuilder):
            if type(view).__name__ == modelview_name:
                return bool(appbuilder.sm.has_access(permission, view.class_permission_name))
        return False

    app.jinja_env.globals["hl_can"] = can
    for view in _views(appbuilder):
        if view.list_widget is ListWidget:
            view.list_widget = HeartlineListWidget
        elif view.list_widget is RoleListWidget:
            view.list_widget = HeartlineRoleListWidget
        if view.show_widget is ShowWidget:
            view.show_widget = HeartlineShowWidget
