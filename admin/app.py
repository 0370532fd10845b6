"""The admin Flask app: `create_app(settings)` builds it, `main(settings, argv)` serves it with waitress.

Screens come from the modules in VIEW_MODULES; each has `register(appbuilder)`.  A module that does not
exist yet (another engineer's part not landed) is skipped, so the app always starts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import Any

from flask import Flask, g, request
from flask_appbuilder import AppBuilder
from flask_appbuilder.models.sqla.base import SQLA
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from admin import actor, errors, logs, widgets
from admin import config as config_module
from admin.backup_banner import backup_problems
from admin.config import flask_config
from admin.security import headers
from admin.security.manager import HeartlineSecurityManager
from admin.security.proxies import TrustedProxies
from heartline import services
from heartline.sealing import WEBHOOK_SECRET_KEY, sealing_secret
from heartline.settings import Settings

log = logging.getLogger("admin.app")

VIEW_MODULES = [
    "admin.views.dashboard",
    "admin.views.customers",
    "admin.views.license_screens",
    "admin.views.devices",
    "admin.views.sessions",
    "admin.views.heartbeats",
    "admin.views.apikeys",
    "admin.views.audit",
    "admin.views.resources",
    "admin.views.crm",
    "admin.views.entitlements",
    "admin.views.webhooks",
    "admin.views.denials",
]


def create_app(settings: Settings, view_modules: list[str] | None = None, *,
               update_permissions: bool = True, config: dict[str, Any] | None = None,
               require_keys: bool = True) -> Flask:
    """The admin app.

    view_modules: screens to register, VIEW_MODULES by default (tests may register fewer).
    update_permissions: let FAB sync ab_permission_view with the registered screens; off for helpers
    such as `create-admin` that build the app without screens.
    config: Flask settings applied over those from `settings` before the extensions start.
    require_keys: refuse to build without HEARTLINE_ADMIN_SECRET_KEY and HEARTLINE_ADMIN_TOTP_KEYS; off
    only for helpers that neither sign sessions nor touch TOTP secrets (`create-admin`).
    """
    logs.quiet_fab()
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(flask_config(settings))
    app.config["FAB_UPDATE_PERMS"] = update_permissions
    app.config.update(config or {})
    if require_keys:
        config_module.require_keys(app.config)
    # X-Forwarded-For only from HEARTLINE_TRUSTED_PROXIES: the limits key on the client, not on nginx
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]
    CSRFProtect(app)
    db = SQLA(session_options={"expire_on_commit": False})
    db.init_app(app)
    actor.install(db.session)
    with app.app_context():
        appbuilder = AppBuilder(app, db.session, security_manager_class=HeartlineSecurityManager)
        for name in VIEW_MODULES if view_modules is None else view_modules:
            importlib.import_module(name).register(appbuilder)
        appbuilder.post_init()
        widgets.install(app, appbuilder)
    errors.install(app, appbuilder)
    headers.install(app)

    @app.context_processor
    def _backup_banner() -> dict[str, Any]:
        # signed-in pages only: the login page tells a stranger nothing about the backups
        if not current_user.is_authenticated:
            return {}
        return {"backup_problems": backup_problems(db.engine, settings)}

    @app.before_request
    def _bind_actor() -> None:
        # Registered after FAB's own before_request, which puts the user in g.user.  Static files
        # change nothing and need no user lookup.
        if (request.endpoint or "").endswith("static"):
            return
        if current_user.is_authenticated:
            actor.bind_request_user(db.session, g.user.username)

    return app


def main(settings: Settings, argv: list[str]) -> int:
    """Serve the admin with waitress (a production WSGI server, threads, no reloader)."""
    import waitress

    parser = argparse.ArgumentParser(prog="heartline admin")
    parser.add_argument("--host", default=settings.admin_host)
    parser.add_argument("--port", type=int, default=settings.admin_port)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    settings = services.resolve(settings)
    sealing_secret(settings, WEBHOOK_SECRET_KEY)  # stops here, with one line, when unset
    app = create_app(settings)
    logs.quiet_waitress(args.threads)
    log.info("admin.started host=%s port=%s", args.host, args.port)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="heartline-admin")
    return 0
