"""Heartbeat flush: the heartbeat streams into `license_heartbeats`, exactly once.

A batch is read from every shard's stream at once (worker/streams.py), decoded in one pass straight
from Redis's reply into PostgreSQL's binary COPY format, COPYed into the table, and the sessions' last heartbeat and
count and the devices' `last_seen_at` are updated with one set-based statement each over the batch
aggregated per session and per device, in one transaction; the entries are acknowledged after the
commit.  Every heartbeat is a row; the mirror (the session's count and last heartbeat, the device's
last_seen_at) is updated only for the sessions of the batch that have a marked heartbeat - heartbeat.lua
marks a session's first and every K-th one with the plane's count (HEARTLINE_HEARTBEAT_MIRROR_S) - and
set to that count with greatest(), so applying a batch twice changes nothing.  `received_at` comes from the stream id, so a batch delivered twice (a crash between commit and
acknowledgement) hits the same (received_at, event_id) keys: its COPY fails on the primary key, the
transaction is rolled back and the batch goes through INSERT ... ON CONFLICT DO NOTHING instead, whose
RETURNING says which rows are new, so nothing is stored or counted twice.
"""

from __future__ import annotations

import asyncio
import gc
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
from heartline.plane.events import HEARTBEAT_FIELD, MIRROR_COUNT_FIELD
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
RETURNING event_id
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


def lock_for_flush(shards: list[int]) -> str:
    """JOIN_BY_INDEX and LOCK_SHARDS_SHARED for `shards` as one simple query (two statements, one round
    trip; the shard numbers are ints, written into it)."""
    listed = ",".join(str(int(shard)) for shard in shards)
    return (JOIN_BY_INDEX.strip() + ";\n"
            + LOCK_SHARDS_SHARED.replace("$1::int[]", f"ARRAY[{listed}]::int[]").strip())

# One row per mirrored session / device of the batch (aggregated in Python), whatever the batch size.
# n: the highest plane count a marked heartbeat of the batch carries (idempotent: greatest); added: the
# batch's entries of the legacy formats, each counted once (a redelivered batch adds only what RETURNING
# names as new).
UPDATE_SESSIONS = """
UPDATE license_sessions s
   SET heartbeat_count = greatest(s.heartbeat_count + b.added, b.n),
       last_heartbeat_at = greatest(s.last_heartbeat_at, b.last_at)
  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::timestamptz[]) AS b(session_token, added, n, last_at)
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
# Both in one statement (one round trip).  PostgreSQL runs a WITH that the main query does not read
# after the main query, so the rows are locked as with two statements: sessions, then devices.
UPDATE_SESSIONS_AND_DEVICES = f"""
WITH devices AS ({UPDATE_DEVICES.strip().replace("$1::", "$5::").replace("$2::", "$6::")})
{UPDATE_SESSIONS.strip()}
"""


# Full batches one flush step stores back to back at most (the next read and decoded while the one before
# is stored); it also ends when the worker is asked to stop.  Each step starts with a batch read and
# decoded while PostgreSQL waits and ends with one stored while the worker's Python waits, so longer
# steps overlap more: 8 batches per step gave 0.42 of a raw COPY in worker.bench_flush, 32 gave 0.47.
PIPELINE_BATCHES = 64


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


# heartbeat.lua writes h = b'<license id>|<token>|<device id>', and n = b'<count>' after it on a marked
# heartbeat; entries written before 'h' have three fields, l, t and d, in this order
# (heartline/plane/events.py), each mirrored.
_H = HEARTBEAT_FIELD.encode()
_N = MIRROR_COUNT_FIELD.encode()
_L, _T, _D = b"l", b"t", b"d"


# PostgreSQL's binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html), written
# straight from the stream entries: per row a field count, then each field as its length and bytes -
# received_at as int64 µs since 2000-01-01, event_id as text, license_id as int8, session_token as the
# uuid's 16 bytes, device_id as int8 or NULL (length -1).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_ROW_HEAD = struct.Struct(">hiqi")  # 5 fields; 8, received_at; length of event_id (then its bytes)
_ROW_TAIL = struct.Struct(">iqi16siq")        # 8, license_id; 16, the uuid; 8, device_id
_ROW_TAIL_NO_DEVICE = struct.Struct(">iqi16si")  # ... -1: device_id NULL
PG_EPOCH_MS = 946_684_800_000       # 2000-01-01T00:00:00Z in Unix ms
MAX_MS = 253_402_300_799_999        # 9999-12-31T23:59:59.999Z, the last instant a datetime holds


def _mark(value: Any) -> int:
    """The count of a marked heartbeat (field n); ValueError for one PostgreSQL would refuse."""
    count = int(value)
    if not 0 < count <= MAX_BIGINT:
        raise ValueError("heartbeat count out of range")
    return count


def _packed(fields: Any) -> tuple[bytes, int, bool]:
    """(b'<license id>|<token>|<device id>', marked count or 0, legacy) of an entry in any format but the
    ones the fast path takes (h, or h and n, as a list); legacy: written before 'h' (l, t and d), so
    mirrored whatever it carries."""
    if type(fields) is list and len(fields) == 6 and fields[0] == _L and fields[2] == _T and fields[4] == _D:
        return b"|".join((fields[1], fields[3], fields[5])), 0, True  # written before 'h'
    named = {(k.decode() if isinstance(k, bytes) else k): v for k, v in field_dict(fields).items()}
    if named.get(HEARTBEAT_FIELD) is not None:
        count = named.get(MIRROR_COUNT_FIELD)
        return _bytes(named[HEARTBEAT_FIELD]), 0 if count is None else _mark(_bytes(count)), False
    if named.get("l") is None or named.get("t") is None:
        raise ValueError("license id or token missing")
    return b"|".join((_bytes(named["l"]), _bytes(named["t"]), _bytes(named.get("d") or b""))), 0, True


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _row_tail(packed: bytes) -> bytes:
    """The COPY row's last three fields for b'<license id>|<token>|<device id>'.  ValueError for what
    PostgreSQL would refuse."""
    license_id, uuid, device_id = _fields_of(packed)
    return _ROW_TAIL.pack(8, license_id, 16, uuid, 8, device_id) if device_id \
        else _ROW_TAIL_NO_DEVICE.pack(8, license_id, 16, uuid, -1)


def _fields_of(packed: bytes) -> tuple[int, bytes, int]:
    """(license id, the token's 16 bytes, device id or 0) of b'<license id>|<token>|<device id>'."""
    license_text, token, device = packed.split(b"|")
    license_id = int(license_text)
    device_id = int(device) if device else 0
    if not 0 < license_id <= MAX_BIGINT or not 0 <= device_id <= MAX_BIGINT:
        raise ValueError("license id or device id out of range")
    uuid = unhexlify(token.replace(b"-", b""))  # binascii.Error is a ValueError
    if len(uuid) != 16:
        raise ValueError("session token is not a uuid")
    return license_id, uuid, device_id


@dataclass(slots=True)
class Decoded:
    """A batch ready for PostgreSQL: its rows as binary COPY data, and the mirror's updates: per session
    with a marked or legacy heartbeat in the batch (token -> [legacy heartbeats, highest marked count,
    last received_at]) and per device of those (id -> last received_at)."""

    copy_data: bytearray  # not bytes: asyncpg would take bytes for a file name
    rows: int
    malformed: int
    sessions: dict[Any, list[Any]]
    devices: dict[int, datetime]
    received_ms: list[int]  # of every row: the months a missing partition is made for
    legacy: dict[str, Any]  # event id -> token of each legacy entry (counted again only if new)


class _Decoder:
    """decode_batch() in steps: feed() any number of entries of a shard, then finish()."""

    __slots__ = ("legacy_ids", "malformed", "mirror", "out", "received", "tails")

    def __init__(self) -> None:
        self.out = bytearray(COPY_HEADER)
        self.tails: dict[bytes, bytes] = {}          # packed -> its COPY row tail
        self.mirror: dict[bytes, list[int]] = {}     # packed -> [legacy rows, highest count, latest ms]
        self.received: list[int] = []
        self.legacy_ids: dict[bytes, bytes] = {}     # event id -> packed, of each legacy entry
        self.malformed = 0

    def feed(self, shard: int, items: list[Any]) -> None:
        out, tails, received, head = self.out, self.tails, self.received, _ROW_HEAD.pack
        prefix = f"{shard}-".encode()
        for entry_id, fields in items:
            try:
                count, legacy = 0, False
                if type(fields) is list and len(fields) == 2 and fields[0] == _H:
                    packed = fields[1]
                elif type(fields) is list and len(fields) == 4 and fields[0] == _H and fields[2] == _N:
                    packed, count = fields[1], _mark(fields[3])  # a marked heartbeat
                else:
                    packed, count, legacy = _packed(fields)
                tail = tails.get(packed)
                if tail is None:
                    tail = tails[packed] = _row_tail(packed)
                eid = entry_id if type(entry_id) is bytes else str(entry_id).encode()
                ms = int(eid.partition(b"-")[0])
                if not 0 <= ms <= MAX_MS:
                    raise ValueError("time out of range")
            except (ValueError, TypeError, AttributeError) as exc:
                # acknowledged with the batch: an entry PostgreSQL would refuse must not block the stream
                self.malformed += 1
                log.warning("worker.flush.malformed shard=%s entry=%s error=%s", shard, entry_id, exc)
                continue
            eid = prefix + eid
            if count or legacy:  # one heartbeat in K
                self._mirrored(packed, count, ms, eid if legacy else None)
            out += head(5, 8, (ms - PG_EPOCH_MS) * 1000, len(eid))
            out += eid
            out += tail
            received.append(ms)

    def _mirrored(self, packed: bytes, count: int, ms: int, legacy_id: bytes | None) -> None:
        seen = self.mirror.get(packed)
        if seen is None:
            seen = self.mirror[packed] = [0, 0, -1]
        if legacy_id is not None:
            seen[0] += 1
            self.legacy_ids[legacy_id] = packed
        if count > seen[1]:  # noqa: PLR1730
            seen[1] = count
        if ms > seen[2]:  # noqa: PLR1730
            seen[2] = ms

    def finish(self) -> Decoded:
        self.out += COPY_TRAILER
        # The sessions with a marked or legacy heartbeat in the batch: one update each, to the highest
        # marked count (legacy rows add one each) and the latest of those heartbeats.
        by_token: dict[Any, list[Any]] = {}
        devices: dict[int, int] = {}
        tokens: dict[bytes, Any] = {}
        for packed, (added, count, last) in self.mirror.items():
            _, uuid, device_id = _fields_of(packed)
            key = tokens[packed] = PgUUID(uuid)
            seen = by_token.get(key)
            if seen is not None:  # the same token written differently (upper case): one row, one update
                seen[0] += added
                seen[1] = max(seen[1], count)
                seen[2] = max(seen[2], last)
            else:
                by_token[key] = [added, count, last]
            if device_id and devices.get(device_id, -1) < last:
                devices[device_id] = last
        return Decoded(self.out, len(self.received), self.malformed,
                       {token: [added, count, received_at(last)] for token, (added, count, last) in by_token.items()},
                       {device: received_at(last) for device, last in devices.items()}, self.received,
                       {eid.decode(): tokens[packed] for eid, packed in self.legacy_ids.items()})


def decode_batch(batch: Batch) -> Decoded:
    """A batch as Redis sent it, in one pass: binary COPY rows and the per-session/device aggregates.

    A row: (received_at, event_id, license_id, session_token, device_id).  Entries as heartbeat.lua
    writes them (h, or h and n) are taken by position; anything else (the three fields written before
    'h', another order, redis-py's dicts) by name.  Whatever PostgreSQL would refuse is counted as malformed
    and left out here, so one bad entry cannot fail the batch's COPY.  The fields' value is the same
    for every heartbeat of a session, so it is parsed once per session and batch: a row then costs its
    stream id and one dict lookup, and no Python object (no datetime, no UUID).
    """
    decoder = _Decoder()
    for shard, items in batch.by_shard.items():
        decoder.feed(shard, items)
    return decoder.finish()


# Entries decoded between two looks at the event loop while a batch is decoded beside another's store.
DECODE_SLICE = 500


async def decode_beside(batch: Batch) -> Decoded:
    """decode_batch(), handing the event loop back every DECODE_SLICE entries: the batch before is being
    stored meanwhile, and its next statement goes out as soon as PostgreSQL answered the one before,
    instead of after the whole batch is decoded (PostgreSQL would sit idle that long)."""
    decoder = _Decoder()
    for shard, items in batch.by_shard.items():
        for start in range(0, len(items), DECODE_SLICE):
            decoder.feed(shard, items[start:start + DECODE_SLICE] if len(items) > DECODE_SLICE else items)
            await asyncio.sleep(0)
    return decoder.finish()


def redelivered(decoded: Decoded, new_event_ids: list[str]) -> dict[Any, list[Any]]:
    """The session updates of a batch delivered before, of which only `new_event_ids` were stored now:
    marked counts and last heartbeats are applied again as they are (greatest() makes that a no-op where
    they were applied), legacy heartbeats are added only if they are new rows."""
    added: dict[Any, int] = {}
    for event_id in new_event_ids:
        token = decoded.legacy.get(event_id)
        if token is not None:
            added[token] = added.get(token, 0) + 1
    return {token: [added.get(token, 0), count, last] for token, (_, count, last) in decoded.sessions.items()}


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
            # each statement waits for this process's event loop, which decodes the next batch meanwhile:
            # as few round trips as can be
            await conn.execute(lock_for_flush(shards))
            await conn.copy_to_table(PARENT, source=decoded.copy_data,  # type: ignore[arg-type]
                                     columns=BATCH_COLUMNS, format="binary")  # (asyncpg takes buffers)
            await _update_sessions_and_devices(conn, decoded.sessions, decoded.devices)
            return decoded.rows
    except asyncpg.UniqueViolationError:
        pass
    async with conn.transaction():
        await conn.execute(lock_for_flush(shards))
        await conn.copy_to_table(BATCH_TABLE, source=decoded.copy_data,  # type: ignore[arg-type]
                                 columns=BATCH_COLUMNS, format="binary")
        rows = await conn.fetch(MOVE_BATCH)
        await _update_sessions_and_devices(conn, redelivered(decoded, [r[0] for r in rows]), decoded.devices)
        return len(rows)


async def _update_sessions_and_devices(conn: Conn, sessions: dict[Any, list[Any]],
                                       devices: dict[int, datetime]) -> None:
    """One statement for both (JOIN_BY_INDEX ran in this transaction already, with the locks); either
    may be empty."""
    # Sorted, so concurrent workers lock rows in the same order and do not deadlock each other.
    if sessions or devices:
        tokens, ids = sorted(sessions), sorted(devices)
        await conn.execute(UPDATE_SESSIONS_AND_DEVICES, tokens, [sessions[t][0] for t in tokens],
                           [sessions[t][1] for t in tokens], [sessions[t][2] for t in tokens],
                           ids, [devices[i] for i in ids])


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


class _CollectorPaused:
    """`with COLLECTOR_PAUSED:` - the cyclic garbage collector does not run inside (nested uses count),
    and runs as before after, if it ran before.

    A flush step makes some 100 000 short-lived container objects per batch (the stream replies' lists),
    none in a reference cycle: reference counting frees them all.  The collector still ran every 700
    allocations and walked what was alive, batches in flight included: the flush's rows/s rose from
    0.47-0.48 to 0.56-0.67 of a raw COPY with it paused (worker.bench_flush, two sittings).  A step is
    bounded (PIPELINE_BATCHES), so cyclic garbage made by other coroutines meanwhile waits seconds at most.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.was_enabled = False

    def __enter__(self) -> None:
        if self.depth == 0:
            self.was_enabled = gc.isenabled()
            gc.disable()
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.was_enabled:
            gc.enable()


COLLECTOR_PAUSED = _CollectorPaused()


async def flush_batches(pool: asyncpg.Pool, consumer: StreamConsumer, *, max_batches: int,
                        on_result: Callable[[FlushResult], None] | None = None,
                        stop: asyncio.Event | None = None) -> list[FlushResult]:
    """Flush batches back to back while they come full, at most `max_batches`: the next batch is read
    and decoded while PostgreSQL stores the one before, so the worker's Python and PostgreSQL work at
    the same time.  Each batch is acknowledged after its own commit, while the next one is stored; on
    failure every batch not acknowledged stays pending and is read again (StreamConsumer.retry_pending).
    on_result is told of each batch stored, also when a later one fails.  Once `stop` is set no
    further batch is read.  The garbage collector is paused meanwhile (COLLECTOR_PAUSED).
    """
    with COLLECTOR_PAUSED:
        return await _flush_batches(pool, consumer, max_batches=max_batches, on_result=on_result, stop=stop)


async def _flush_batches(pool: asyncpg.Pool, consumer: StreamConsumer, *, max_batches: int,
                         on_result: Callable[[FlushResult], None] | None,
                         stop: asyncio.Event | None) -> list[FlushResult]:
    results: list[FlushResult] = []
    acks: list[asyncio.Future[None]] = []
    try:
        batch: Batch | None = await consumer.read()
        decoded = decode_batch(batch) if batch else None
        while batch and decoded is not None:
            store = asyncio.ensure_future(_store(pool, consumer, batch, decoded))
            following: Batch | None = None
            following_decoded: Decoded | None = None
            try:
                if len(batch) >= consumer.batch_size and len(results) + 1 < max_batches \
                        and not (stop is not None and stop.is_set()):
                    following = await consumer.read()
                    following_decoded = await decode_beside(following) if following else None
            except BaseException as exc:
                # the batch in flight is finished (or, when we are cancelled, cancelled) before giving up
                if isinstance(exc, asyncio.CancelledError):
                    store.cancel()
                await asyncio.wait([store])
                if not store.cancelled() and store.exception() is None:
                    acks.append(asyncio.ensure_future(_ack(consumer, batch)))
                    if on_result:
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
            # acknowledged while the next batch is stored: it is committed, and an acknowledgement
            # that fails only leaves it pending, to be read again and found stored
            acks.append(asyncio.ensure_future(_ack(consumer, batch)))
            results.append(_result(batch, decoded, stored))
            if on_result:
                on_result(results[-1])
            batch, decoded = following, following_decoded
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            for ack in acks:
                ack.cancel()
        if acks:
            await asyncio.wait(acks)
            for ack in acks:  # retrieved (their batches are pending again): the first failure is raised
                if not ack.cancelled():
                    ack.exception()
        raise
    if acks:
        await asyncio.gather(*acks)  # the first failure is raised: the loop backs off as for any other
    return results


def _result(batch: Batch, decoded: Decoded, stored: int) -> FlushResult:
    return FlushResult(len(batch), stored, decoded.rows - stored, decoded.malformed)


async def _store(pool: asyncpg.Pool, consumer: StreamConsumer, batch: Batch, decoded: Decoded) -> int:
    try:
        return await store_heartbeats(pool, decoded, batch.shards()) if decoded.rows else 0
    except BaseException:
        consumer.retry_pending(batch)
        raise


async def _ack(consumer: StreamConsumer, batch: Batch) -> None:
    try:
        await consumer.ack(batch)
    except BaseException:
        consumer.retry_pending(batch)
        raise


async def flush_heartbeats(ctx: dict[str, Any]) -> int:
    """Move heartbeats from the streams into PostgreSQL, up to PIPELINE_BATCHES batches while there is a
    backlog; returns the entries handled."""

    def done(result: FlushResult) -> None:
        ctx["metrics"].heartbeats_flushed(result)
        if result.duplicates:
            log.info("worker.flush.redelivered duplicates=%s stored=%s", result.duplicates, result.stored)

    results = await flush_batches(ctx["pool"], ctx["heartbeat_consumer"], max_batches=PIPELINE_BATCHES,
                                  on_result=done, stop=ctx.get("stop"))
    return sum(result.read for result in results)
