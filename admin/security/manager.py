"""The admin's security manager: FAB's database login followed by a TOTP step.

A correct password no longer logs the admin in: it parks the user id in the session as "pending" and
sends the browser to /totp/verify (or /totp/enroll when the admin has no second factor yet and
HEARTLINE_ADMIN_2FA_REQUIRED is on).  Only a correct code calls login_user.  FAB's JWT login API would
skip that step, so it is replaced by one that refuses.
"""

from __future__ import annotations

import time
from typing import Any

from flask import after_this_request, current_app, flash, g, redirect, request, session, url_for
from flask_appbuilder import action, expose
from flask_appbuilder.security.api import SecurityApi
from flask_appbuilder.security.decorators import no_cache
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_appbuilder.security.views import AuthDBView, UserDBModelView
from flask_appbuilder.utils.base import get_safe_redirect
from flask_login import login_user
from werkzeug.wrappers import Response

from admin.security.keys import SecretBox
from admin.security.lockout import Lockout, account_key, known_device, remember_device
from admin.security.totp import TotpService
from heartline.settings import Settings

PENDING_KEY = "heartline_2fa_pending"
# A password check is good for this long; after that the admin starts again from the password.
PENDING_TTL_S = 300


def settings() -> Settings:
    return current_app.config["HEARTLINE_SETTINGS"]  # type: ignore[no-any-return]


def totp_service(sm: Any) -> TotpService:
    s = settings()
    box = SecretBox(current_app.config["HEARTLINE_TOTP_KEYS"], legacy_secret_key=current_app.config["SECRET_KEY"])
    return TotpService(sm.session, box, Lockout.of(sm.limiter.limiter, "totp", s.totp_max_failures,
                                                   s.totp_lockout_s))


def account_lockout(sm: Any) -> Lockout:
    """Wrong passwords per account, from browsers that never completed a sign-in of it."""
    s = settings()
    return Lockout.of(sm.limiter.limiter, "password", s.admin_login_account_max_failures,
                      s.admin_login_account_lockout_s)


def client_address() -> str:
    """The client's address (admin/security/proxies.py put it in REMOTE_ADDR)."""
    return request.remote_addr or "unknown"


def start_pending(user_id: int, next_url: str) -> None:
    session.clear()  # nothing from before the password step carries over into the login
    session[PENDING_KEY] = {"uid": user_id, "at": time.time(), "next": next_url}


def pending() -> dict[str, Any] | None:
    state = session.get(PENDING_KEY)
    if not state or time.time() - float(state.get("at", 0)) > PENDING_TTL_S:
        return None
    return dict(state)


def safe_next(url: str | None) -> str:
    """Where to go after the sign-in: `url` when it stays on this site, else the index.  No `next` at all
    is the normal case (FAB's get_safe_redirect would log "Invalid redirect detected" for it)."""
    if not url:
        return str(current_app.appbuilder.get_url_for_index)  # type: ignore[attr-defined]
    return str(get_safe_redirect(url))


def finish_login(user: Any) -> Response:
    state = session.pop(PENDING_KEY, None) or {}
    login_user(user, remember=False)
    username = user.username
    # this browser completed a sign-in: the account's password lock no longer applies to it
    after_this_request(lambda response: remember_device(response, username))
    return redirect(safe_next(state.get("next")))


class HeartlineAuthDBView(AuthDBView):
    """Password first; a second factor follows unless 2FA is optional and the admin has none."""

    @expose("/login/", methods=["GET", "POST"])
    @no_cache
    def login(self) -> Any:
        from flask_appbuilder.security.forms import LoginForm_db

        if g.user is not None and g.user.is_authenticated:
            return redirect(self._get_safe_next_url())
        form = LoginForm_db()
        if form.validate_on_submit():
            next_url = safe_next(request.args.get("next"))
            username = form.username.data or ""
            lockout = None if known_device(username) else account_lockout(self.appbuilder.sm)
            locked_until = lockout.locked_until(account_key(username)) if lockout else None
            if locked_until is not None:
                current_app.logger.warning("admin.login.refused username=%s client=%s reason=account_locked",
                                           username, client_address())
                flash(f"Too many wrong passwords for this account: sign-ins from new browsers are paused "
                      f"until {locked_until:%H:%M:%S} UTC.", "danger")
                return redirect(self.appbuilder.get_url_for_login_with(next_url))
            user = self.appbuilder.sm.auth_user_db(username, form.password.data)
            if not user:
                if lockout is not None and lockout.fail(account_key(username)) is not None:
                    current_app.logger.warning("admin.login.account_locked username=%s client=%s",
                                               username, client_address())
                current_app.logger.info("admin.login.refused username=%s client=%s reason=password",
                                        username, client_address())
                flash(str(self.invalid_login_message), "warning")
                return redirect(self.appbuilder.get_url_for_login_with(next_url))
            enrolled = totp_service(self.appbuilder.sm).is_enrolled(user.id)
            self.appbuilder.sm.session.commit()
            if not enrolled and not settings().admin_2fa_required:
                login_user(user, remember=False)
                return redirect(next_url)
            start_pending(user.id, next_url)
            return redirect(url_for("TotpView.verify" if enrolled else "TotpView.enroll"))
        return self.render_template(self.login_template, title=self.title, form=form,
                                    appbuilder=self.appbuilder)


class PasswordOnlyApiRefused(SecurityApi):
    """FAB's JWT login would bypass the second factor: the admin has no API login."""

    @expose("/login", methods=["POST"])
    def login(self) -> Response:
        return self.response(403, message="API login is disabled: admins sign in with password and TOTP")

    @expose("/refresh", methods=["POST"])
    def refresh(self) -> Response:
        return self.response(403, message="API login is disabled")


class HeartlineUserDBModelView(UserDBModelView):
    """FAB's user list, plus resetting an admin's second factor (a lost phone without recovery codes)."""

    @action("reset_2fa", "Reset two-factor login", "Reset the two-factor login of the selected admins? "
            "They set it up again at their next sign-in.", "fa-refresh")
    def reset_2fa(self, items: Any) -> Response:
        from admin.security.views import audit_event

        service = totp_service(self.appbuilder.sm)
        for user in items if isinstance(items, list) else [items]:
            service.reset(user.id)
            audit_event(user, "totp.reset", by=g.user.username)
            current_app.logger.info("admin.totp.reset username=%s by=%s", user.username, g.user.username)
            flash(f"Two-factor login of {user.username} reset; they enrol again at their next sign-in.",
                  "success")
        self.appbuilder.sm.session.commit()
        return redirect(self.get_redirect())


class HeartlineSecurityManager(SecurityManager):
    authdbview = HeartlineAuthDBView
    userdbmodelview = HeartlineUserDBModelView
    security_api = PasswordOnlyApiRefused

    def register_views(self) -> None:
        from admin.security.views import TotpView

        super().register_views()
        self.appbuilder.add_view_no_menu(TotpView())
        self.appbuilder.add_link("Recovery codes", href="/totp/recovery-codes", icon="fa-life-ring",
                                 category="Security")
