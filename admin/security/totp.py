"""TOTP two-factor authentication (RFC 6238: 30 s step, ±1 step window) with replay protection,
lockout after repeated failures (per admin and client address) and single-use recovery codes.

State lives in admin_totp / admin_recovery_codes (sql/0005).  The secret is encrypted with the keys of
HEARTLINE_ADMIN_TOTP_KEYS (admin/security/keys.py), not the Flask secret key; recovery codes are stored as salted PBKDF2 hashes.  A code is accepted only
for a time step later than the last accepted one, and that step is claimed with a conditional UPDATE, so
two requests racing with the same code cannot both pass.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import io
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import pyotp
import qrcode
import qrcode.image.svg
from sqlalchemy import Table, select, text, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from admin.models.core import AdminRecoveryCode, AdminTotp
from admin.security.keys import SecretBox
from admin.security.lockout import Lockout

STEP_S = 30
WINDOW = 1  # steps accepted either side of now: tolerates 30 s of clock drift
ISSUER = "Heartline"
RECOVERY_CODE_COUNT = 10
RECOVERY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
# Recovery codes carry 50 bits; PBKDF2 makes a stolen table costly to search without making the ten
# checks of one login slow.
RECOVERY_HASH_METHOD = "pbkdf2:sha256:60000"


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    WRONG = "wrong"
    REPLAYED = "replayed"
    LOCKED = "locked"
    NOT_ENROLLED = "not_enrolled"


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    locked_until: dt.datetime | None = None
    # on acceptance: wrong codes entered for this account since its last sign-in (from any address)
    earlier_failures: int = 0
    # on a refusal: this very failure locked the client out
    just_locked: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_S)


def code_for(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, interval=STEP_S).at(step * STEP_S)


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step within the window whose code equals `code` (constant-time compare), else None."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    step = current_step(now)
    found = None
    for candidate in range(step - WINDOW, step + WINDOW + 1):
        if hmac.compare_digest(code_for(secret, candidate), code):
            found = candidate
    return found


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(name=username, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The otpauth URI as an inline SVG QR code, drawn locally (no external service, no Pillow)."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    buffer = io.BytesIO()
    image.save(buffer)
    svg = buffer.getvalue().decode()
    return svg[svg.index("<svg"):]  # drop the XML declaration: the SVG is embedded in HTML


def _table(model: type[Any]) -> Table:
    """The model's table: declarative types __table__ as any FromClause, these models map one Table."""
    return cast(Table, model.__table__)


class TotpService:
    """TOTP state of admins, on the admin's SQLAlchemy session; callers commit.

    lockout: wrong codes per (admin, client address); the max_failures-th locks that client out of that
    admin's second factor for the lockout window, other addresses are not affected. A valid recovery code
    is accepted even from a locked-out client (50 bits: not guessable at any rate the limits allow).
    admin_totp.failed_attempts counts wrong codes since the last sign-in, from anywhere, so the admin can be
    told at the next sign-in.
    """

    def __init__(self, session: Session, box: SecretBox, lockout: Lockout) -> None:
        self.session = session
        self.box = box
        self.lockout = lockout

    def state(self, user_id: int) -> AdminTotp | None:
        return self.session.get(AdminTotp, user_id, populate_existing=True)

    def is_enrolled(self, user_id: int) -> bool:
        row = self.state(user_id)
        return row is not None and row.confirmed_at is not None

    def begin_enrolment(self, user_id: int) -> str:
        """A new secret for the admin, stored unconfirmed; the enrolment page shows it."""
        secret = pyotp.random_base32()
        row = self.state(user_id)
        if row is None:
            row = AdminTotp(user_id=user_id, last_used_step=0, failed_attempts=0)
            self.session.add(row)
        elif row.confirmed_at is not None:
            raise ValueError("already enrolled; reset two-factor first")
        row.secret_encrypted = self.box.seal(secret)
        self.session.flush()
        return secret

    def pending_secret(self, user_id: int) -> str | None:
        row = self.state(user_id)
        if row is None or row.confirmed_at is not None or not row.secret_encrypted:
            return None
        return self._secret(row)

    def confirm_enrolment(self, user_id: int, code: str, client: str,
                          now: float | None = None) -> tuple[Check, list[str]]:
        """Confirm the pending secret with a first code; on success return the new recovery codes."""
        row = self.state(user_id)
        if row is None or not row.secret_encrypted or row.confirmed_at is not None:
            return Check(Verdict.NOT_ENROLLED), []
        check = self._check_code(row, code, client, now)
        if not check.ok:
            return check, []
        self.session.execute(update(AdminTotp).where(AdminTotp.user_id == user_id)
                             .values(confirmed_at=text("now()")))
        return check, self.new_recovery_codes(user_id)

    def verify(self, user_id: int, code: str, client: str, now: float | None = None) -> Check:
        """A TOTP code of `user_id`, entered from the address `client`."""
        row = self.state(user_id)
        if row is None or row.confirmed_at is None or not row.secret_encrypted:
            return Check(Verdict.NOT_ENROLLED)
        return self._check_code(row, code, client, now)

    def use_recovery_code(self, user_id: int, code: str, client: str) -> Check:
        """A recovery code; a valid one is accepted even while `client` is locked out (and unlocks it)."""
        row = self.state(user_id)
        if row is None or row.confirmed_at is None:
            return Check(Verdict.NOT_ENROLLED)
        normalized = normalize_recovery_code(code)
        unused = self.session.scalars(
            select(AdminRecoveryCode).where(AdminRecoveryCode.user_id == user_id,
                                            AdminRecoveryCode.used_at.is_(None))).all()
        for candidate in unused:
            if check_password_hash(candidate.code_hash, normalized):
                # Conditional: a code used by a concurrent request in the meantime is not used twice.
                claimed = self.session.execute(
                    update(AdminRecoveryCode)
                    .where(AdminRecoveryCode.id == candidate.id, AdminRecoveryCode.used_at.is_(None))
                    .values(used_at=text("now()")))
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    return self._accepted(row, client)
                break
        return self._fail(row, client, Verdict.WRONG)

    def remaining_recovery_codes(self, user_id: int) -> int:
        return len(self.session.scalars(
            select(AdminRecoveryCode.id).where(AdminRecoveryCode.user_id == user_id,
                                               AdminRecoveryCode.used_at.is_(None))).all())

    def new_recovery_codes(self, user_id: int) -> list[str]:
        """Replace the admin's recovery codes with ten new ones; returned in clear once, stored hashed."""
        self.session.execute(_table(AdminRecoveryCode).delete()
                             .where(AdminRecoveryCode.user_id == user_id))
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        for code in codes:
            self.session.add(AdminRecoveryCode(
                user_id=user_id,
                code_hash=generate_password_hash(normalize_recovery_code(code), method=RECOVERY_HASH_METHOD)))
        self.session.flush()
        return codes

    def reset(self, user_id: int) -> None:
        """Forget the admin's second factor: the next login enrols anew."""
        self.session.execute(_table(AdminTotp).delete().where(AdminTotp.user_id == user_id))
        self.session.execute(_table(AdminRecoveryCode).delete()
                             .where(AdminRecoveryCode.user_id == user_id))

    def _check_code(self, row: AdminTotp, code: str, client: str, now: float | None) -> Check:
        locked_until = self.lockout.locked_until(str(row.user_id), client)
        if locked_until is not None:
            return Check(Verdict.LOCKED, locked_until)
        step = matching_step(self._secret(row), code, now)
        if step is None:
            return self._fail(row, client, Verdict.WRONG)
        claimed = self.session.execute(
            update(AdminTotp)
            .where(AdminTotp.user_id == row.user_id, AdminTotp.last_used_step < step)
            .values(last_used_step=step, updated_at=text("now()")))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return self._fail(row, client, Verdict.REPLAYED)
        return self._accepted(row, client)

    def _accepted(self, row: AdminTotp, client: str) -> Check:
        """Clear this client's failures; report and reset the account's failures since the last sign-in."""
        self.lockout.clear(str(row.user_id), client)
        earlier = self.session.execute(
            text("WITH old AS (SELECT failed_attempts FROM admin_totp WHERE user_id = :u FOR UPDATE) "
                 "UPDATE admin_totp t SET failed_attempts = 0, locked_until = NULL, updated_at = now() "
                 "FROM old WHERE t.user_id = :u RETURNING old.failed_attempts"),
            {"u": row.user_id}).scalar_one()
        return Check(Verdict.ACCEPTED, earlier_failures=int(earlier or 0))

    def _secret(self, row: AdminTotp) -> str:
        """The row's secret in clear; one sealed with an older key is sealed again with the current one."""
        assert row.secret_encrypted
        secret = self.box.open(row.secret_encrypted)
        if not self.box.is_current(row.secret_encrypted):
            self.session.execute(update(AdminTotp).where(AdminTotp.user_id == row.user_id)
                                 .values(secret_encrypted=self.box.seal(secret)))
        return secret

    def _fail(self, row: AdminTotp, client: str, verdict: Verdict) -> Check:
        """Count a failure for the account (to tell its admin) and for this client (to lock it out)."""
        self.session.execute(text("UPDATE admin_totp SET failed_attempts = failed_attempts + 1, "
                                  "updated_at = now() WHERE user_id = :u"), {"u": row.user_id})
        locked_until = self.lockout.fail(str(row.user_id), client)
        if locked_until is not None:
            return Check(Verdict.LOCKED, locked_until, just_locked=True)
        return Check(verdict)


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def normalize_recovery_code(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "")
