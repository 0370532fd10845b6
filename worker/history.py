"""Session events into PostgreSQL: `started` -> a `license_sessions` row, `ended` -> one `session_history`
row with its end reason, and the live row removed; `refused` -> counted in `license_refusals_daily`
(worker/refusals.py).

One transaction per batch, acknowledged after the commit.  Idempotent on the session token: a replayed
`started` whose session already has history adds no live row, a replayed `ended` writes nothing twice,
and an `ended` whose `started` was never recorded still writes history from the event's own fields.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from heartline.plane.events import RefusalEvent, SessionEvent, SessionEventKind, session_event_from_fields
from worker.flush import LOCK_SHARDS, MAX_BIGINT, received_at
from worker.refusals import is_refusal, refusal_events, roll_up
from worker.streams import Entry, StreamConsumer

log = logging.getLogger("worker.history")

_EVENTS = """
unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[], $6::timestamptz[],
       $7::text[], $8::bigint[], $9::text[], $10::text[], $11::timestamptz[], $12::integer[])
    AS e(session_token, license_id, device_id, fingerprint, started_at, at, end_reason, heartbeat_count,
         client_version, client_ip, last_heartbeat_at, lapses)
"""

# A session already in history is over: its late (replayed) `started` must not bring it back.
RECORD_STARTED = f"""
INSERT INTO license_sessions (session_token, license_id, device_id, hardware_fingerprint, started_at,
                              last_heartbeat_at, heartbeat_count, client_version, client_ip)
SELECT e.session_token, e.license_id, dev.id, e.fingerprint, coalesce(e.started_at, e.at),
       hb.last_at, coalesce(hb.n, 0), e.client_version, e.client_ip::inet
  FROM {_EVENTS}
  LEFT JOIN device_registrations dev ON dev.id = e.device_id
  -- heartbeats flushed before this event was recorded (the streams are drained independently)
  LEFT JOIN LATERAL (
       SELECT count(*) AS n, max(h.received_at) AS last_at FROM license_heartbeats h
        WHERE h.license_id = e.license_id AND h.received_at >= coalesce(e.started_at, e.at)
          AND h.session_token = e.session_token) hb ON true
 WHERE EXISTS (SELECT 1 FROM licenses l WHERE l.id = e.license_id)
   AND NOT EXISTS (SELECT 1 FROM session_history sh WHERE sh.session_token = e.session_token)
ON CONFLICT (session_token) DO NOTHING
"""

# The event carries what history needs; the live row fills what an older event may lack.
RECORD_ENDED = f"""
WITH ev AS (
    SELECT DISTINCT ON (e.session_token) e.* FROM {_EVENTS} ORDER BY e.session_token, e.at
), closed AS (
    DELETE FROM license_sessions s USING ev WHERE s.session_token = ev.session_token RETURNING s.*
), rows AS (
    SELECT ev.session_token, ev.license_id,
           coalesce(ev.device_id, c.device_id) AS device_id,
           coalesce(ev.fingerprint, c.hardware_fingerprint) AS fingerprint,
           coalesce(ev.started_at, c.started_at, ev.at) AS started_at,
           ev.at AS ended_at, ev.end_reason,
           greatest(ev.heartbeat_count, c.heartbeat_count, 0) AS heartbeat_count,
           coalesce(ev.client_version, c.client_version) AS client_version,
           coalesce(ev.client_ip::inet, c.client_ip) AS client_ip,
           coalesce(ev.lapses, 0) AS lapses
      FROM ev LEFT JOIN closed c ON c.session_token = ev.session_token
     WHERE EXISTS (SELECT 1 FROM licenses l WHERE l.id = ev.license_id)
)
INSERT INTO session_history (session_token, license_id, device_id, hardware_fingerprint, started_at,
                             ended_at, end_reason, heartbeat_count, client_version, client_ip, lapses)
SELECT r.session_token, r.license_id, dev.id, r.fingerprint, r.started_at,
       greatest(r.ended_at, r.started_at), r.end_reason, r.heartbeat_count, r.client_version, r.client_ip,
       r.lapses
  FROM rows r LEFT JOIN device_registrations dev ON dev.id = r.device_id
ON CONFLICT (session_token) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    read: int
    started: int      # live rows added
    ended: int        # history rows written (a replay writes none)
    malformed: int
    refused: int = 0  # refused events counted (a replay counts none)


def _valid_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _columns(events: list[SessionEvent]) -> list[list[Any]]:
    """The events as the column arrays of _EVENTS (same order)."""
    return [
        [uuid.UUID(e.session_token) for e in events],
        [e.license_id for e in events],
        [e.device_id for e in events],
        [e.fingerprint for e in events],
        [received_at(e.started_ms) if e.started_ms else None for e in events],
        [received_at(e.at_ms) for e in events],
        [str(e.reason) if e.reason else None for e in events],
        [e.heartbeat_count for e in events],
        [e.client_version for e in events],
        [_valid_ip(e.client_ip) for e in events],
        [received_at(e.last_heartbeat_ms) if e.last_heartbeat_ms else None for e in events],
        [e.lapses for e in events],
    ]


def session_events(entries: list[Entry]) -> tuple[list[SessionEvent], int]:
    """Parsed started/ended events in stream order, and the number of malformed entries skipped
    (`refused` entries are not session events: see refusal_events)."""
    events: list[SessionEvent] = []
    malformed = 0
    for entry in entries:
        if is_refusal(entry):
            continue
        try:
            event = session_event_from_fields(entry.shard, entry.entry_id, entry.fields)
            uuid.UUID(event.session_token)
            if not 0 < event.license_id <= MAX_BIGINT or not 0 < (event.device_id or 1) <= MAX_BIGINT:
                raise ValueError("license or device id out of range")
            if event.kind is SessionEventKind.ENDED and event.reason is None:
                raise ValueError("ended without a reason")
            for ms in (event.at_ms, event.started_ms, event.last_heartbeat_ms or 0):
                received_at(ms)  # raises OverflowError for a time PostgreSQL cannot hold
            if event.heartbeat_count > MAX_BIGINT:
                raise ValueError("heartbeat count out of range")
            if not 0 <= event.lapses <= 2**31 - 1:
                raise ValueError("lapses out of range")
        except (ValueError, TypeError, OverflowError) as exc:
            malformed += 1
            log.warning("worker.history.malformed shard=%s entry=%s error=%s",
                        entry.shard, entry.entry_id, exc)
            continue
        events.append(event)
    return events, malformed


async def store_session_events(pool: asyncpg.Pool, events: list[SessionEvent],
                               refusals: list[RefusalEvent] | None = None) -> tuple[int, int, int]:
    """Apply the events in one transaction: starts first, then ends (which remove what they end), and
    the refusals' counts.  Returns live rows added, history rows written, refusals counted."""
    started = [e for e in events if e.kind is SessionEventKind.STARTED]
    ended = [e for e in events if e.kind is SessionEventKind.ENDED]
    async with pool.acquire() as conn, conn.transaction():
        if started:
            # event ids are '<shard>-<stream id>'; see flush.MIRROR_LOCK for why
            await conn.execute(LOCK_SHARDS, sorted({int(e.event_id.split("-", 1)[0]) for e in started}))
        n_started = _count(await conn.execute(RECORD_STARTED, *_columns(started))) if started else 0
        n_ended = _count(await conn.execute(RECORD_ENDED, *_columns(ended))) if ended else 0
        n_refused = await roll_up(conn, refusals) if refusals else 0
    return n_started, n_ended, n_refused


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def record_batch(pool: asyncpg.Pool, consumer: StreamConsumer) -> HistoryResult:
    entries = await consumer.read_batch()
    if not entries:
        return HistoryResult(0, 0, 0, 0)
    events, malformed = session_events(entries)
    refusals, bad_refusals = refusal_events(entries)
    try:
        n_started, n_ended, n_refused = await store_session_events(pool, events, refusals) \
            if events or refusals else (0, 0, 0)
        await consumer.ack(entries)
    except BaseException:
        consumer.retry_pending(entries)
        raise
    return HistoryResult(len(entries), n_started, n_ended, malformed + bad_refusals, n_refused)


async def record_session_events(ctx: dict[str, Any]) -> int:
    """Record one batch of session started/ended events; returns the entries handled."""
    result = await record_batch(ctx["pool"], ctx["event_consumer"])
    if result.read:
        ctx["metrics"].session_events_recorded(result)
    return result.read
