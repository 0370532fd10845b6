"""What the admin answers instead of a 500.

- Flask-AppBuilder's action and download routes: an unknown action name, rows that do not exist, or any
  download (no screen here stores files) answer 404 — before the view runs, so also to anonymous users.
- NUL bytes in query parameters or form fields answer 400 (PostgreSQL cannot store them); an id beyond
  64 bits in a path answers 404; any other value PostgreSQL refuses as data (DataError) answers 400.
- PostgreSQL unreachable: a plain 503 page with Retry-After, rendered without the database (FAB's own
  templates read the menu's permissions from it).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, abort, request
from flask_appbuilder import AppBuilder
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from werkzeug.wrappers import Response

log = logging.getLogger("admin.errors")

MAX_ID = 2**63 - 1
RETRY_AFTER_S = 5

UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Heartline Admin: database unavailable</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>The database is unavailable</h1>
<p>The admin cannot reach PostgreSQL right now, so it cannot sign you in or show any screen.
Nothing was changed. Try again in a few seconds; if this persists, check the database server.</p>
</body></html>
"""


def _has_nul(values: Any) -> bool:
    return any("\x00" in key or any("\x00" in v for v in values.getlist(key)) for key in values)


def _too_large_id(value: Any) -> bool:
    text = str(value)
    return text.lstrip("-").isdigit() and abs(int(text)) > MAX_ID


def install(app: Flask, appbuilder: AppBuilder) -> None:
    """Register the guard and the handlers on `app` (after every view is registered)."""
    views = {view.endpoint: view for view in appbuilder.baseviews}

    @app.before_request
    def _refuse_what_would_fail() -> None:
        if _has_nul(request.args) or "\x00" in request.path:
            abort(400, "NUL bytes are not allowed")
        if request.method == "POST" and request.mimetype in ("application/x-www-form-urlencoded",
                                                             "multipart/form-data") and _has_nul(request.form):
            abort(400, "NUL bytes are not allowed")
        if any(_too_large_id(v) for v in (request.view_args or {}).values()):
            abort(404)
        endpoint = request.endpoint or ""
        view_name, _, method = endpoint.rpartition(".")
        view = views.get(view_name)
        if view is None:
            return
        if method == "download":
            abort(404)
        if method in ("action", "action_post"):
            name = (request.view_args or {}).get("name") if method == "action" else request.form.get("action")
            if name not in getattr(view, "actions", {}):
                abort(404)
            pks = [(request.view_args or {}).get("pk")] if method == "action" else request.form.getlist("rowid")
            if not pks or any(_too_large_id(pk) for pk in pks):
                abort(404)
            if any(view.datamodel.get(view._deserialize_pk_if_composite(pk)) is None for pk in pks):
                abort(404)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unavailable(exc: DBAPIError) -> Response:
        appbuilder.session.remove()
        log.warning("admin.database.unavailable path=%s error=%s", request.path,
                    str(exc.orig or exc).splitlines()[0])
        return Response(UNAVAILABLE_PAGE, status=503, mimetype="text/html",
                        headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"})

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError) -> Response:
        appbuilder.session.remove()
        log.info("admin.request.bad_value path=%s error=%s", request.path, str(exc.orig or exc).splitlines()[0])
        return Response("The request carries a value the database cannot take (e.g. a number out of "
                        "range).\n", status=400, mimetype="text/plain")
