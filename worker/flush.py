"""Heartbeat flush: the heartbeat streams into `license_heartbeats`, exactly once.

A batch is read from every shard's stream at once (worker/streams.py), decoded in one pass straight
from Redis's reply into PostgreSQL's binary COPY format, COPYed into the table, and the sessions' last heartbeat and
count and the devices' `last_seen_at` are updated with one set-based statement each over the batch
aggregated per session and per device, in one transaction; the entries are acknowledged after the
commit.  `received_at` comes from the stream id, so a batch delivered twice (a crash between commit and
acknowledgement) hits the same (received_at, event_id) keys: its COPY fails on the primary key, the
transaction is rolled back and the batch goes through INSERT ... ON CONFLICT DO NOTHING instead, whose
RETURNING says which rows are new, so nothing is stored or counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from binascii import unhexlify
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pgproto.pgproto import UUID as PgUUID

from heartline.db import Conn
from heartline.plane.events import HEARTBEAT_FIELD
from worker.streams import Batch, Entry, StreamConsumer, field_dict

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

# The session and device updates join the batch's aggregates (unnest) to the tables by primary key.
# With a few thousand rows in the batch PostgreSQL's own choice is a hash join: a sequential scan of
# the whole table into a hash (spilling to disk at 200 000 rows) for every batch, a cost that grows with
# the number of sessions and devices, not with the batch.  Hash and merge joins are switched off for
# the flush's transaction only (set_config(..., true)), so each row of the batch is an index probe.
JOIN_BY_INDEX = """
SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)
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


# Full batches one flush step stores back to back (the next read while the one before is stored) before
# the loop looks at its stop flag again.
PIPELINE_BATCHES = 8


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


# heartbeat.lua writes one field, h = b'<license id>|<token>|<device id>'; entries written before that
# format have three, l, t and d, in this order (heartline/plane/events.py).
_H = HEARTBEAT_FIELD.encode()
_L, _T, _D = b"l", b"t", b"d"


# PostgreSQL's binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html), written
# straight from the stream entries: per row a field count, then each field as its length and bytes -
# received_at as int64 µs since 2000-01-01, event_id as text, license_id as int8, session_token as the
# uuid's 16 bytes, device_id as int8 or NULL (length -1).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_ROW_HEAD = struct.Struct(">hiqi")  # 5 fields; 8, received_at; length of event_id (then its bytes)
_ROW_MID = struct.Struct(">iqi")    # 8, license_id; 16 (then the uuid's bytes)
_ROW_DEVICE = struct.Struct(">iq")  # 8, device_id
_ROW_NO_DEVICE = struct.pack(">i", -1)
PG_EPOCH_MS = 946_684_800_000       # 2000-01-01T00:00:00Z in Unix ms
MAX_MS = 253_402_300_799_999        # 9999-12-31T23:59:59.999Z, the last instant a datetime holds


def _packed(fields: Any) -> bytes:
    """b'<license id>|<token>|<device id>' of an entry in any format (the fast path takes 'h' itself)."""
    if type(fields) is list and len(fields) == 6 and fields[0] == _L and fields[2] == _T and fields[4] == _D:
        return b"|".join((fields[1], fields[3], fields[5]))  # written before 'h'
    named = {(k.decode() if isinstance(k, bytes) else k): v for k, v in field_dict(fields).items()}
    if named.get(HEARTBEAT_FIELD) is not None:
        return _bytes(named[HEARTBEAT_FIELD])
    if named.get("l") is None or named.get("t") is None:
        raise ValueError("license id or token missing")
    return b"|".join((_bytes(named["l"]), _bytes(named["t"]), _bytes(named.get("d") or b"")))


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _session_of(packed: bytes) -> list[Any]:
    """[row tail, heartbeats, last ms, token, device id] for b'<license id>|<token>|<device id>';
    the row tail is the COPY row's last three fields.  ValueError for what PostgreSQL would refuse."""
    license_text, token, device = packed.split(b"|")
    license_id = int(license_text)
    device_id = int(device) if device else 0
    if not 0 < license_id <= MAX_BIGINT or not 0 <= device_id <= MAX_BIGINT:
        raise ValueError("license id or device id out of range")
    uuid = unhexlify(token.replace(b"-", b""))  # binascii.Error is a ValueError
    if len(uuid) != 16:
        raise ValueError("session token is not a uuid")
    tail = _ROW_MID.pack(8, license_id, 16) + uuid + (_ROW_DEVICE.pack(8, device_id) if device_id
                                                      else _ROW_NO_DEVICE)
    return [tail, 0, -1, uuid, device_id]


@dataclass(slots=True)
class Decoded:
    """A batch ready for PostgreSQL: its rows as binary COPY data, and the same heartbeats aggregated
    per session (token -> [heartbeats, last received_at]) and per device (id -> last received_at)."""

    copy_data: bytearray  # not bytes: asyncpg would take bytes for a file name
    rows: int
    malformed: int
    sessions: dict[Any, list[Any]]
    devices: dict[int, datetime]
    received_ms: list[int]  # of every row: the months a missing partition is made for


def decode_batch(batch: Batch) -> Decoded:
    """A batch as Redis sent it, in one pass: binary COPY rows and the per-session/device aggregates.

    A row: (received_at, event_id, license_id, session_token, device_id).  Entries as heartbeat.lua
    writes them ('h') are taken by position; anything else (the three fields written before 'h',
    another order, redis-py's dicts) by name.  Whatever PostgreSQL would refuse is counted as malformed
    and left out here, so one bad entry cannot fail the batch's COPY.  The fields' value is the same
    for every heartbeat of a session, so it is parsed once per session and batch: a row then costs its
    stream id and one dict lookup, and no Python object (no datetime, no UUID).
    """
    out = bytearray(COPY_HEADER)
    sessions: dict[bytes, list[Any]] = {}
    received: list[int] = []
    malformed = 0
    head = _ROW_HEAD.pack
    for shard, items in batch.by_shard.items():
        prefix = f"{shard}-".encode()
        for entry_id, fields in items:
            try:
                packed = fields[1] if type(fields) is list and len(fields) == 2 and fields[0] == _H \
                    else _packed(fields)
                session = sessions.get(packed)
                if session is None:
                    session = _session_of(packed)
                eid = entry_id if type(entry_id) is bytes else str(entry_id).encode()
                ms = int(eid.partition(b"-")[0])
                if not 0 <= ms <= MAX_MS:
                    raise ValueError("time out of range")
            except (ValueError, TypeError, AttributeError) as exc:
                # acknowledged with the batch: an entry PostgreSQL would refuse must not block the stream
                malformed += 1
                log.warning("worker.flush.malformed shard=%s entry=%s error=%s", shard, entry_id, exc)
                continue
            if session[1] == 0:
                sessions[packed] = session
            session[1] += 1
            if ms > session[2]:  # noqa: PLR1730 - max() costs a call per heartbeat
                session[2] = ms
            eid = prefix + eid
            out += head(5, 8, (ms - PG_EPOCH_MS) * 1000, len(eid))
            out += eid
            out += session[0]
            received.append(ms)
    out += COPY_TRAILER
    by_token: dict[Any, list[Any]] = {}
    devices: dict[int, int] = {}
    for _, n, last, token, device_id in sessions.values():
        key = PgUUID(token)
        if key in by_token:  # the same token written differently (upper case): one row, one update
            by_token[key][0] += n
            by_token[key][1] = max(by_token[key][1], last)
        else:
            by_token[key] = [n, last]
        if device_id and devices.get(device_id, -1) < last:
            devices[device_id] = last
    return Decoded(out, len(received), malformed,
                   {token: [n, received_at(last)] for token, (n, last) in by_token.items()},
                   {device: received_at(last) for device, last in devices.items()}, received)


def aggregate(rows: list[Any]) -> tuple[dict[Any, list[Any]], dict[int, datetime]]:
    """Per session and per device, from rows of (received_at, session token, device id)."""
    sessions: dict[Any, list[Any]] = {}
    devices: dict[int, datetime] = {}
    for at, token, device_id in rows:
        seen = sessions.get(token)
        if seen is None:
            sessions[token] = [1, at]
        else:
            seen[0] += 1
            seen[1] = max(seen[1], at)
        if device_id is not None and (device_id not in devices or devices[device_id] < at):
            devices[device_id] = at
    return sessions, devices


def heartbeat_records(entries: list[Entry]) -> Decoded:
    """decode_batch() of `Entry` objects (a consumer's read_batch())."""
    batch = Batch()
    for entry in entries:
        batch.add(entry.shard, [(entry.entry_id.encode(), entry.fields)])
    return decode_batch(batch)


async def store_heartbeats(pool: asyncpg.Pool, decoded: Decoded, shards: list[int]) -> int:
    """Store the rows once (whatever was stored before), update sessions and devices; return new rows.

    shards: the shards the rows came from (see MIRROR_LOCK).  A row whose month has no partition yet
    gets it created, then the batch is retried: never dropped.
    """
    for attempt in range(3):
        try:
            async with pool.acquire() as conn:
                return await _store_once(conn, decoded, shards)
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc) or attempt == 2:
                raise
            months = sorted({date(at.year, at.month, 1) for at in map(received_at, set(decoded.received_ms))})
            await ensure_partitions(pool, months)
    raise AssertionError("unreachable")


async def _store_once(conn: Conn, decoded: Decoded, shards: list[int]) -> int:
    """Almost every batch is new: one transaction COPYs it straight into license_heartbeats and updates
    the sessions and devices.  Only a batch delivered before (its consumer died or lost PostgreSQL
    between commit and acknowledgement, or Redis lost the group) hits the primary key; that transaction
    is rolled back and the batch goes through the batch table and ON CONFLICT DO NOTHING instead, and
    only the rows RETURNING names as new are counted.
    """
    try:
        async with conn.transaction():
            await conn.execute(LOCK_SHARDS_SHARED, shards)
            await conn.copy_to_table(PARENT, source=decoded.copy_data,  # type: ignore[arg-type]
                                     columns=BATCH_COLUMNS, format="binary")  # (asyncpg takes buffers)
            await _update_sessions_and_devices(conn, decoded.sessions, decoded.devices)
            return decoded.rows
    except asyncpg.UniqueViolationError:
        pass
    async with conn.transaction():
        await conn.execute(LOCK_SHARDS_SHARED, shards)
        await conn.copy_to_table(BATCH_TABLE, source=decoded.copy_data,  # type: ignore[arg-type]
                                 columns=BATCH_COLUMNS, format="binary")
        rows = await conn.fetch(MOVE_BATCH)
        await _update_sessions_and_devices(conn, *aggregate([tuple(r) for r in rows]))
        return len(rows)


async def _update_sessions_and_devices(conn: Conn, sessions: dict[Any, list[Any]],
                                       devices: dict[int, datetime]) -> None:
    # Sorted, so concurrent workers lock rows in the same order and do not deadlock each other.
    if sessions or devices:
        await conn.execute(JOIN_BY_INDEX)
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
    results = await flush_batches(pool, consumer, max_batches=1)
    return results[0] if results else FlushResult(0, 0, 0, 0)


async def flush_batches(pool: asyncpg.Pool, consumer: StreamConsumer, *, max_batches: int,
                        on_result: Callable[[FlushResult], None] | None = None) -> list[FlushResult]:
    """Flush batches back to back while they come full, at most `max_batches`: the next batch is read
    and decoded while PostgreSQL stores the one before, so the worker's Python and PostgreSQL work at
    the same time.  Each batch is acknowledged after its own commit; on failure every batch not
    acknowledged stays pending and is read again (StreamConsumer.retry_pending).  on_result is told of
    each batch stored, also when a later one fails.
    """
    results: list[FlushResult] = []
    batch: Batch | None = await consumer.read()
    decoded = decode_batch(batch) if batch else None
    while batch and decoded is not None:
        store = asyncio.ensure_future(_store_and_ack(pool, consumer, batch, decoded))
        following: Batch | None = None
        following_decoded: Decoded | None = None
        try:
            if len(batch) >= consumer.batch_size and len(results) + 1 < max_batches:
                following = await consumer.read()
                following_decoded = decode_batch(following) if following else None
        except BaseException as exc:
            # the batch in flight is finished (or, when we are cancelled, cancelled) before giving up
            if isinstance(exc, asyncio.CancelledError):
                store.cancel()
            await asyncio.wait([store])
            if not store.cancelled() and store.exception() is None and on_result:
                on_result(_result(batch, decoded, store.result()))
            if following:
                consumer.retry_pending(following)
            raise
        try:
            stored = await store
        except BaseException:
            if following:
                consumer.retry_pending(following)
            raise
        results.append(_result(batch, decoded, stored))
        if on_result:
            on_result(results[-1])
        batch, decoded = following, following_decoded
    return results


def _result(batch: Batch, decoded: Decoded, stored: int) -> FlushResult:
    return FlushResult(len(batch), stored, decoded.rows - stored, decoded.malformed)


async def _store_and_ack(pool: asyncpg.Pool, consumer: StreamConsumer, batch: Batch, decoded: Decoded) -> int:
    try:
        stored = await store_heartbeats(pool, decoded, batch.shards()) if decoded.rows else 0
        await consumer.ack(batch)
    except BaseException:
        consumer.retry_pending(batch)
        raise
    return stored


async def flush_heartbeats(ctx: dict[str, Any]) -> int:
    """Move heartbeats from the streams into PostgreSQL, up to PIPELINE_BATCHES batches while there is a
    backlog; returns the entries handled."""

    def done(result: FlushResult) -> None:
        ctx["metrics"].heartbeats_flushed(result)
        if result.duplicates:
            log.info("worker.flush.redelivered duplicates=%s stored=%s", result.duplicates, result.stored)

    results = await flush_batches(ctx["pool"], ctx["heartbeat_consumer"], max_batches=PIPELINE_BATCHES,
                                  on_result=done)
    return sum(result.read for result in results)
