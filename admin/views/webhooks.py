"""Webhook endpoints (URL, event filter, signing secret shown once), the delivery log with every
attempt, and a resend action.  The worker does all the sending (docs/webhooks.md); these screens only
write to PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import flash, g
from flask_appbuilder import AppBuilder, ModelView, action
from markupsafe import Markup
from sqlalchemy import text
from wtforms import Form
from wtforms.fields import Field, SelectMultipleField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, ValidationError

from admin import permissions
from admin.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from admin.views.base import ReadableInterface, back_to_origin, settings, timestamps, when
from heartline.webhooks.catalogue import EventType
from heartline.webhooks.secrets import SecretBox, new_secret
from heartline.webhooks.targets import WebhookTargetRefused, check_target

log = logging.getLogger("admin.webhooks")

EVENT_CHOICES = [SelectChoice(str(t), str(t)) for t in EventType]


def safe_target(form: Form, field: Field) -> None:
    """The SSRF guard of heartline.webhooks.targets, as a form error."""
    try:
        check_target((field.data or "").strip(), allow_private=settings().webhook_allow_private_targets)
    except WebhookTargetRefused as exc:
        raise ValidationError(exc.message) from None


def _events(value: list[str] | None) -> str:
    return ", ".join(value) if value else "all events"


class WebhookAttemptView(ModelView):
    datamodel = ReadableInterface(WebhookAttempt)
    class_permission_name = permissions.WEBHOOK_DELIVERIES
    list_title = "Delivery attempts"
    # The same permission set as WebhookDeliveryView, whose permission name it shares: a narrower set
    # would make FAB try to prune the deliveries' can_show / resend at every start (and log its refusal).
    base_permissions = ["can_list", "can_show", "resend"]
    list_columns = ["attempted_at", "status_code", "latency_ms", "response_excerpt", "error", "manual"]
    base_order = ("attempted_at", "desc")
    label_columns = {"status_code": "HTTP status", "latency_ms": "Latency (ms)", "response_excerpt": "Response"}
    formatters_columns = {**timestamps("attempted_at"), "status_code": lambda v: v if v is not None else "—"}


class WebhookDeliveryView(ModelView):
    datamodel = ReadableInterface(WebhookDelivery)
    class_permission_name = permissions.WEBHOOK_DELIVERIES
    list_title = show_title = "Webhook deliveries"
    base_permissions = ["can_list", "can_show"]
    related_views = [WebhookAttemptView]
    show_template = "appbuilder/general/model/show_cascade.html"

    list_columns = ["created_at", "event_type", "message_id", "endpoint", "status", "attempts",
                    "last_attempt_at", "next_attempt_at"]
    show_columns = ["message_id", "event_type", "endpoint", "status", "attempts", "created_at",
                    "last_attempt_at", "next_attempt_at", "delivered_at", "payload"]
    search_columns = ["status", "endpoint", "message_id", "created_at"]
    order_columns = ["created_at", "status", "attempts", "last_attempt_at", "next_attempt_at"]
    base_order = ("created_at", "desc")
    label_columns = {"message_id": "webhook-id", "event_type": "Event"}
    formatters_columns = {
        **timestamps("created_at", "last_attempt_at", "delivered_at"),
        "next_attempt_at": lambda v: when(v),
        "status": lambda v: Markup('<span class="hl-delivery" data-status="{0}">{0}</span>').format(v),
        "payload": lambda v: Markup("<pre class=\"hl-payload\">{}</pre>").format(v),
    }

    @action("resend", "Resend", "Send the selected deliveries again now, under the same webhook-id?",
            "fa-repeat")
    def resend(self, items: Any) -> Any:
        items = items if isinstance(items, list) else [items]
        session = self.datamodel.session
        session.execute(text("UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), "
                             "manual_resend = true WHERE id = ANY (:ids)"), {"ids": [i.id for i in items]})
        session.commit()
        disabled = sorted({str(i.endpoint) for i in items if not i.endpoint.enabled})
        log.info("webhook.resend deliveries=%s actor=%s", [i.id for i in items], g.get("heartline_actor"))
        flash(f"{len(items)} delivery(ies) queued; the worker sends them within seconds.", "success")
        if disabled:
            flash(f"Disabled endpoints get nothing until enabled again: {', '.join(disabled)}.", "warning")
        return back_to_origin(self)


class WebhookEndpointView(ModelView):
    datamodel = ReadableInterface(WebhookEndpoint)
    class_permission_name = permissions.WEBHOOK_ENDPOINTS
    list_title = show_title = add_title = edit_title = "Webhook endpoints"
    related_views = [WebhookDeliveryView]
    show_template = "appbuilder/general/model/show_cascade.html"

    list_columns = ["url", "description", "event_types", "state", "last_success_at"]
    show_columns = ["url", "description", "event_types", "state", "enabled", "disabled_at", "disabled_reason",
                    "failing_since", "last_success_at", "created_at", "updated_at"]
    add_columns = edit_columns = ["url", "description", "event_types"]
    search_columns = ["url", "description", "enabled"]
    order_columns = ["url", "last_success_at"]
    base_order = ("id", "desc")
    label_columns = {"url": "URL", "event_types": "Events", "state": "State"}
    formatters_columns = {**timestamps("disabled_at", "failing_since", "last_success_at", "created_at",
                                       "updated_at"),
                          "event_types": _events}
    description_columns = {
        "url": "http(s) URL; loopback and private addresses are refused unless "
               "HEARTLINE_WEBHOOK_ALLOW_PRIVATE_TARGETS is set.",
        "event_types": "None selected: every event.",
    }
    add_form_extra_fields = edit_form_extra_fields = {
        "event_types": SelectMultipleField("Events", choices=EVENT_CHOICES, default=[],
                                           render_kw={"class": "form-control"}),
    }
    validators_columns = {"url": [DataRequired(message="Enter the URL to send events to."),
                                  Length(max=2000), safe_target]}

    def pre_add(self, item: WebhookEndpoint) -> None:
        item.url = item.url.strip()
        item.event_types = list(item.event_types or [])
        item._new_secret = new_secret()  # type: ignore[attr-defined]
        item.secret_encrypted = SecretBox(settings()).seal(item._new_secret)  # type: ignore[attr-defined]

    def pre_update(self, item: WebhookEndpoint) -> None:
        item.url = item.url.strip()
        item.event_types = list(item.event_types or [])

    def post_add(self, item: WebhookEndpoint) -> None:
        log.info("webhook.endpoint.created endpoint_id=%s actor=%s", item.id, g.get("heartline_actor"))
        _show_secret(item.url, item._new_secret)  # type: ignore[attr-defined]

    @action("rotate_secret", "Rotate secret", "Give the selected endpoints a new signing secret? Receivers "
            "must switch to it: the old one stops verifying at once.", "fa-refresh", multiple=False)
    def rotate_secret(self, items: Any) -> Any:
        session = self.datamodel.session
        for item in items if isinstance(items, list) else [items]:
            secret = new_secret()
            session.execute(text("UPDATE webhook_endpoints SET secret_encrypted = :s WHERE id = :id"),
                            {"s": SecretBox(settings()).seal(secret), "id": item.id})
            session.commit()
            _show_secret(item.url, secret)
        return back_to_origin(self)

    @action("enable", "Enable", "Enable the selected endpoints? Deliveries still pending are sent again.",
            "fa-play")
    def enable(self, items: Any) -> Any:
        return self._set_enabled(items, True)

    @action("disable", "Disable", "Disable the selected endpoints? Nothing is sent to them until enabled.",
            "fa-pause")
    def disable(self, items: Any) -> Any:
        return self._set_enabled(items, False)

    def _set_enabled(self, items: Any, enabled: bool) -> Any:
        session = self.datamodel.session
        ids = [i.id for i in (items if isinstance(items, list) else [items])]
        if enabled:
            session.execute(text("UPDATE webhook_endpoints SET enabled = true, disabled_at = NULL, "
                                 "disabled_reason = NULL, failing_since = NULL WHERE id = ANY (:ids)"), {"ids": ids})
        else:
            session.execute(text("UPDATE webhook_endpoints SET enabled = false, disabled_at = now(), "
                                 "disabled_reason = :why WHERE id = ANY (:ids) AND enabled"),
                            {"ids": ids, "why": f"disabled by {g.get('heartline_actor', 'admin')}"})
        session.commit()
        flash(f"{len(ids)} endpoint(s) {'enabled' if enabled else 'disabled'}.", "success")
        return back_to_origin(self)


def _show_secret(url: str, secret: str) -> None:
    flash(Markup('Signing secret for {}: <code id="webhook-secret">{}</code> — copy it now, it is not shown '
                 "again.").format(url, secret), "info")


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(WebhookEndpointView, "Webhook endpoints", icon="fa-paper-plane", category="Webhooks")
    appbuilder.add_view(WebhookDeliveryView, "Deliveries", icon="fa-list", category="Webhooks")
    appbuilder.add_view_no_menu(WebhookAttemptView)
