"""System API keys: one screen lists and revokes them (System → API keys); its "New API key" button opens
the page that generates a key and shows it once.  That page keeps the seed system's name, "Lizenzserver
Administration", as its subtitle, so those who knew the old page find it."""

from __future__ import annotations

import logging
from typing import Any

from flask import flash, g, url_for
from flask_appbuilder import AppBuilder, BaseView, ModelView, action, expose, has_access
from flask_wtf import FlaskForm
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from admin import permissions
from admin.audit import current_admin
from admin.models.core import ApiKey
from admin.views.base import ReadableInterface, back_to_origin, settings, timestamps
from heartline.apikeys import display_prefix, generate_key, hash_key

log = logging.getLogger("admin.apikeys")

DEFAULT_NAME = "System API key"


def create_api_key(session: Session, name: str, created_by: str) -> tuple[int, str]:
    """Sync twin of heartline.apikeys.create_api_key: store hash + prefix, return (id, key shown once)."""
    name = name.strip()
    if not name:
        raise ValueError("an API key needs a name")
    key = generate_key()
    key_id = session.execute(
        text("INSERT INTO api_keys (name, display_prefix, key_hash, created_by) "
             "VALUES (:name, :prefix, :hash, :by) RETURNING id"),
        {"name": name, "prefix": display_prefix(key), "hash": hash_key(key), "by": created_by}).scalar_one()
    return int(key_id), key


def revoke_api_key(session: Session, key_id: int) -> bool:
    result = session.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"), {"id": key_id})
    return result.rowcount == 1  # type: ignore[attr-defined]


class ApiKeyView(ModelView):
    datamodel = ReadableInterface(ApiKey)
    class_permission_name = permissions.API_KEYS
    list_title = show_title = "API keys"
    base_permissions = ["can_list", "can_show"]
    list_template = "heartline/apikeys_list.html"

    list_columns = ["name", "display_prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    show_columns = list_columns
    search_columns = ["name", "created_by", "revoked_at"]
    order_columns = ["name", "created_at", "last_used_at", "revoked_at"]
    base_order = ("id", "desc")
    label_columns = {"display_prefix": "Key"}
    formatters_columns = timestamps("created_at", "last_used_at", "revoked_at")

    @action("revoke", "Revoke", "Revoke the selected keys? Programs using them are refused within "
            "the edge's API key cache time.", "fa-ban")
    def revoke(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in items if isinstance(items, list) else [items]:
            if revoke_api_key(session, item.id):
                session.commit()
                log.info("api_key.revoked api_key_id=%s by=%s", item.id, current_admin())
                flash(f"API key {item} revoked; edges refuse it within {settings().api_key_cache_s:.0f} s.",
                      "success")
            else:
                flash(f"API key {item} was already revoked.", "info")
        return back_to_origin(self)


class NewKeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)], default=DEFAULT_NAME)


class SystemAdministrationView(BaseView):
    """Generate a system API key (subtitle: 'Lizenzserver Administration', the seed's name for it)."""

    route_base = "/system"
    default_view = "index"
    class_permission_name = permissions.SYSTEM_ADMINISTRATION

    @expose("/", methods=["GET", "POST"])
    @has_access
    def index(self) -> Any:
        session = self.appbuilder.session
        form = NewKeyForm()
        new_key = None
        if form.validate_on_submit():
            key_id, new_key = create_api_key(session, form.name.data or DEFAULT_NAME,
                                             created_by=g.get("heartline_actor") or "admin")
            session.commit()
            log.info("api_key.created api_key_id=%s actor=%s", key_id, g.get("heartline_actor"))
            form = NewKeyForm(formdata=None)
        counted = select(func.count()).select_from(ApiKey)
        active = session.execute(counted.where(ApiKey.revoked_at.is_(None))).scalar_one()
        revoked = session.execute(counted.where(ApiKey.revoked_at.is_not(None))).scalar_one()
        return self.render_template("heartline/system.html", form=form, new_key=new_key, active=active,
                                    revoked=revoked,
                                    cache_s=settings().api_key_cache_s,
                                    list_url=url_for("ApiKeyView.list"))


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(ApiKeyView, "API keys", icon="fa-plug", category="System", category_icon="fa-server")
    appbuilder.add_view_no_menu(SystemAdministrationView)
