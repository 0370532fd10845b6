"""Heartbeat flush: streams -> license_heartbeats, exactly once, in the right month partitions."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from shared_support import found
from worker_support import LiveLicense, add_heartbeat, eventually

from heartline.plane import keys
from heartline.plane.sessions import SessionPlane
from worker.flush import flush_batch, flush_heartbeats, heartbeat_records, store_heartbeats
from worker.streams import StreamConsumer


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


async def open_session(db: asyncpg.Connection, license_id: int, device_id: int | None) -> str:
    token = str(uuid.uuid4())
    await db.execute("INSERT INTO license_sessions (session_token, license_id, device_id, started_at) "
                     "VALUES ($1, $2, $3, '2026-01-01')", uuid.UUID(token), license_id, device_id)
    return token


async def make_device(db: asyncpg.Connection, license_id: int, fp: str = "fp-1") -> int:
    return int(await db.fetchval("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                                 "VALUES ($1, $2) RETURNING id", license_id, fp))


async def session_on_device(db: asyncpg.Connection, make_license: Any) -> tuple[Any, int, str]:
    """A license with one device and a live-session row on it: (license row, device id, token)."""
    lic = await make_license()
    device = await make_device(db, lic["id"])
    return lic, device, await open_session(db, lic["id"], device)


async def drain(ctx: dict[str, Any]) -> int:
    total = 0
    while n := await flush_heartbeats(ctx):
        total += n
    return total


async def test_heartbeats_land_once_each_in_their_month_partition(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic, device, token = await session_on_device(db, make_license)
    # across a month and a year boundary; 2027-01 has no partition yet, the flush creates it
    stamps = [ms(2026, 10, 31, 23, 59, 59), ms(2026, 11, 1), ms(2026, 11, 15, 12),
              ms(2026, 12, 31, 23, 59, 59),
              ms(2027, 1, 1), ms(2027, 1, 1, 0, 0, 1)]
    # every heartbeat marked with the plane's count (HEARTLINE_HEARTBEAT_MIRROR_S=0)
    for nth, stamp in enumerate(stamps):
        for seq in range(100):
            await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{stamp}-{seq}",
                                count=nth * 100 + seq + 1)

    assert await drain(worker_ctx) == 600

    rows = await db.fetch("SELECT tableoid::regclass::text AS part, count(*) AS n FROM license_heartbeats "
                          "GROUP BY 1 ORDER BY 1")
    assert [(r["part"], r["n"]) for r in rows] == [
        ("license_heartbeats_2026_10", 100), ("license_heartbeats_2026_11", 200),
        ("license_heartbeats_2026_12", 100), ("license_heartbeats_2027_01", 200)]
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM license_heartbeats") == 600
    session = found(await db.fetchrow("SELECT heartbeat_count, last_heartbeat_at FROM license_sessions"))
    assert session["heartbeat_count"] == 600
    assert session["last_heartbeat_at"] == datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    # last_seen_at moves in steps of a minute or more, so it trails the last heartbeat by under a minute
    seen = await db.fetchval("SELECT last_seen_at FROM device_registrations WHERE id = $1", device)
    assert timedelta(0) <= datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC) - seen < timedelta(seconds=60)
    # everything acknowledged: nothing pending for any consumer
    for shard in range(shards):
        assert (await redis.xpending(keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP))["pending"] == 0


@pytest.mark.parametrize("old_format", [False, True], ids=["h", "l-t-d"])
@pytest.mark.parametrize("heir_fast", [True, False], ids=["multiplexed", "redis-py"])
async def test_batch_delivered_again_after_commit_is_neither_stored_nor_counted_twice(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any,
        old_format: bool, heir_fast: bool) -> None:
    settings = worker_ctx["settings"]
    lic, device, token = await session_on_device(db, make_license)
    for n in range(1, 151):
        # as heartbeat.lua marks them with K = 10: the first and every tenth carry the plane's count
        await add_heartbeat(redis, settings.stream_shards, lic["id"], token, device, old_format=old_format,
                            count=n if n == 1 or n % 10 == 0 else None)

    # A consumer that commits and dies before acknowledging...
    dying = StreamConsumer(redis, group=keys.HEARTBEAT_GROUP, stream_key=keys.heartbeat_stream,
                           shards=settings.stream_shards, consumer="dying", batch_size=1000,
                           claim_idle_ms=200)
    entries = await dying.read_batch()
    decoded = heartbeat_records(entries)
    assert await store_heartbeats(worker_ctx["pool"], decoded, [entries[0].shard]) == 150

    # ...and a live one that takes its entries over once they sit idle (through the worker's
    # multiplexing stream client, or redis-py where that client does not apply).
    await asyncio.sleep(0.3)
    heir = StreamConsumer(redis, group=keys.HEARTBEAT_GROUP, stream_key=keys.heartbeat_stream,
                          shards=settings.stream_shards, consumer="heir", batch_size=1000, claim_idle_ms=200,
                          fast=worker_ctx["stream_client"] if heir_fast else None)
    result = await flush_batch(worker_ctx["pool"], heir)
    assert (result.read, result.stored, result.duplicates) == (150, 0, 150)

    assert await db.fetchval("SELECT count(*) FROM license_heartbeats") == 150
    assert await db.fetchval("SELECT heartbeat_count FROM license_sessions") == 150
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats WHERE device_id = $1", device) == 150
    shard = keys.shard_of(lic["id"], settings.stream_shards)
    assert (await redis.xpending(keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP))["pending"] == 0


async def test_malformed_entries_are_acknowledged_and_never_stored(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    token = await open_session(db, lic["id"], None)
    stream = keys.heartbeat_stream(keys.shard_of(lic["id"], shards))
    await redis.xadd(stream, {"l": lic["id"], "t": "not-a-uuid", "d": ""})
    await redis.xadd(stream, {"t": token})
    await redis.xadd(stream, {"l": "x", "t": token})
    await redis.xadd(stream, {"l": "99999999999999999999", "t": token})
    await redis.xadd(stream, {"l": lic["id"], "t": token, "d": "-3"})
    await redis.xadd(stream, {"h": f"{lic['id']}|not-a-uuid|"})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}"})
    await redis.xadd(stream, {"h": f"0|{token}|"})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}|x"})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}|", "n": "x"})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}|", "n": 0})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}|", "n": 2**63})
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}||7"})
    await add_heartbeat(redis, shards, lic["id"], token, None)
    await redis.xadd(stream, {"h": f"{lic['id']}|{token}|"}, id=f"{2**62}-0")  # a time no date holds

    assert await drain(worker_ctx) == 15
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats") == 1
    assert (await redis.xpending(stream, keys.HEARTBEAT_GROUP))["pending"] == 0


async def test_entries_of_every_format_are_stored_once_each_with_their_fields(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    # At an upgrade a stream holds entries heartbeat.lua wrote before 'h' (l, t, d) ahead of new ones;
    # those are mirrored one by one, the new ones only where marked (n).
    shards = worker_ctx["settings"].stream_shards
    lic, device, token = await session_on_device(db, make_license)
    other = await open_session(db, lic["id"], None)
    stamps: dict[str, tuple[str, int | None]] = {}
    for n in range(40):
        stamp = ms(2026, 11, 30, 12, 0, n)
        stamps[await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{stamp}-0",
                                   old_format=True)] = (token, device)
        stamps[await add_heartbeat(redis, shards, lic["id"], other, None, entry_id=f"{stamp}-1",
                                   count=n + 1 if n in (0, 19, 39) else None)] = (other, None)

    assert await drain(worker_ctx) == 80

    shard = keys.shard_of(lic["id"], shards)
    rows = await db.fetch("SELECT received_at, event_id, license_id, session_token::text AS t, device_id "
                          "FROM license_heartbeats")
    assert len(rows) == 80
    for row in rows:
        entry_id = row["event_id"].removeprefix(f"{shard}-")
        assert (row["t"], row["device_id"]) == stamps[entry_id]
        assert row["license_id"] == lic["id"]
        assert row["received_at"] == datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
    sessions = {r["t"]: (r["heartbeat_count"], r["last_heartbeat_at"]) for r in await db.fetch(
        "SELECT session_token::text AS t, heartbeat_count, last_heartbeat_at FROM license_sessions")}
    last = datetime(2026, 11, 30, 12, 0, 39, tzinfo=UTC)
    assert sessions == {token: (40, last), other: (40, last)}


async def test_only_marked_heartbeats_move_the_mirror_to_the_plane_count(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic, device, token = await session_on_device(db, make_license)

    async def mirror() -> tuple[Any, ...]:
        row = found(await db.fetchrow(
            "SELECT s.heartbeat_count, s.last_heartbeat_at, d.last_seen_at FROM license_sessions s "
            "JOIN device_registrations d ON d.id = s.device_id"))
        return tuple(row)

    base = ms(2026, 11, 30, 12)
    # heartbeats 2..4 of a session whose first was marked in an earlier batch: stored, mirror untouched
    for n in range(2, 5):
        await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{base + n * 30_000}-0")
    assert await drain(worker_ctx) == 3
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats") == 3
    assert await mirror() == (0, None, None)

    # the fifth is marked: the count becomes the plane's (5, not 0 + 1), at its time; the sixth, not
    # marked, is stored and waits for the next mark
    await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{base + 5 * 30_000}-0", count=5)
    await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{base + 6 * 30_000}-0")
    assert await drain(worker_ctx) == 2
    fifth = datetime.fromtimestamp((base + 5 * 30_000) / 1000, UTC)
    assert await mirror() == (5, fifth, fifth)

    # a marked count below the row's (an older entry delivered late) never lowers it; an entry in the
    # format before 'h' adds one
    await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{base + 7 * 30_000}-0", count=3)
    await add_heartbeat(redis, shards, lic["id"], token, device, entry_id=f"{base + 8 * 30_000}-0",
                        old_format=True)
    assert await drain(worker_ctx) == 2
    eighth = datetime.fromtimestamp((base + 8 * 30_000) / 1000, UTC)
    assert await mirror() == (6, eighth, eighth)
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats") == 7


async def test_flush_loop_stores_heartbeats_of_every_shard(
        worker_ctx: dict[str, Any], run_loops: Any, db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    shards = worker_ctx["settings"].stream_shards
    tokens = []
    for _ in range(shards * 2):
        lic = await live_license()
        session = await plane.start_session(lic.license_id, lic.fingerprint)
        tokens.append((lic.license_id, session.token or ""))
    run_loops()
    for round_ in range(50):
        for license_id, token in tokens:
            assert (await plane.heartbeat(license_id, token)).code == "OK"
        if round_ % 10 == 0:
            await asyncio.sleep(0.02)

    async def stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM license_heartbeats") == 50 * len(tokens)

    async def counted() -> list[int]:
        rows = await db.fetch("SELECT heartbeat_count FROM license_sessions")
        return sorted(r["heartbeat_count"] for r in rows)

    await eventually(stored)
    # the mirror catches up within a flush interval (started events and heartbeats drain separately);
    # with interval 59 s and HEARTLINE_HEARTBEAT_MIRROR_S 300 every fifth heartbeat is marked, the 50th too
    await eventually(lambda: _equals(counted, [50] * len(tokens)))


async def _equals(fetch: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return bool(await fetch() == expected)


async def test_a_flush_step_stores_full_batches_back_to_back_until_the_worker_stops(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    batch = worker_ctx["settings"].flush_batch_size
    lic = await make_license()
    token = await open_session(db, lic["id"], None)
    for _ in range(batch * 5):
        await add_heartbeat(redis, shards, lic["id"], token, None)
    worker_ctx["stop"] = stop = asyncio.Event()
    stop.set()  # asked to stop: the step finishes the batch it has and reads no other
    assert await flush_heartbeats(worker_ctx) == batch
    stop.clear()
    assert await flush_heartbeats(worker_ctx) == batch * 4  # the backlog, in one step
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats") == batch * 5


async def test_the_garbage_collector_is_paused_during_a_flush_step_and_back_after(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    token = await open_session(db, lic["id"], None)
    for _ in range(3):
        await add_heartbeat(redis, shards, lic["id"], token, None)
    seen: list[bool] = []
    original = worker_ctx["heartbeat_consumer"].ack

    async def ack(batch: Any) -> None:
        seen.append(gc.isenabled())
        await original(batch)

    worker_ctx["heartbeat_consumer"].ack = ack
    assert gc.isenabled()
    assert await flush_heartbeats(worker_ctx) == 3
    assert seen == [False] and gc.isenabled()
    # a process that runs without the collector keeps it off
    gc.disable()
    try:
        await add_heartbeat(redis, shards, lic["id"], token, None)
        assert await flush_heartbeats(worker_ctx) == 1
        assert not gc.isenabled()
    finally:
        gc.enable()
