"""Webhook endpoints, messages, deliveries and attempts (sql/0006_webhooks.sql)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin.models.base import Base
from admin.models.core import NOW, TZ


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    secret_encrypted: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[dt.datetime | None] = mapped_column(TZ)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    def state(self) -> str:
        """Enabled, failing since when, or disabled and why: what the endpoint list shows."""
        if not self.enabled:
            return f"disabled: {self.disabled_reason or ''}".strip()
        if self.failing_since is not None:
            return f"failing since {self.failing_since:%Y-%m-%d %H:%M} UTC"
        return "enabled"

    def __repr__(self) -> str:
        return self.url


class WebhookMessage(Base):
    __tablename__ = "webhook_messages"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    def __repr__(self) -> str:
        return self.id


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[str] = mapped_column(Text, ForeignKey("webhook_messages.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    manual_resend: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    message: Mapped[WebhookMessage] = relationship()
    endpoint: Mapped[WebhookEndpoint] = relationship()

    @property
    def event_type(self) -> str:
        return self.message.event_type

    @property
    def payload(self) -> str:
        return self.message.payload

    def __repr__(self) -> str:
        return f"{self.message_id} → {self.endpoint_id}"


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    manual: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    delivery: Mapped[WebhookDelivery] = relationship()
