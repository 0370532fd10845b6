"""Heartbeat flush: the heartbeat streams into `license_heartbeats`, exactly once.

A batch is COPYed into the table, and the sessions' last heartbeat and count and the devices'
`last_seen_at` are updated with one set-based statement each, in one transaction; the entries are
acknowledged after the commit.  `received_at` comes from the stream id, so a batch delivered twice (a
crash between commit and acknowledgement) hits the same (received_at, event_id) keys: its COPY fails on
the primary key and the batch goes through INSERT ... ON CONFLICT DO NOTHING instead, whose RETURNING
says which rows are new, so nothing is stored or counted twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from heartline.db import Conn
from heartline.plane.events import heartbeat_from_fields
from worker.streams import Entry, StreamConsumer

log = logging.getLogger("worker.flush")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARENT = "license_heartbeats"
MAX_BIGINT = 2**63 - 1
BATCH_TABLE = "heartbeat_batch"
BATCH_COLUMNS = ("received_at", "event_id", "license_id", "session_token", "device_id")

# Per connection (the pool's init): where a batch that was delivered before is COPYed, to be moved with
# ON CONFLICT DO NOTHING.  Emptied at each commit.
CREATE_BATCH_TABLE = f"""
CREATE TEMP TABLE IF NOT EXISTS {BATCH_TABLE} (
    received_at   timestamptz NOT NULL,
    event_id      text        NOT NULL,
    license_id    bigint      NOT NULL,
    session_token uuid        NOT NULL,
    device_id     bigint
) ON COMMIT DELETE ROWS
"""

# RETURNING names only the rows really inserted, so a redelivered batch leaves the counters alone.
MOVE_BATCH = f"""
INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token, device_id)
SELECT received_at, event_id, license_id, session_token, device_id FROM {BATCH_TABLE}
ON CONFLICT DO NOTHING
RETURNING received_at, session_token, device_id
"""

# Heartbeats and `started` events of a shard drain through different streams, maybe in different
# workers.  A flush holds this lock shared for the shards of its batch, recording `started` events holds
# it exclusively: a new license_sessions row then either sees a batch's heartbeats committed (and counts
# them) or the batch's UPDATE sees the row (and counts them there) - never neither, never both.
# Flushes do not wait for each other.  Locks are taken in shard order, so they cannot deadlock.
MIRROR_LOCK = 0x484C_4D52  # "HLMR"
LOCK_SHARDS_SHARED = f"""
SELECT pg_advisory_xact_lock_shared({MIRROR_LOCK}, s)
  FROM (SELECT DISTINCT unnest($1::int[]) AS s ORDER BY 1) x
"""
LOCK_SHARDS = f"""
SELECT pg_advisory_xact_lock({MIRROR_LOCK}, s)
  FROM (SELECT DISTINCT unnest($1::int[]) AS s ORDER BY 1) x
"""

# One row per session / device of the batch (aggregated in Python), whatever the batch size.
UPDATE_SESSIONS = """
UPDATE license_sessions s
   SET heartbeat_count = s.heartbeat_count + b.n,
       last_heartbeat_at = greatest(s.last_heartbeat_at, b.last_at)
  FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS b(session_token, n, last_at)
 WHERE s.session_token = b.session_token
"""
# last_seen_at moves in steps of at least DEVICE_SEEN_STEP: with 30 s heartbeats that halves the device
# updates (each also runs the audit trigger), and "last seen" needs no finer grain; the exact last
# heartbeat is license_sessions.last_heartbeat_at.
DEVICE_SEEN_STEP = "60 seconds"
UPDATE_DEVICES = f"""
UPDATE device_registrations d
   SET last_seen_at = b.last_at
  FROM unnest($1::bigint[], $2::timestamptz[]) AS b(device_id, last_at)
 WHERE d.id = b.device_id
   AND (d.last_seen_at IS NULL OR d.last_seen_at <= b.last_at - interval '{DEVICE_SEEN_STEP}')
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
            if not 0 < event.license_id <= MAX_BIGINT or not 0 < (event.device_id or 1) <= MAX_BIGINT:
                raise ValueError("license or device id out of range")
            record = (received_at(event.received_ms), event.event_id, event.license_id, token,
                      event.device_id)
        except (ValueError, TypeError, OverflowError) as exc:
            # acknowledged with the batch: an entry PostgreSQL would refuse must not block the stream
            malformed += 1
            log.warning("worker.flush.malformed shard=%s entry=%s error=%s", entry.shard, entry.entry_id, exc)
            continue
        records.append(record)
    return records, malformed


async def store_heartbeats(pool: asyncpg.Pool, records: list[tuple[Any, ...]], shards: list[int]) -> int:
    """Store the rows once (whatever was stored before), update sessions and devices; return new rows.

    shards: the shards the rows came from (see MIRROR_LOCK).  A row whose month has no partition yet
    gets it created, then the batch is retried: never dropped.
    """
    for attempt in range(3):
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_SHARDS_SHARED, shards)
                inserted = await _insert_once(conn, records)
                await _update_sessions_and_devices(conn, inserted)
                return len(inserted)
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc) or attempt == 2:
                raise
            months = sorted({date(r[0].year, r[0].month, 1) for r in records})
            await ensure_partitions(pool, months)
    raise AssertionError("unreachable")


async def _insert_once(conn: Conn, records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Insert the rows not stored yet; return (received_at, session_token, device_id) of those inserted.

    Almost every batch is new: it is COPYed straight into license_heartbeats.  Only a batch delivered
    before (its consumer died or lost PostgreSQL between commit and acknowledgement) hits the primary
    key; it then goes through the batch table and ON CONFLICT DO NOTHING.
    """
    try:
        async with conn.transaction():  # a savepoint: the failed COPY is undone alone
            await conn.copy_records_to_table(PARENT, records=records, columns=BATCH_COLUMNS)
        return [(r[0], r[3], r[4]) for r in records]
    except asyncpg.UniqueViolationError:
        await conn.copy_records_to_table(BATCH_TABLE, records=records, columns=BATCH_COLUMNS)
        rows = await conn.fetch(MOVE_BATCH)
        return [(r["received_at"], r["session_token"], r["device_id"]) for r in rows]


async def _update_sessions_and_devices(conn: Conn, inserted: list[tuple[Any, ...]]) -> None:
    sessions: dict[Any, list[Any]] = {}
    devices: dict[int, datetime] = {}
    for at, token, device_id in inserted:
        seen = sessions.get(token)
        if seen is None:
            sessions[token] = [1, at]
        else:
            seen[0] += 1
            seen[1] = max(seen[1], at)
        if device_id is not None and (device_id not in devices or devices[device_id] < at):
            devices[device_id] = at
    # Sorted, so concurrent workers lock rows in the same order and do not deadlock each other.
    if sessions:
        tokens = sorted(sessions)
        await conn.execute(UPDATE_SESSIONS, tokens, [sessions[t][0] for t in tokens],
                           [sessions[t][1] for t in tokens])
    if devices:
        ids = sorted(devices)
        await conn.execute(UPDATE_DEVICES, ids, [devices[i] for i in ids])


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
        shards = sorted({entry.shard for entry in entries})
        stored = await store_heartbeats(pool, records, shards) if records else 0
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
