"""Customers, licenses, devices, sessions, heartbeats, API keys, audit log and 2FA state (sql/0001–0005).

Column types and nullability follow the migrations; tests/admin/test_models.py checks that they match.
Server-side defaults and triggers (updated_at, version, audit rows) stay in PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import TIMESTAMP

from admin.models.base import Base

TZ: TIMESTAMP = TIMESTAMP(timezone=True)
NOW: TextClause = text("now()")


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    company: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    # "all": the ORM leaves licenses alone on delete; the database's RESTRICT refuses it (a readable error)
    licenses: Mapped[list[License]] = relationship(back_populates="customer", passive_deletes="all")

    def __repr__(self) -> str:
        return self.name if not self.company else f"{self.name} ({self.company})"


class License(Base):
    __tablename__ = "licenses"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id"))
    license_key: Mapped[str] = mapped_column(Text, unique=True)
    product: Mapped[str] = mapped_column(Text, server_default=text("'default'"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    valid_from: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    valid_until: Mapped[dt.datetime | None] = mapped_column(TZ)
    device_limit: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    concurrent_sessions_limit: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    heartbeat_interval_s: Mapped[int | None] = mapped_column(Integer)
    heartbeat_timeout_s: Mapped[int | None] = mapped_column(Integer)
    quota_domains: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    quota_ipv4: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    quota_phones: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    notes: Mapped[str | None] = mapped_column(Text)
    device_change_limit: Mapped[int | None] = mapped_column(Integer)
    device_changes_reset_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    offline_grace_s: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_borrow_s: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    resume_grace_s: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    customer: Mapped[Customer] = relationship(back_populates="licenses")
    devices: Mapped[list[DeviceRegistration]] = relationship(back_populates="license",
                                                             passive_deletes=True)
    # its own entitlements (admin/models/entitlements.py); the product's defaults come on top
    entitlements: Mapped[list[Entitlement]] = relationship(secondary="license_entitlements",
                                                           order_by="Entitlement.code")

    def device_changes(self) -> str:
        """Device changes counted now (last 30 days, since the last reset) against the limit."""
        session = object_session(self)
        count = session.execute(text(
            "SELECT count(*) FROM device_changes WHERE license_id = :id AND replaced_at > "
            "greatest(now() - interval '30 days', coalesce(CAST(:reset AS timestamptz), '-infinity'))"),
            {"id": self.id, "reset": self.device_changes_reset_at}).scalar_one() if session else 0
        return f"{count} of {self.device_change_limit}" if self.device_change_limit is not None \
            else f"{count} (no limit)"

    def __repr__(self) -> str:
        return self.license_key


class DeviceRegistration(Base):
    __tablename__ = "device_registrations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    license_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"))
    hardware_fingerprint: Mapped[str] = mapped_column(Text)
    device_name: Mapped[str | None] = mapped_column(Text)
    device_type: Mapped[str | None] = mapped_column(Text)
    first_activated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    deactivated_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    deactivation_reason: Mapped[str | None] = mapped_column(Text)

    license: Mapped[License] = relationship(back_populates="devices")

    def __repr__(self) -> str:
        return self.device_name or self.hardware_fingerprint


class LicenseSession(Base):
    """Mirror of a live session, written by the worker; read-only here."""

    __tablename__ = "license_sessions"

    session_token: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    license_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"))
    device_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("device_registrations.id", ondelete="SET NULL"))
    hardware_fingerprint: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(TZ)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    heartbeat_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    client_version: Mapped[str | None] = mapped_column(Text)
    client_ip: Mapped[str | None] = mapped_column(INET)

    license: Mapped[License] = relationship()
    device: Mapped[DeviceRegistration | None] = relationship()


class SessionBorrow(Base):
    """A borrowed seat (sql/0010): held until `until` unless returned or revoked."""

    __tablename__ = "session_borrows"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    license_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"))
    session_token: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    hardware_fingerprint: Mapped[str] = mapped_column(Text)
    borrowed_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    until: Mapped[dt.datetime] = mapped_column(TZ)
    returned_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    revoked_by: Mapped[str | None] = mapped_column(Text)

    license: Mapped[License] = relationship()

    @property
    def state(self) -> str:
        """open, returned, revoked or expired."""
        if self.returned_at is not None:
            return "returned"
        if self.revoked_at is not None:
            return "revoked"
        return "open" if self.until > dt.datetime.now(dt.UTC) else "expired"


class SessionHistory(Base):
    __tablename__ = "session_history"

    session_token: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    license_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"))
    device_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("device_registrations.id", ondelete="SET NULL"))
    hardware_fingerprint: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(TZ)
    ended_at: Mapped[dt.datetime] = mapped_column(TZ)
    end_reason: Mapped[str] = mapped_column(Text)
    heartbeat_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    client_version: Mapped[str | None] = mapped_column(Text)
    client_ip: Mapped[str | None] = mapped_column(INET)
    lapses: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    license: Mapped[License] = relationship()
    device: Mapped[DeviceRegistration | None] = relationship()


class LicenseHeartbeat(Base):
    """One accepted heartbeat (partitioned by month); read with keyset pagination only."""

    __tablename__ = "license_heartbeats"

    received_at: Mapped[dt.datetime] = mapped_column(TZ, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    license_id: Mapped[int] = mapped_column(BigInteger)
    session_token: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    device_id: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    display_prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    created_by: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(TZ)

    def __repr__(self) -> str:
        return f"{self.name} ({self.display_prefix})"


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    actor: Mapped[str] = mapped_column(Text)
    table_name: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)
    row_id: Mapped[str | None] = mapped_column(Text)
    old_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    new_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(column, old, new) for every column the change touched; all columns for inserts and deletes."""
        old, new = self.old_values or {}, self.new_values or {}
        return [(col, old.get(col), new.get(col)) for col in sorted(old.keys() | new.keys())
                if self.operation != "UPDATE" or old.get(col) != new.get(col)]


class AdminTotp(Base):
    """TOTP state of one admin (user_id = ab_user.id); the secret is stored encrypted."""

    __tablename__ = "admin_totp"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    last_used_step: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    locked_until: Mapped[dt.datetime | None] = mapped_column(TZ)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)


class AdminRecoveryCode(Base):
    __tablename__ = "admin_recovery_codes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    code_hash: Mapped[str] = mapped_column(Text)
    used_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)


# Entitlements refer to licenses and licenses to entitlements: their module is loaded with this one.
from admin.models.entitlements import Entitlement
