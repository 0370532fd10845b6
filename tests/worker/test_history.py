"""Session events -> license_sessions / session_history, once per session, with the true end reason."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from shared_support import found
from worker_support import LiveLicense, add_session_event

from heartline.plane import keys
from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from worker.flush import flush_heartbeats
from worker.history import record_session_events, session_events, store_session_events
from worker.streams import Entry


async def drain(ctx: dict[str, Any]) -> int:
    total = 0
    while n := await record_session_events(ctx):
        total += n
    return total


async def test_started_session_is_mirrored_and_its_end_moves_it_to_history(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license()
    started = await plane.start_session(lic.license_id, lic.fingerprint, client_version="2.1.0",
                                        client_ip="203.0.113.9")
    assert started.granted and started.token
    await drain(worker_ctx)
    live = found(await db.fetchrow("SELECT * FROM license_sessions"))
    assert (str(live["session_token"]), live["license_id"], live["device_id"], live["hardware_fingerprint"],
            live["client_version"], str(live["client_ip"])) == \
        (started.token, lic.license_id, lic.device_id, lic.fingerprint, "2.1.0", "203.0.113.9")

    await plane.heartbeat(lic.license_id, started.token)
    assert await plane.end_session(lic.license_id, started.token, EndReason.CLIENT_END)
    await drain(worker_ctx)

    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
    row = found(await db.fetchrow("SELECT * FROM session_history"))
    assert (str(row["session_token"]), row["end_reason"], row["device_id"], row["heartbeat_count"],
            row["client_version"]) == (started.token, "client_end", lic.device_id, 1, "2.1.0")
    assert row["started_at"] == live["started_at"] and row["ended_at"] >= row["started_at"]


async def _end(plane: SessionPlane, lic: LiveLicense, token: str, reason: EndReason) -> None:
    if reason is EndReason.DEVICE_DEACTIVATED:
        assert await plane.end_device_sessions(lic.license_id, lic.fingerprint, reason) == 1
    elif reason in (EndReason.LICENSE_SUSPENDED, EndReason.LICENSE_EXPIRED):
        assert await plane.end_license_sessions(lic.license_id, reason) == 1
    else:
        assert await plane.end_session(lic.license_id, token, reason)


@pytest.mark.parametrize("reason", [EndReason.CLIENT_END, EndReason.ADMIN_TERMINATED,
                                    EndReason.DEVICE_DEACTIVATED, EndReason.LICENSE_SUSPENDED,
                                    EndReason.LICENSE_EXPIRED])
async def test_each_end_reason_reaches_history_once(
        reason: EndReason, worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis,
        plane: SessionPlane, live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license()
    started = await plane.start_session(lic.license_id, lic.fingerprint)
    assert started.token
    await drain(worker_ctx)
    await _end(plane, lic, started.token, reason)

    # The same events read again (a redelivery) change nothing.
    raw = []
    for shard in range(worker_ctx["settings"].stream_shards):
        raw += [Entry(shard, i.decode(), f) for i, f in await redis.xrange(keys.event_stream(shard))]
    events, malformed = session_events(raw)
    assert malformed == 0 and len(events) == 2
    await drain(worker_ctx)
    assert await store_session_events(worker_ctx["pool"], events) == (0, 0, 0)

    rows = await db.fetch("SELECT end_reason FROM session_history")
    assert [r["end_reason"] for r in rows] == [str(reason)]
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0


async def test_ended_recorded_before_its_started_leaves_no_live_row(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis,
        make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    token = str(uuid.uuid4())
    await add_session_event(redis, shards, kind="ended", license_id=lic["id"], token=token,
                            fingerprint="fp-x", started_ms=1_790_000_000_000, at_ms=1_790_000_060_000,
                            reason="timeout", count=2)
    await drain(worker_ctx)
    # its `started` comes late (another consumer's claimed entry)
    await add_session_event(redis, shards, kind="started", license_id=lic["id"], token=token,
                            fingerprint="fp-x", started_ms=1_790_000_000_000, at_ms=1_790_000_000_000)
    await drain(worker_ctx)

    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
    row = found(await db.fetchrow("SELECT end_reason, heartbeat_count, hardware_fingerprint, "
                            "extract(epoch FROM ended_at - started_at) AS secs FROM session_history"))
    assert (row["end_reason"], row["heartbeat_count"], row["hardware_fingerprint"], row["secs"]) == \
        ("timeout", 2, "fp-x", 60)


async def test_events_of_a_deleted_license_or_device_do_not_block_the_stream(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis,
        make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    gone = str(uuid.uuid4())
    await add_session_event(redis, shards, kind="started", license_id=lic["id"] + 1000, token=gone,
                            started_ms=1_790_000_000_000, at_ms=1_790_000_000_000)
    await add_session_event(redis, shards, kind="ended", license_id=lic["id"] + 1000, token=gone,
                            started_ms=1_790_000_000_000, at_ms=1_790_000_001_000, reason="client_end")
    kept = str(uuid.uuid4())
    await add_session_event(redis, shards, kind="ended", license_id=lic["id"], token=kept, device_id=987654,
                            started_ms=1_790_000_000_000, at_ms=1_790_000_001_000, reason="client_end")
    assert await drain(worker_ctx) == 3
    rows = await db.fetch("SELECT session_token::text AS t, device_id FROM session_history")
    assert [(r["t"], r["device_id"]) for r in rows] == [(kept, None)]


async def test_heartbeats_flushed_before_their_sessions_start_is_recorded_still_count(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license()
    started = await plane.start_session(lic.license_id, lic.fingerprint)
    for _ in range(5):
        await plane.heartbeat(lic.license_id, started.token or "")
    assert await flush_heartbeats(worker_ctx) == 5      # no live row yet: nothing to count into
    await drain(worker_ctx)                             # the row starts with the 5 already stored
    assert await db.fetchval("SELECT heartbeat_count FROM license_sessions") == 5
    # later heartbeats count into the row (interval 59 s, mirror 300 s: every fifth is marked)
    for _ in range(5):
        await plane.heartbeat(lic.license_id, started.token or "")
    assert await flush_heartbeats(worker_ctx) == 5
    row = found(await db.fetchrow("SELECT heartbeat_count, last_heartbeat_at FROM license_sessions"))
    assert row["heartbeat_count"] == 10
    assert row["last_heartbeat_at"] == await db.fetchval("SELECT max(received_at) FROM license_heartbeats")


async def test_malformed_session_events_are_skipped_without_blocking_the_stream(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis,
        make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    good = str(uuid.uuid4())
    stream = keys.event_stream(keys.shard_of(lic["id"], shards))
    await redis.xadd(stream, {"k": "ended", "l": lic["id"], "t": str(uuid.uuid4()), "r": "exploded"})
    await redis.xadd(stream, {"k": "ended", "l": lic["id"], "t": str(uuid.uuid4())})
    await redis.xadd(stream, {"k": "started", "l": lic["id"], "t": str(uuid.uuid4()), "s": "9" * 19})
    await redis.xadd(stream, {"k": "resumed", "l": lic["id"], "t": str(uuid.uuid4())})
    await add_session_event(redis, shards, kind="started", license_id=lic["id"], token=good,
                            started_ms=1_790_000_000_000, at_ms=1_790_000_000_000)
    assert await drain(worker_ctx) == 5
    rows = await db.fetch("SELECT session_token::text AS t FROM license_sessions")
    assert [r["t"] for r in rows] == [good]
    assert worker_ctx["metrics"].entries_malformed.labels("events")._value.get() == 4
