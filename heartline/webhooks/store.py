"""The webhook tables as the worker uses them: queue messages for the endpoints that want them, take
changes out of the outbox, claim due deliveries, record attempts, disable endpoints failing for too long.

At least once: a delivery is claimed by moving its due time a lease ahead (committed before sending),
and is settled only after the attempt; a worker that dies in between leaves it to be sent again when the
lease runs out, under the same webhook-id.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from heartline.db import Conn
from heartline.webhooks.catalogue import WebhookMessage
from heartline.webhooks.secrets import SecretBox, new_secret

# Endpoints that want an event type: enabled, with no filter or the type in it.
_WANTS = "e.enabled AND (cardinality(e.event_types) = 0 OR {type} = ANY (e.event_types))"

# Messages nobody subscribes to are not stored; a message seen again (same id) adds nothing.
ENQUEUE = f"""
WITH m AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS m(id, event_type, payload)
), kept AS (
    INSERT INTO webhook_messages (id, event_type, payload)
    SELECT m.id, m.event_type, m.payload FROM m
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE {_WANTS.format(type="m.event_type")})
    ON CONFLICT (id) DO NOTHING
    RETURNING id, event_type
)
INSERT INTO webhook_deliveries (message_id, endpoint_id)
SELECT kept.id, e.id FROM kept JOIN webhook_endpoints e ON {_WANTS.format(type="kept.event_type")}
ON CONFLICT (message_id, endpoint_id) DO NOTHING
"""

TAKE_OUTBOX = """
DELETE FROM webhook_outbox WHERE id IN (
    SELECT id FROM webhook_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, event_type, data, created_at
"""

ADD_TO_OUTBOX = "INSERT INTO webhook_outbox (event_type, data) VALUES ($1, $2::jsonb)"

# The cursor starts at the first run's time: expiries before webhooks existed are not announced.
EXPIRY_CURSOR = """
INSERT INTO webhook_cursors (name, position) VALUES ('license.expired', now())
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING position, now() AS now
"""
EXPIRED_SINCE = """
SELECT id, customer_id, license_key, product, status, valid_until FROM licenses
 WHERE valid_until > $1 AND valid_until <= $2 ORDER BY valid_until
"""
MOVE_EXPIRY_CURSOR = "UPDATE webhook_cursors SET position = $1 WHERE name = 'license.expired'"

CLAIM_DUE = """
UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
  FROM webhook_messages m, webhook_endpoints e
 WHERE d.id IN (SELECT d2.id FROM webhook_deliveries d2
                  JOIN webhook_endpoints e2 ON e2.id = d2.endpoint_id AND e2.enabled
                 WHERE d2.status = 'pending' AND d2.next_attempt_at <= now()
                 ORDER BY d2.next_attempt_at LIMIT $1 FOR UPDATE OF d2 SKIP LOCKED)
   AND m.id = d.message_id AND e.id = d.endpoint_id
RETURNING d.id, d.attempts, d.manual_resend, d.message_id, m.payload, e.id AS endpoint_id, e.url,
          e.secret_encrypted
"""

RECORD_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, response_excerpt, error, manual)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SETTLE_DELIVERY = """
UPDATE webhook_deliveries
   SET attempts = attempts + 1, last_attempt_at = now(), manual_resend = false, status = $2,
       next_attempt_at = CASE WHEN $2 = 'pending' THEN now() + make_interval(secs => $3) ELSE now() END,
       delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END
 WHERE id = $1
"""
ENDPOINT_SUCCEEDED = "UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = now() WHERE id = $1"
ENDPOINT_FAILED = """
UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()) WHERE id = $1
RETURNING failing_since
"""
DISABLE_FAILING = """
UPDATE webhook_endpoints
   SET enabled = false, disabled_at = now(),
       disabled_reason = 'no successful delivery since ' || to_char(failing_since AT TIME ZONE 'UTC',
                                                                    'YYYY-MM-DD HH24:MI "UTC"')
 WHERE id = $1 AND enabled AND failing_since < now() - make_interval(secs => $2)
RETURNING id, url
"""

# Admin: send again now, under the same webhook-id.
RESEND = """
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), manual_resend = true
 WHERE id = ANY ($1::bigint[])
"""

PRUNE = """
DELETE FROM webhook_messages m
 WHERE m.created_at < now() - make_interval(days => $1)
   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = m.id AND d.status = 'pending')
"""


CREATE_ENDPOINT = """
INSERT INTO webhook_endpoints (url, description, event_types, secret_encrypted) VALUES ($1, $2, $3, $4)
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: int
    attempts: int
    manual: bool
    message_id: str
    payload: bytes
    endpoint_id: int
    url: str
    secret_encrypted: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_type: str
    data: dict[str, Any]
    created_at: dt.datetime


async def create_endpoint(conn: asyncpg.Connection, box: SecretBox, url: str, *,
                          event_types: tuple[str, ...] = (), description: str | None = None) -> tuple[int, str]:
    """A new endpoint with a fresh secret; returns its id and the secret (shown once)."""
    secret = new_secret()
    endpoint_id = await conn.fetchval(CREATE_ENDPOINT, url, description, list(event_types), box.seal(secret))
    return int(endpoint_id), secret


async def enqueue(conn: Conn, messages: list[WebhookMessage]) -> int:
    """Queue `messages` for every endpoint that wants them; returns the deliveries added."""
    if not messages:
        return 0
    status = await conn.execute(ENQUEUE, [m.id for m in messages], [str(m.event_type) for m in messages],
                                [m.payload.decode() for m in messages])
    return int(status.rsplit(" ", 1)[-1])


async def take_outbox(conn: Conn, limit: int) -> list[OutboxRow]:
    """Remove up to `limit` outbox rows (call inside the transaction that enqueues their messages)."""
    rows = await conn.fetch(TAKE_OUTBOX, limit)
    return [OutboxRow(r["id"], r["event_type"], _json(r["data"]), r["created_at"])
            for r in sorted(rows, key=lambda r: r["id"])]


async def add_to_outbox(conn: asyncpg.Connection, event_type: str, data: dict[str, Any]) -> None:
    """An event raised by code rather than by a row change (backup.failed)."""
    await conn.execute(ADD_TO_OUTBOX, event_type, json.dumps(data, default=str))


async def claim_due(pool: asyncpg.Pool, limit: int, lease_s: float) -> list[DueDelivery]:
    rows = await pool.fetch(CLAIM_DUE, limit, lease_s)
    return [DueDelivery(r["id"], r["attempts"], r["manual_resend"], r["message_id"], r["payload"].encode(),
                        r["endpoint_id"], r["url"], r["secret_encrypted"]) for r in rows]


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)
