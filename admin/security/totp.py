"""TOTP two-factor authentication (RFC 6238: 30 s step, ±1 step window) with replay protection,
lockout after repeated failures and single-use recovery codes.

State lives in admin_totp / admin_recovery_codes (sql/0005).  The secret is encrypted with a key derived
from the admin's secret key; recovery codes are stored as salted PBKDF2 hashes.  A code is accepted only
for a time step later than the last accepted one, and that step is claimed with a conditional UPDATE, so
two requests racing with the same code cannot both pass.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hmac
import io
import secrets
import time
from dataclasses import dataclass

import pyotp
import qrcode
import qrcode.image.svg
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from admin.models.core import AdminRecoveryCode, AdminTotp

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

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


class SecretBox:
    """Encrypts TOTP secrets at rest with a Fernet key derived (HKDF) from the admin's secret key."""

    def __init__(self, secret_key: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"heartline-admin-totp-secret").derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ValueError("the TOTP secret cannot be decrypted: was HEARTLINE_ADMIN_SECRET_KEY changed?") \
                from None


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


class TotpService:
    """TOTP state of admins, on the admin's SQLAlchemy session; callers commit."""

    def __init__(self, session: Session, box: SecretBox, *, max_failures: int, lockout_s: int) -> None:
        self.session = session
        self.box = box
        self.max_failures = max_failures
        self.lockout_s = lockout_s

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
        return self.box.open(row.secret_encrypted)

    def confirm_enrolment(self, user_id: int, code: str, now: float | None = None) -> tuple[Check, list[str]]:
        """Confirm the pending secret with a first code; on success return the new recovery codes."""
        row = self.state(user_id)
        if row is None or not row.secret_encrypted or row.confirmed_at is not None:
            return Check(Verdict.NOT_ENROLLED), []
        check = self._check_code(row, code, now)
        if not check.ok:
            return check, []
        self.session.execute(update(AdminTotp).where(AdminTotp.user_id == user_id)
                             .values(confirmed_at=text("now()")))
        return check, self.new_recovery_codes(user_id)

    def verify(self, user_id: int, code: str, now: float | None = None) -> Check:
        row = self.state(user_id)
        if row is None or row.confirmed_at is None or not row.secret_encrypted:
            return Check(Verdict.NOT_ENROLLED)
        return self._check_code(row, code, now)

    def use_recovery_code(self, user_id: int, code: str) -> Check:
        row = self.state(user_id)
        if row is None or row.confirmed_at is None:
            return Check(Verdict.NOT_ENROLLED)
        if self._locked(row):
            return Check(Verdict.LOCKED, row.locked_until)
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
                    self._reset_failures(user_id)
                    return Check(Verdict.ACCEPTED)
                break
        return self._fail(row, Verdict.WRONG)

    def remaining_recovery_codes(self, user_id: int) -> int:
        return len(self.session.scalars(
            select(AdminRecoveryCode.id).where(AdminRecoveryCode.user_id == user_id,
                                               AdminRecoveryCode.used_at.is_(None))).all())

    def new_recovery_codes(self, user_id: int) -> list[str]:
        """Replace the admin's recovery codes with ten new ones; returned in clear once, stored hashed."""
        self.session.execute(AdminRecoveryCode.__table__.delete()
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
        self.session.execute(AdminTotp.__table__.delete().where(AdminTotp.user_id == user_id))
        self.session.execute(AdminRecoveryCode.__table__.delete()
                             .where(AdminRecoveryCode.user_id == user_id))

    def _check_code(self, row: AdminTotp, code: str, now: float | None) -> Check:
        if self._locked(row):
            return Check(Verdict.LOCKED, row.locked_until)
        assert row.secret_encrypted
        step = matching_step(self.box.open(row.secret_encrypted), code, now)
        if step is None:
            return self._fail(row, Verdict.WRONG)
        claimed = self.session.execute(
            update(AdminTotp)
            .where(AdminTotp.user_id == row.user_id, AdminTotp.last_used_step < step)
            .values(last_used_step=step, failed_attempts=0, locked_until=None, updated_at=text("now()")))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return self._fail(row, Verdict.REPLAYED)
        return Check(Verdict.ACCEPTED)

    def _locked(self, row: AdminTotp) -> bool:
        return row.locked_until is not None and row.locked_until > self._db_now()

    def _fail(self, row: AdminTotp, verdict: Verdict) -> Check:
        """Count a failure; the max_failures-th locks the admin out for lockout_s seconds."""
        result = self.session.execute(
            text("UPDATE admin_totp SET failed_attempts = failed_attempts + 1, updated_at = now(), "
                 "locked_until = CASE WHEN failed_attempts + 1 >= :max "
                 "THEN now() + make_interval(secs => :s) ELSE locked_until END "
                 "WHERE user_id = :u RETURNING failed_attempts, locked_until"),
            {"max": self.max_failures, "s": self.lockout_s, "u": row.user_id}).one()
        if result.locked_until is not None and result.failed_attempts >= self.max_failures:
            # the counter starts again once the lockout is over
            self.session.execute(text("UPDATE admin_totp SET failed_attempts = 0 WHERE user_id = :u"),
                                 {"u": row.user_id})
            return Check(Verdict.LOCKED, result.locked_until)
        return Check(verdict)

    def _reset_failures(self, user_id: int) -> None:
        self.session.execute(update(AdminTotp).where(AdminTotp.user_id == user_id)
                             .values(failed_attempts=0, locked_until=None, updated_at=text("now()")))

    def _db_now(self) -> dt.datetime:
        return self.session.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def normalize_recovery_code(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "")
