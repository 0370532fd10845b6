"""The events Heartline sends, and the message body every one of them has.

The body follows the Standard Webhooks payload shape `{"type", "timestamp", "data"}`; it is built once,
stored, and the same bytes are signed again at every attempt.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import msgspec


class EventType(StrEnum):
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    SESSION_REFUSED = "session.refused"
    DEVICE_ACTIVATED = "device.activated"
    DEVICE_DEACTIVATED = "device.deactivated"
    LICENSE_CREATED = "license.created"
    LICENSE_UPDATED = "license.updated"
    LICENSE_SUSPENDED = "license.suspended"
    LICENSE_REVOKED = "license.revoked"
    LICENSE_EXPIRED = "license.expired"
    RESOURCE_ALLOCATED = "resource.allocated"
    RESOURCE_RELEASED = "resource.released"
    BACKUP_FAILED = "backup.failed"


# Columns of a changed row that an event's `data` carries (the outbox holds the whole row).
ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "device": ("id", "license_id", "hardware_fingerprint", "device_name", "device_type", "is_active",
               "first_activated_at", "deactivated_at", "deactivation_reason"),
    "license": ("id", "customer_id", "license_key", "product", "status", "valid_from", "valid_until",
                "device_limit", "concurrent_sessions_limit", "heartbeat_interval_s", "heartbeat_timeout_s"),
    "resource": ("id", "resource_type", "value", "status", "license_id", "allocated_at"),
}


class WebhookMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message: `id` is the webhook-id header, `payload` the exact JSON body."""

    id: str
    event_type: EventType
    payload: bytes


class _Body(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    timestamp: str
    data: dict[str, Any]


_encoder = msgspec.json.Encoder()


def iso(at: dt.datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as Standard Webhooks' examples write timestamps."""
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_ms(ms: int) -> str:
    return iso(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


def message(message_id: str, event_type: EventType, data: dict[str, Any], at: dt.datetime) -> WebhookMessage:
    """A message whose id is derived from its source (so a replayed source maps onto the same id)."""
    body = _encoder.encode(_Body(type=str(event_type), timestamp=iso(at), data=data))
    return WebhookMessage(id=message_id, event_type=event_type, payload=body)


def row_data(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a changed row (outbox `data`) that the event of `kind` ('device', ...) carries."""
    return {name: row.get(name) for name in ROW_FIELDS[kind]}
