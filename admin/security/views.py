"""The TOTP pages: verify a code (or a recovery code) after the password, enrol at first login, and
replace one's recovery codes."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, g, redirect, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access, no_cache
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from admin import actor
from admin.audit import record_event
from admin.security.manager import client_address, finish_login, pending, totp_service
from admin.security.totp import Check, Verdict, provisioning_uri, qr_svg

PERM_TOTP = "TwoFactor"

MESSAGES = {
    Verdict.WRONG: "That code is not valid. Check the time on your device and try again.",
    Verdict.REPLAYED: "That code was already used. Wait for the next code.",
    Verdict.NOT_ENROLLED: "Two-factor authentication is not set up for this account.",
}


class CodeForm(FlaskForm):
    code = StringField("Code", validators=[DataRequired(), Length(min=6, max=16)],
                       render_kw={"autocomplete": "one-time-code", "autofocus": True})


def refusal(check: Check) -> str:
    if check.verdict is Verdict.LOCKED:
        until = f" until {check.locked_until:%H:%M:%S} UTC" if check.locked_until else ""
        return (f"Too many failed attempts: two-factor login from this address is locked{until}. "
                "A recovery code still signs you in.")
    return MESSAGES[check.verdict]


AUDIT_OPERATIONS = {"totp.enrolled": "INSERT", "totp.recovery_codes": "UPDATE", "totp.reset": "DELETE",
                    "totp.locked": "UPDATE"}


def audit_event(user: Any, event: str, by: str | None = None, details: dict[str, Any] | None = None) -> None:
    """2FA tables carry secrets and are not audited by the trigger; this row records the event alone.

    user: the admin whose second factor changed; by: the acting admin's user name (default: user);
    details: more values for the row (e.g. the client address of a lockout).
    """
    record_event(current_app.appbuilder.session, table="admin_totp",  # type: ignore[attr-defined]
                 operation=AUDIT_OPERATIONS[event], row_id=str(user.id), event=event,
                 by=by or user.username, username=user.username, **(details or {}))


class TotpView(BaseView):
    route_base = "/totp"
    default_view = "verify"
    class_permission_name = PERM_TOTP

    def _pending_user(self) -> Any | None:
        state = pending()
        if state is None:
            return None
        user = self.appbuilder.sm.get_user_by_id(int(state["uid"]))
        if user is None or not user.is_active:
            return None
        g.heartline_actor = actor.actor_for(user.username)
        return user

    @expose("/verify", methods=["GET", "POST"])
    @no_cache
    def verify(self) -> Any:
        """Second step of the login: a TOTP code, or one of the recovery codes."""
        user = self._pending_user()
        if user is None:
            flash("Please sign in again.", "warning")
            return redirect(self.appbuilder.get_url_for_login)
        service = totp_service(self.appbuilder.sm)
        if not service.is_enrolled(user.id):
            return redirect(url_for("TotpView.enroll"))
        form = CodeForm()
        if form.validate_on_submit():
            code = form.code.data or ""
            digits = code.strip().replace(" ", "")
            is_totp = digits.isdigit() and len(digits) == 6  # recovery codes are 10 characters
            client = client_address()
            check = (service.verify(user.id, digits, client) if is_totp
                     else service.use_recovery_code(user.id, code, client))
            if check.just_locked:
                audit_event(user, "totp.locked", details={"client": client,
                                                          "until": f"{check.locked_until:%Y-%m-%d %H:%M:%S}"})
            self.appbuilder.sm.session.commit()
            if check.ok:
                current_app.logger.info("admin.login.accepted username=%s client=%s factor=%s", user.username,
                                        client, "totp" if is_totp else "recovery_code")
                if not is_totp:
                    left = service.remaining_recovery_codes(user.id)
                    flash(f"Recovery code used; {left} left. Replace them under Security → Recovery codes.",
                          "warning")
                if check.earlier_failures:
                    flash(f"{check.earlier_failures} wrong two-factor code(s) were entered for your account "
                          "since your last sign-in (see the audit log). If that was not you, someone knows "
                          "your password: change it.", "danger")
                return finish_login(user)
            level = current_app.logger.warning if check.just_locked else current_app.logger.info
            level("admin.login.refused username=%s client=%s reason=%s", user.username, client, check.verdict)
            flash(refusal(check), "danger")
        return self.render_template("totp/verify.html", form=form, username=user.username)

    @expose("/enroll", methods=["GET", "POST"])
    @no_cache
    def enroll(self) -> Any:
        """First login: show a new secret as QR code and text, confirm it with a first code."""
        user = self._pending_user()
        if user is None:
            flash("Please sign in again.", "warning")
            return redirect(self.appbuilder.get_url_for_login)
        service = totp_service(self.appbuilder.sm)
        if service.is_enrolled(user.id):
            return redirect(url_for("TotpView.verify"))
        form = CodeForm()
        secret = service.pending_secret(user.id)
        if form.validate_on_submit() and secret:
            check, codes = service.confirm_enrolment(user.id, form.code.data or "", client_address())
            if check.ok:
                audit_event(user, "totp.enrolled")
            self.appbuilder.sm.session.commit()
            if check.ok:
                current_app.logger.info("admin.totp.enrolled username=%s", user.username)
                response = finish_login(user)
                return self.render_template("totp/recovery_codes.html", codes=codes,
                                            next_url=response.location)
            flash(refusal(check), "danger")
        if secret is None:
            secret = service.begin_enrolment(user.id)
            self.appbuilder.sm.session.commit()
        uri = provisioning_uri(secret, user.username)
        return self.render_template("totp/enroll.html", form=form, secret=secret, qr=qr_svg(uri),
                                    uri=uri, username=user.username)

    @expose("/recovery-codes", methods=["GET", "POST"])
    @has_access
    @no_cache
    def recovery_codes(self) -> Any:
        """Replace the signed-in admin's recovery codes (the old ones stop working)."""
        service = totp_service(self.appbuilder.sm)
        form = FlaskForm()
        if form.validate_on_submit():
            if not service.is_enrolled(g.user.id):
                flash(MESSAGES[Verdict.NOT_ENROLLED], "warning")
                return redirect(self.appbuilder.get_url_for_index)
            codes = service.new_recovery_codes(g.user.id)
            audit_event(g.user, "totp.recovery_codes")
            self.appbuilder.sm.session.commit()
            return self.render_template("totp/recovery_codes.html", codes=codes,
                                        next_url=self.appbuilder.get_url_for_index)
        return self.render_template("totp/recovery_form.html", form=form,
                                    left=service.remaining_recovery_codes(g.user.id))


