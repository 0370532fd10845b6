"""Heartbeat flush: the heartbeat streams into `license_heartbeats`, exactly once.

A batch is COPYed into a temporary table, then moved with one INSERT ... ON CONFLICT DO NOTHING whose
RETURNING feeds the set-based updates of `license_sessions` (last heartbeat, count) and
`device_registrations.last_seen_at`, all in one transaction; the entries are acknowledged after the
commit.  `received_at` comes from the stream id, so a batch delivered twice (a crash between commit and
acknowledgement) hits the same (received_at, event_id) keys: no second row, no second count.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from heartline.plane.events import heartbeat_from_fields
from worker.streams import Entry, StreamConsumer

log = logging.getLogger("worker.flush")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH_TABLE = "heartbeat_batch"
BATCH_COLUMNS = ("received_at", "event_id", "license_id", "session_token", "device_id")

# Per connection (the pool's init): a temporary table the batch is COPYed into; emptied at each commit.
CREATE_BATCH_TABLE = f"""
CREATE TEMP TABLE IF NOT EXISTS {BATCH_TABLE} (
    received_at   timestamptz NOT NULL,
    event_id      text        NOT NULL,
    license_id    bigint      NOT NULL,
    session_token uuid        NOT NULL,
    device_id     bigint
) ON COMMIT DELETE ROWS
"""

# Only rows that were really inserted count, so a redelivered batch leaves the counters alone.
MOVE_BATCH = f"""
WITH inserted AS (
    INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token, device_id)
    SELECT received_at, event_id, license_id, session_token, device_id FROM {BATCH_TABLE}
    ON CONFLICT DO NOTHING
    RETURNING received_at, session_token, device_id
), per_session AS (
    SELECT session_token, count(*) AS n, max(received_at) AS last_at FROM inserted GROUP BY session_token
), sessions AS (
    UPDATE license_sessions s
       SET heartbeat_count = s.heartbeat_count + p.n,
           last_heartbeat_at = greatest(s.last_heartbeat_at, p.last_at)
      FROM per_session p
     WHERE s.session_token = p.session_token
    RETURNING 1
), devices AS (
    UPDATE device_registrations d
       SET last_seen_at = x.last_at
      FROM (SELECT device_id, max(received_at) AS last_at FROM inserted
             WHERE device_id IS NOT NULL GROUP BY device_id) x
     WHERE d.id = x.device_id AND (d.last_seen_at IS NULL OR d.last_seen_at < x.last_at)
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS stored,
       (SELECT count(*) FROM sessions) AS sessions,
       (SELECT count(*) FROM devices) AS devices
"""


@dataclass(frozen=True, slots=True)
class FlushResult:
    read: int          # entries taken from the streams
    stored: int        # new rows in license_heartbeats
    duplicates: int    # rows already stored by an earlier delivery
    malformed: int     # entries that were not heartbeats (acknowledged and logged, never stored)


def received_at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Pool `init`: create this connection's batch table once."""
    await conn.execute(CREATE_BATCH_TABLE)


def heartbeat_records(entries: list[Entry]) -> tuple[list[tuple[Any, ...]], int]:
    """Rows for COPY from raw entries, and the number of malformed entries skipped."""
    records: list[tuple[Any, ...]] = []
    malformed = 0
    for entry in entries:
        try:
            event = heartbeat_from_fields(entry.shard, entry.entry_id, entry.fields)
            token = uuid.UUID(event.session_token)
            if event.license_id <= 0:
                raise ValueError("no license id")
        except (ValueError, TypeError) as exc:
            malformed += 1
            log.warning("worker.flush.malformed shard=%s entry=%s error=%s", entry.shard, entry.entry_id, exc)
            continue
        records.append((received_at(event.received_ms), event.event_id, event.license_id, token,
                        event.device_id))
    return records, malformed


async def store_heartbeats(pool: asyncpg.Pool, records: list[tuple[Any, ...]]) -> int:
    """Store the rows once (whatever was stored before), update sessions and devices; return new rows.

    A row whose month has no partition yet gets it created, then the batch is retried: never dropped.
    """
    for attempt in range(3):
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(BATCH_TABLE, records=records, columns=BATCH_COLUMNS)
                row = await conn.fetchrow(MOVE_BATCH)
                return int(row["stored"])
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc) or attempt == 2:
                raise
            months = sorted({date(r[0].year, r[0].month, 1) for r in records})
            await ensure_partitions(pool, months)
    raise AssertionError("unreachable")


async def ensure_partitions(pool: asyncpg.Pool, months: list[date]) -> None:
    async with pool.acquire() as conn:
        for month in months:
            try:
                name = await conn.fetchval("SELECT ensure_heartbeat_partition($1)", month)
            except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                continue  # another worker created it at the same moment
            log.info("worker.flush.partition_ensured partition=%s", name)


async def flush_batch(pool: asyncpg.Pool, consumer: StreamConsumer) -> FlushResult:
    """Read one batch, store it, acknowledge it.  On failure the batch stays pending and is retried."""
    entries = await consumer.read_batch()
    if not entries:
        return FlushResult(0, 0, 0, 0)
    records, malformed = heartbeat_records(entries)
    try:
        stored = await store_heartbeats(pool, records) if records else 0
        await consumer.ack(entries)
    except BaseException:
        consumer.retry_pending(entries)
        raise
    return FlushResult(len(entries), stored, len(records) - stored, malformed)


async def flush_heartbeats(ctx: dict[str, Any]) -> int:
    """Move one batch of heartbeats from the streams into PostgreSQL; returns the entries handled."""
    result = await flush_batch(ctx["pool"], ctx["heartbeat_consumer"])
    if result.read:
        ctx["metrics"].heartbeats_flushed(result)
        if result.duplicates:
            log.info("worker.flush.redelivered duplicates=%s stored=%s", result.duplicates, result.stored)
    return result.read
