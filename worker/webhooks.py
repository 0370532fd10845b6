"""Webhooks from the worker: events become messages, messages are sent with retries.

- `queue_session_webhooks`: reads the session event streams in a consumer group of its own (`webhooks`,
  beside `history`) and queues session.started / session.ended messages; acknowledged after the commit,
  and the message id is derived from the session token, so an entry read twice queues nothing twice;
  session.refused (with code) from the `refused` events of refused starts, its id derived from the
  event's stream id.
- `queue_change_webhooks`: takes the rows that PostgreSQL triggers put in `webhook_outbox` (device,
  license and resource changes, backup failures) and announces licenses whose valid_until passed.
- `send_webhooks`: claims due deliveries, signs and POSTs them, records each attempt, schedules retries
  with exponential backoff and disables an endpoint without success for HEARTLINE_WEBHOOK_DISABLE_AFTER_S.

docs/webhooks.md is the user's description of all this.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import asyncpg
import httpx

from heartline.plane.events import RefusalEvent, RefusalOperation, SessionEvent, SessionEventKind
from heartline.settings import Settings
from heartline.webhooks import delivery, store
from heartline.webhooks.catalogue import EventType, WebhookMessage, from_ms, iso, message, row_data
from heartline.webhooks.secrets import SecretBox, SecretKeyMismatch
from heartline.webhooks.targets import WebhookTargetRefused, check_target_async
from worker.history import session_events
from worker.refusals import refusal_events
from worker.streams import StreamConsumer

log = logging.getLogger("worker.webhooks")

# Deliveries claimed and sent concurrently per pass.
SEND_BATCH = 50
# Outbox rows turned into messages per pass.
OUTBOX_BATCH = 500
LICENSE_NAMES = "SELECT id, license_key, customer_id FROM licenses WHERE id = ANY ($1::bigint[])"
# An `ended` event carries no fingerprint when the license's cache had left Redis (the plane reads it
# from the cached devices): the device's row in PostgreSQL has it.
DEVICE_FINGERPRINTS = "SELECT id, hardware_fingerprint FROM device_registrations WHERE id = ANY ($1::bigint[])"

OUTBOX_KINDS = {
    EventType.DEVICE_ACTIVATED: "device", EventType.DEVICE_DEACTIVATED: "device",
    EventType.LICENSE_CREATED: "license", EventType.LICENSE_UPDATED: "license",
    EventType.LICENSE_SUSPENDED: "license", EventType.LICENSE_REVOKED: "license",
    EventType.RESOURCE_ALLOCATED: "resource", EventType.RESOURCE_RELEASED: "resource",
}


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The worker's client for webhook targets: no proxies from the environment (the SSRF guard checks
    the address the request really goes to), no redirects, the settings' timeout."""
    return httpx.AsyncClient(timeout=settings.webhook_timeout_s, trust_env=False, follow_redirects=False)


# -- events into messages ---------------------------------------------------------------------------

def session_message(event: SessionEvent, license_row: Any, device_fingerprint: str | None = None) -> WebhookMessage:
    """The session.started / session.ended message of a stream event; `device_fingerprint` (the device's
    in PostgreSQL) stands in when the event has none."""
    data: dict[str, Any] = {
        "license_id": event.license_id,
        "license_key": license_row["license_key"] if license_row else None,
        "customer_id": license_row["customer_id"] if license_row else None,
        "session_token": event.session_token, "device_id": event.device_id,
        "hardware_fingerprint": event.fingerprint or device_fingerprint, "started_at": from_ms(event.started_ms or event.at_ms),
        "client_version": event.client_version, "client_ip": event.client_ip,
    }
    if event.kind is SessionEventKind.STARTED:
        return message(f"msg_session.started_{event.session_token}", EventType.SESSION_STARTED, data,
                       _at(event.at_ms))
    data.update(ended_at=from_ms(event.at_ms), reason=str(event.reason), heartbeat_count=event.heartbeat_count)
    return message(f"msg_session.ended_{event.session_token}", EventType.SESSION_ENDED, data, _at(event.at_ms))


def refusal_message(event: RefusalEvent, license_row: Any) -> WebhookMessage:
    """The session.refused message of a refused start."""
    data: dict[str, Any] = {
        "license_id": event.license_id,
        "license_key": license_row["license_key"] if license_row else None,
        "customer_id": license_row["customer_id"] if license_row else None,
        "code": event.code, "device_id": event.device_id, "hardware_fingerprint": event.fingerprint,
        "refused_at": from_ms(event.at_ms),
    }
    return message(f"msg_session.refused_{event.event_id}", EventType.SESSION_REFUSED, data, _at(event.at_ms))


def outbox_message(row: store.OutboxRow) -> WebhookMessage | None:
    """The message of one outbox row; None for a type this version does not know."""
    try:
        event_type = EventType(row.event_type)
    except ValueError:
        log.warning("worker.webhooks.unknown_event type=%s outbox_id=%s", row.event_type, row.id)
        return None
    kind = OUTBOX_KINDS.get(event_type)
    data = row_data(kind, row.data) if kind else dict(row.data)
    return message(f"msg_outbox_{row.id}", event_type, data, row.created_at)


def expiry_message(row: Any) -> WebhookMessage:
    until: dt.datetime = row["valid_until"]
    data = {"id": row["id"], "customer_id": row["customer_id"], "license_key": row["license_key"],
            "product": row["product"], "status": row["status"], "valid_until": iso(until)}
    return message(f"msg_license.expired_{row['id']}_{int(until.timestamp() * 1000)}",
                   EventType.LICENSE_EXPIRED, data, until)


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def queue_session_webhooks(ctx: dict[str, Any]) -> int:
    """Queue the messages of one batch of session events; returns the entries read."""
    consumer: StreamConsumer = ctx["webhook_consumer"]
    pool: asyncpg.Pool = ctx["pool"]
    entries = await consumer.read_batch()
    if not entries:
        return 0
    events, _malformed = session_events(entries)
    # refused activations are not sessions: only refused starts are announced
    refusals = [e for e in refusal_events(entries)[0] if e.operation is RefusalOperation.START]
    try:
        if events or refusals:
            async with pool.acquire() as conn, conn.transaction():
                license_ids = sorted({e.license_id for e in events} | {e.license_id for e in refusals})
                names = {r["id"]: r for r in await conn.fetch(LICENSE_NAMES, license_ids)}
                unnamed = sorted({e.device_id for e in events if e.fingerprint is None and e.device_id})
                fingerprints = {r["id"]: r["hardware_fingerprint"]
                                for r in (await conn.fetch(DEVICE_FINGERPRINTS, unnamed) if unnamed else [])}
                queued = await store.enqueue(conn, [session_message(e, names.get(e.license_id),
                                                                    fingerprints.get(e.device_id or 0))
                                                    for e in events]
                                             + [refusal_message(e, names.get(e.license_id))
                                                for e in refusals])
            if queued:
                log.debug("worker.webhooks.queued source=sessions deliveries=%s", queued)
        await consumer.ack(entries)
    except BaseException:
        consumer.retry_pending(entries)
        raise
    return len(entries)


async def queue_change_webhooks(ctx: dict[str, Any]) -> int:
    """Turn outbox rows and newly passed license expiries into messages; returns the events handled."""
    pool: asyncpg.Pool = ctx["pool"]
    async with pool.acquire() as conn, conn.transaction():
        rows = await store.take_outbox(conn, OUTBOX_BATCH)
        messages = [m for m in map(outbox_message, rows) if m is not None]
        cursor = await conn.fetchrow(store.EXPIRY_CURSOR)
        assert cursor is not None  # an upsert ... RETURNING always returns its row
        expired = await conn.fetch(store.EXPIRED_SINCE, cursor["position"], cursor["now"])
        messages += [expiry_message(r) for r in expired]
        await conn.execute(store.MOVE_EXPIRY_CURSOR, cursor["now"])
        queued = await store.enqueue(conn, messages)
    if queued:
        log.debug("worker.webhooks.queued source=changes deliveries=%s", queued)
    return len(rows)


# -- sending ---------------------------------------------------------------------------------------

async def send_webhooks(ctx: dict[str, Any]) -> int:
    """Send every due delivery once (concurrently); returns how many attempts were made."""
    settings: Settings = ctx["settings"]
    pool: asyncpg.Pool = ctx["pool"]
    # The lease outlasts one attempt, so no second worker takes a delivery while it is in flight.
    due = await store.claim_due(pool, SEND_BATCH, settings.webhook_timeout_s * 3 + 30)
    if not due:
        return 0
    await asyncio.gather(*(_send_one(ctx, d) for d in due))
    return len(due)


async def _send_one(ctx: dict[str, Any], due: store.DueDelivery) -> None:
    settings: Settings = ctx["settings"]
    box: SecretBox = ctx["webhook_secrets"]
    try:
        await check_target_async(due.url, allow_private=settings.webhook_allow_private_targets)
        secret = box.open(due.secret_encrypted)
    except (WebhookTargetRefused, SecretKeyMismatch) as exc:
        result = delivery.AttemptResult(None, 0, None, str(exc)[:delivery.EXCERPT_CHARS])
    else:
        result = await delivery.attempt(ctx["webhook_http"], due.url, due.message_id, secret, due.payload)
    await record_attempt(ctx, due, result)


async def record_attempt(ctx: dict[str, Any], due: store.DueDelivery, result: delivery.AttemptResult) -> None:
    """Log the attempt, settle or reschedule the delivery, and track the endpoint's health."""
    settings: Settings = ctx["settings"]
    attempts = due.attempts + 1
    if result.succeeded:
        status, delay = "delivered", 0.0
    else:
        next_in = delivery.retry_delay_s(attempts, settings)
        status, delay = ("failed", 0.0) if next_in is None else ("pending", next_in)
    async with ctx["pool"].acquire() as conn, conn.transaction():
        await conn.execute(store.RECORD_ATTEMPT, due.id, result.status_code, result.latency_ms, result.excerpt,
                           result.error, due.manual)
        await conn.execute(store.SETTLE_DELIVERY, due.id, status, delay)
        if result.succeeded:
            await conn.execute(store.ENDPOINT_SUCCEEDED, due.endpoint_id)
        else:
            await conn.execute(store.ENDPOINT_FAILED, due.endpoint_id)
            disabled = await conn.fetchrow(store.DISABLE_FAILING, due.endpoint_id,
                                           settings.webhook_disable_after_s)
            if disabled is not None:
                log.warning("webhook.endpoint.disabled endpoint_id=%s url=%s", disabled["id"], disabled["url"])
    outcome = "delivered" if result.succeeded else status
    ctx["metrics"].webhook_attempted(outcome)
    log.info("webhook.attempt endpoint_id=%s message_id=%s attempt=%s status=%s outcome=%s latency_ms=%s",
             due.endpoint_id, due.message_id, attempts, result.status_code, outcome, result.latency_ms)


async def prune_webhook_messages(ctx: dict[str, Any]) -> int:
    """Delete finished messages (and their deliveries and attempts) past the retention."""
    status = await ctx["pool"].execute(store.PRUNE, ctx["settings"].webhook_retention_days)
    return int(status.rsplit(" ", 1)[-1])
