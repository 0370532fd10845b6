"""Resource pools: dashboard, bulk import with a per-line report, allocation per license, history.

The screens call heartline.resources on the psycopg connection under the admin's SQLAlchemy session, so
a service call and the session share one transaction (and its audit actor); `service_transaction`
commits it or rolls it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Response, current_app, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_appbuilder import AppBuilder, BaseView, ModelView, expose
from flask_appbuilder.actions import action
from flask_appbuilder.security.decorators import has_access
from sqlalchemy.orm import Session

from admin import actor as admin_actor
from admin.models.resources import ResourceAllocation, ResourcePool
from admin.views.base import HeartlineInterface, back_to_origin
from heartline import resources
from heartline.resources import ResourceError, ResourceType
from heartline.settings import Settings

# Permission (view) names, as FAB stores them; the Admin role gets all of them.
RESOURCE_POOLS = "ResourcePools"
RESOURCE_ALLOCATIONS = "ResourceAllocations"
# Not "Resources": that is the menu category's name, and FAB would prune the category's menu_access as a
# permission of this view at every start (admin/permissions.py).
RESOURCES = "ResourceDashboard"

CATEGORY = "Resources"
# Ids in URLs and forms are bigint: larger numbers are a 404 / a refusal, not a database error.
MAX_ID = 2**63 - 1
# Uploads beyond this are refused before parsing: a pool file is lines of at most 253 characters.
MAX_IMPORT_BYTES = 2 * 1024 * 1024


def heartline_settings() -> Settings:
    return current_app.config["HEARTLINE_SETTINGS"]  # type: ignore[no-any-return]


@contextmanager
def service_transaction(session: Session) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """The psycopg connection of the admin's session and the request's audit actor ('admin:<user>').

    Commits when the block ends normally, rolls back on any error, so a refused service call leaves
    nothing behind and the session is usable again.
    """
    try:
        dbapi = session.connection().connection.driver_connection
        assert isinstance(dbapi, psycopg.Connection)
        yield dbapi, admin_actor.current_actor(session)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _parse_type(raw: str | None) -> ResourceType | None:
    try:
        return ResourceType(raw or "")
    except ValueError:
        return None


class ResourcePoolView(ModelView):
    """Every pool entry; filter by type and status. Entries come in through the import screen."""

    datamodel = HeartlineInterface(ResourcePool)
    class_permission_name = RESOURCE_POOLS
    list_title = show_title = edit_title = "Resource pool"
    base_permissions = ["can_list", "can_show", "can_edit", "can_retire", "can_reinstate"]

    list_columns = ["resource_type", "value", "status", "license", "allocated_at", "quarantined_until", "notes"]
    show_columns = ["resource_type", "value", "status", "license", "allocated_at", "quarantined_until",
                    "notes", "created_at"]
    edit_columns = ["notes"]
    search_columns = ["resource_type", "value", "status", "license", "notes"]
    order_columns = ["resource_type", "value", "status", "allocated_at", "quarantined_until"]
    base_order = ("value", "asc")
    label_columns = {"resource_type": "Type", "quarantined_until": "Quarantined until",
                     "allocated_at": "Allocated"}

    def _ids(self, items: Any) -> list[int]:
        return [item.id for item in (items if isinstance(items, list) else [items])]

    @action("retire", "Retire", "Take the selected free resources out of service?", "fa-ban")
    def retire(self, items: Any) -> ResponseReturnValue:
        with service_transaction(self.datamodel.session) as (conn, actor):
            count = resources.retire(conn, self._ids(items), actor=actor)
        flash(f"Retired {count} resource(s); allocated ones are left alone.", "info")
        self.update_redirect()
        return back_to_origin(self)

    @action("reinstate", "Reinstate", "Put the selected retired resources back into the pool?", "fa-undo")
    def reinstate(self, items: Any) -> ResponseReturnValue:
        with service_transaction(self.datamodel.session) as (conn, actor):
            count = resources.reinstate(conn, self._ids(items), actor=actor)
        flash(f"Reinstated {count} resource(s).", "info")
        self.update_redirect()
        return back_to_origin(self)


class ResourceAllocationView(ModelView):
    """Allocation history: who got which resource when, and who released it."""

    datamodel = HeartlineInterface(ResourceAllocation)
    class_permission_name = RESOURCE_ALLOCATIONS
    list_title = show_title = "Allocation history"
    base_permissions = ["can_list", "can_show"]

    list_columns = ["resource", "license", "allocated_at", "allocated_by", "released_at", "released_by"]
    show_columns = list_columns
    search_columns = ["resource", "license", "allocated_by", "released_by", "allocated_at", "released_at"]
    order_columns = ["allocated_at", "released_at"]
    base_order = ("allocated_at", "desc")
    label_columns = {"allocated_at": "Allocated", "released_at": "Released"}


class ResourcesView(BaseView):
    """Pool dashboard, bulk import and per-license allocation."""

    route_base = "/resources"
    class_permission_name = RESOURCES
    default_view = "dashboard"

    def _db(self) -> Session:
        # A method, not a property: FAB walks the attributes of a view before it has an appbuilder.
        return self.appbuilder.session  # type: ignore[no-any-return]

    @expose("/")
    @has_access
    def dashboard(self) -> str:
        """Free / allocated / quarantined per type, with a warning where a type runs low."""
        settings = heartline_settings()
        with service_transaction(self._db()) as (conn, _actor):
            stats = resources.pool_stats(conn, settings=settings)
        return self.render_template("resources/dashboard.html", stats=stats, settings=settings,
                                    types=list(ResourceType))

    @expose("/quarantine/release", methods=["POST"])
    @has_access
    def release_quarantine(self) -> ResponseReturnValue:
        """Return resources whose quarantine is over to available."""
        with service_transaction(self._db()) as (conn, actor):
            count = resources.release_quarantined(conn, actor=actor)
        flash(f"{count} resource(s) left quarantine.", "info")
        return redirect(url_for("ResourcesView.dashboard"))

    @expose("/import", methods=["GET", "POST"])
    @has_access
    def import_(self) -> Any:
        """Paste values or upload a CSV file; every line is reported as added, duplicate or refused."""
        settings = heartline_settings()
        if (request.content_length or 0) > MAX_IMPORT_BYTES + 64 * 1024:
            # Refused before the body is parsed: a pasted text is no cheaper to hold than a file.
            return Response(f"An import is limited to {MAX_IMPORT_BYTES // (1024 * 1024)} MB.\n",
                            status=413, mimetype="text/plain")
        resource_type = request.form.get("resource_type", ResourceType.DOMAIN.value)
        pasted = request.form.get("text", "")
        dry_run = bool(request.form.get("dry_run"))
        form = {"resource_type": resource_type, "text": pasted, "dry_run": dry_run}
        if request.method == "GET":
            return self.render_template("resources/import.html", form=form, report=None,
                                        types=list(ResourceType), settings=settings)
        kind = _parse_type(resource_type)
        text, problem = self._import_text(pasted)
        if kind is None:
            problem = "Choose a resource type."
        if problem or kind is None:
            flash(problem or "Nothing to import.", "danger")
            return self.render_template("resources/import.html", form=form, report=None,
                                        types=list(ResourceType), settings=settings), 400
        with service_transaction(self._db()) as (conn, actor):
            report = resources.import_resources(conn, kind, text, actor=actor, settings=settings,
                                                dry_run=dry_run)
        verb = "Would add" if report.dry_run else "Added"
        flash(f"{verb} {report.added}, skipped {report.duplicates} duplicate(s), refused {report.refused}.",
              "warning" if report.refused else "success")
        return self.render_template("resources/import.html", form=form, report=report,
                                    types=list(ResourceType), settings=settings)

    @staticmethod
    def _import_text(pasted: str) -> tuple[str, str | None]:
        """The text to import: the uploaded file when one was chosen, else the pasted text."""
        upload = request.files.get("file")
        if upload is not None and upload.filename:
            data = upload.stream.read(MAX_IMPORT_BYTES + 1)
            if len(data) > MAX_IMPORT_BYTES:
                return "", f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB."
            try:
                return data.decode("utf-8-sig"), None
            except UnicodeDecodeError:
                return "", "The file is not UTF-8 text."
        if not pasted.strip():
            return "", "Paste some values or choose a CSV file."
        return pasted, None

    @expose("/license")
    @has_access
    def find_license(self) -> ResponseReturnValue:
        """Open the allocation page of the license with the given key or id."""
        query = (request.args.get("q") or "").strip()
        with service_transaction(self._db()) as (conn, _actor):
            row = conn.execute(
                "SELECT id FROM licenses WHERE license_key = %s OR id::text = %s LIMIT 1",
                (query, query)).fetchone()
        if row is None:
            flash(f"No license with key or id {query!r}.", "danger")
            return redirect(url_for("ResourcesView.dashboard"))
        return redirect(url_for("ResourcesView.license", license_id=row[0]))

    @expose(f"/license/<int(max={MAX_ID}):license_id>")
    @has_access
    def license(self, license_id: int) -> Any:
        """Quotas, held resources and allocation history of one license."""
        with service_transaction(self._db()) as (conn, _actor):
            lic = conn.execute("SELECT l.id, l.license_key, l.status, c.name FROM licenses l"
                               " JOIN customers c ON c.id = l.customer_id WHERE l.id = %s",
                               (license_id,)).fetchone()
            if lic is None:
                flash(f"License {license_id} does not exist.", "danger")
                return redirect(url_for("ResourcesView.dashboard"))
            usage = resources.quota_usage(conn, license_id)
            held = conn.execute(
                "SELECT id, resource_type, value, allocated_at FROM resource_pools"
                " WHERE license_id = %s AND status = 'allocated' ORDER BY resource_type, value",
                (license_id,)).fetchall()
            history = resources.allocation_history(conn, license_id=license_id, limit=100)
        return self.render_template("resources/license.html", license=lic, usage=usage, held=held,
                                    history=history, types=list(ResourceType))

    @expose(f"/license/<int(max={MAX_ID}):license_id>/allocate", methods=["POST"])
    @has_access
    def allocate(self, license_id: int) -> ResponseReturnValue:
        """Allocate n free resources of a type; over-quota and empty-pool requests are refused."""
        kind = _parse_type(request.form.get("resource_type"))
        try:
            count = int(request.form.get("count", "1"))
        except ValueError:
            count = 0
        if kind is None or not 1 <= count <= 1000:
            flash("Choose a resource type and a count between 1 and 1000.", "danger")
        else:
            try:
                with service_transaction(self._db()) as (conn, actor):
                    got = resources.allocate(conn, license_id, kind, count, actor=actor)
                flash(f"Allocated {', '.join(a.value for a in got)}.", "success")
            except ResourceError as exc:
                flash(f"Refused ({exc.code}): {exc.message}", "danger")
        return redirect(url_for("ResourcesView.license", license_id=license_id))

    @expose(f"/license/<int(max={MAX_ID}):license_id>/release", methods=["POST"])
    @has_access
    def release(self, license_id: int) -> ResponseReturnValue:
        """Release the selected resources into quarantine."""
        try:
            ids = [int(v) for v in request.form.getlist("resource_id")]
        except ValueError:
            ids = []
        if not all(0 < i <= MAX_ID for i in ids):
            ids = []
        if not ids:
            flash("Select the resources to release.", "danger")
            return redirect(url_for("ResourcesView.license", license_id=license_id))
        settings = heartline_settings()
        try:
            with service_transaction(self._db()) as (conn, actor):
                released = resources.release(conn, license_id, ids, actor=actor, settings=settings)
            flash(f"Released {', '.join(r.value for r in released)} into quarantine for "
                  f"{settings.resource_quarantine_days} days.", "success")
        except ResourceError as exc:
            flash(f"Refused ({exc.code}): {exc.message}", "danger")
        return redirect(url_for("ResourcesView.license", license_id=license_id))


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(ResourcesView, "Pool dashboard", icon="fa-tachometer", category=CATEGORY,
                        category_icon="fa-cubes")
    appbuilder.add_link("Import", href="ResourcesView.import_", icon="fa-upload", category=CATEGORY)
    appbuilder.add_view(ResourcePoolView, "Pool", icon="fa-list", category=CATEGORY)
    appbuilder.add_view(ResourceAllocationView, "Allocation history", icon="fa-history", category=CATEGORY)
