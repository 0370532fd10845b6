"""Lead CRM: institutions with contacts and an activity timeline, pipeline by stage, my open tasks,
search, CSV export and the conversion of a won institution into a customer.

Institutions, contacts and activities are edited with FAB's forms; stage changes and the conversion go
through heartline.crm (timeline note, row lock), on the admin session's connection.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, flash, g, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_appbuilder import AppBuilder, BaseView, ModelView, expose
from flask_appbuilder.security.decorators import has_access
from markupsafe import escape
from sqlalchemy.orm import Session
from wtforms import BooleanField, Field, Form, SelectField
from wtforms.validators import DataRequired, Email, Optional, ValidationError

from admin.fields import UtcDateTimeField
from admin.models.crm import Activity, Contact, Institution
from admin.views.base import HeartlineInterface
from admin.views.resources import MAX_ID, service_transaction
from heartline import crm
from heartline.crm import ActivityKind, CrmError, Stage

INSTITUTIONS = "CrmInstitutions"
CONTACTS = "CrmContacts"
ACTIVITIES = "CrmActivities"
CRM = "Crm"

CATEGORY = "CRM"
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]


def _username() -> str:
    return str(g.user.username)


def _due_only_for_tasks(form: Form, field: Field) -> None:
    if field.data and form.kind.data != ActivityKind.TASK:
        raise ValidationError("Only tasks have a due date.")


class ContactView(ModelView):
    datamodel = HeartlineInterface(Contact)
    class_permission_name = CONTACTS
    list_title = show_title = add_title = edit_title = "Contacts"

    list_columns = ["name", "institution", "role", "email", "phone"]
    show_columns = ["name", "institution", "role", "email", "phone", "created_at"]
    add_columns = edit_columns = ["institution", "name", "role", "email", "phone"]
    search_columns = ["name", "institution", "role", "email", "phone"]
    order_columns = ["name", "role", "email"]
    base_order = ("name", "asc")
    validators_columns = {"name": [DataRequired()], "email": [Optional(), Email()],
                          "institution": [DataRequired()]}


class ActivityView(ModelView):
    datamodel = HeartlineInterface(Activity)
    class_permission_name = ACTIVITIES
    list_title = show_title = add_title = edit_title = "Activities"

    list_columns = ["occurred_at", "kind", "subject", "institution", "contact", "owner", "due_at", "done"]
    show_columns = ["institution", "contact", "kind", "subject", "body", "occurred_at", "due_at", "done", "owner"]
    add_columns = edit_columns = ["institution", "contact", "kind", "subject", "body", "due_at", "done", "owner"]
    search_columns = ["kind", "subject", "institution", "owner", "done", "due_at"]
    order_columns = ["occurred_at", "kind", "due_at", "done"]
    base_order = ("occurred_at", "desc")
    # Timestamps typed as YYYY-MM-DD HH:MM, 24-hour UTC (admin/fields.py).
    add_form_extra_fields = edit_form_extra_fields = {
        "kind": SelectField("Kind", choices=[k.value for k in ActivityKind],
                            validators=[DataRequired()], render_kw={"class": "form-control"}),
        # NOT NULL would make FAB's checkbox required, i.e. only done activities could be saved.
        "done": BooleanField("Done", default=False),
        "due_at": UtcDateTimeField("Due (UTC, tasks only)", validators=[Optional(), _due_only_for_tasks],
                                   format=DATETIME_FORMATS, description="YYYY-MM-DD HH:MM, 24-hour UTC."),
    }
    validators_columns = {"subject": [DataRequired()], "institution": [DataRequired()]}

    def pre_add(self, item: Activity) -> None:
        item.owner = item.owner or _username()


class InstitutionView(ModelView):
    datamodel = HeartlineInterface(Institution)
    class_permission_name = INSTITUTIONS
    list_title = show_title = add_title = edit_title = "Institutions"
    related_views = [ContactView, ActivityView]

    list_columns = ["page_link", "kind", "city", "country", "stage", "owner", "customer"]
    show_columns = ["page_link", "kind", "city", "country", "website", "stage", "owner", "customer", "notes",
                    "created_at", "updated_at"]
    # The stage moves on the institution's page (heartline.crm.change_stage leaves a timeline note), so
    # the edit form leaves it alone.
    add_columns = edit_columns = ["name", "kind", "city", "country", "website", "owner", "notes"]
    search_columns = ["name", "kind", "city", "country", "stage", "owner"]
    order_columns = ["kind", "city", "country", "stage", "owner"]
    base_order = ("name", "asc")
    label_columns = {"page_link": "Name"}
    validators_columns = {"name": [DataRequired()]}

    def pre_add(self, item: Institution) -> None:
        item.owner = item.owner or _username()



class CrmView(BaseView):
    """Pipeline, institution page (timeline, stage, conversion), my open tasks, search, export."""

    route_base = "/crm"
    class_permission_name = CRM
    default_view = "pipeline"

    def _db(self) -> Session:
        # A method, not a property: FAB walks the attributes of a view before it has an appbuilder.
        return self.appbuilder.session  # type: ignore[no-any-return]

    @expose("/pipeline")
    @has_access
    def pipeline(self) -> str:
        """Institutions by stage."""
        with service_transaction(self._db()) as (conn, _actor):
            board = crm.pipeline(conn)
        return self.render_template("crm/pipeline.html", board=board)

    @expose(f"/institution/<int(max={MAX_ID}):institution_id>")
    @has_access
    def institution(self, institution_id: int) -> Any:
        """One institution: details, contacts, timeline, stage change, new activity, conversion."""
        inst = self._db().get(Institution, institution_id)
        if inst is None:
            flash(f"Institution {institution_id} does not exist.", "danger")
            return redirect(url_for("CrmView.pipeline"))
        with service_transaction(self._db()) as (conn, _actor):
            events = crm.timeline(conn, institution_id)
        return self.render_template("crm/institution.html", inst=inst, events=events, stages=list(Stage),
                                    kinds=list(ActivityKind))

    @expose(f"/institution/<int(max={MAX_ID}):institution_id>/stage", methods=["POST"])
    @has_access
    def change_stage(self, institution_id: int) -> ResponseReturnValue:
        """Move the institution to another stage (audited, noted on the timeline)."""
        try:
            with service_transaction(self._db()) as (conn, actor):
                old = crm.change_stage(conn, institution_id, request.form.get("stage", ""), actor=actor)
            flash(f"Stage: {old} → {request.form.get('stage')}.", "success")
        except CrmError as exc:
            flash(f"Refused ({exc.code}): {exc.message}", "danger")
        return redirect(url_for("CrmView.institution", institution_id=institution_id))

    @expose(f"/institution/<int(max={MAX_ID}):institution_id>/convert", methods=["POST"])
    @has_access
    def convert(self, institution_id: int) -> ResponseReturnValue:
        """Create the customer of a won institution, once."""
        try:
            with service_transaction(self._db()) as (conn, actor):
                result = crm.convert_to_customer(conn, institution_id, actor=actor)
        except CrmError as exc:
            flash(f"Refused ({exc.code}): {exc.message}", "danger")
            return redirect(url_for("CrmView.institution", institution_id=institution_id))
        if result.created:
            flash(f"Customer #{result.customer_id} created.", "success")
        else:
            flash(f"Already converted: customer #{result.customer_id}.", "info")
        return redirect(url_for("CrmView.institution", institution_id=institution_id))

    @expose(f"/institution/<int(max={MAX_ID}):institution_id>/activity", methods=["POST"])
    @has_access
    def add_activity(self, institution_id: int) -> ResponseReturnValue:
        """Log a call / e-mail / meeting / note or create a task on the timeline."""
        form = request.form
        due_at: dt.datetime | None = None
        try:
            if form.get("due_at"):
                due_at = dt.datetime.fromisoformat(form["due_at"])
                if due_at.tzinfo is None:
                    due_at = due_at.replace(tzinfo=dt.UTC)
            kind = ActivityKind(form.get("kind", ""))
        except ValueError:
            flash("Choose a kind, and give the due date as YYYY-MM-DD (or YYYY-MM-DD HH:MM, 24-hour UTC).", "danger")
            return redirect(url_for("CrmView.institution", institution_id=institution_id))
        try:
            with service_transaction(self._db()) as (conn, actor):
                crm.add_activity(conn, institution_id, kind, form.get("subject", ""), actor=actor,
                                 body=form.get("body") or None, due_at=due_at)
            flash(f"{kind.capitalize()} added.", "success")
        except CrmError as exc:
            flash(f"Refused ({exc.code}): {exc.message}", "danger")
        return redirect(url_for("CrmView.institution", institution_id=institution_id))

    @expose("/tasks")
    @has_access
    def tasks(self) -> str:
        """The logged-in admin's open tasks, overdue first."""
        with service_transaction(self._db()) as (conn, _actor):
            mine = crm.open_tasks(conn, _username())
        return self.render_template("crm/tasks.html", tasks=mine)

    @expose(f"/tasks/<int(max={MAX_ID}):activity_id>/done", methods=["POST"])
    @has_access
    def task_done(self, activity_id: int) -> ResponseReturnValue:
        """Tick a task off."""
        try:
            with service_transaction(self._db()) as (conn, actor):
                crm.complete_task(conn, activity_id, actor=actor)
            flash("Task done.", "success")
        except CrmError as exc:
            flash(f"Refused ({exc.code}): {exc.message}", "danger")
        return redirect(request.form.get("next") or url_for("CrmView.tasks"))

    @expose("/search")
    @has_access
    def search(self) -> str:
        """Search institutions and contacts."""
        query = (request.args.get("q") or "")[:200]
        with service_transaction(self._db()) as (conn, _actor):
            hits = crm.search(conn, query)
        return self.render_template("crm/search.html", query=query, hits=hits)

    @expose("/export.csv")
    @has_access
    def export(self) -> ResponseReturnValue:
        """Institutions as CSV, optionally one stage."""
        stage = request.args.get("stage") or None
        try:
            with service_transaction(self._db()) as (conn, _actor):
                body = crm.export_csv(conn, stage=stage)
        except CrmError as exc:
            return Response(f"{exc.code}: {escape(exc.message)}\n", status=exc.status, mimetype="text/plain")
        name = f"institutions-{stage or 'all'}-{dt.date.today().isoformat()}.csv"
        return Response(body, mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(CrmView, "Pipeline", icon="fa-columns", category=CATEGORY, category_icon="fa-handshake-o")
    appbuilder.add_view(InstitutionView, "Institutions", icon="fa-university", category=CATEGORY)
    appbuilder.add_view(ContactView, "Contacts", icon="fa-address-book", category=CATEGORY)
    appbuilder.add_view(ActivityView, "Activities", icon="fa-calendar", category=CATEGORY)
    appbuilder.add_link("My open tasks", href="CrmView.tasks", icon="fa-check-square-o", category=CATEGORY)
    appbuilder.add_link("Search", href="CrmView.search", icon="fa-search", category=CATEGORY)
    appbuilder.add_link("Export CSV", href="CrmView.export", icon="fa-download", category=CATEGORY)
