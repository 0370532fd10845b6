"""Reconciliation: live-session rows whose session the plane lost are closed as plane_lost, and only
those: a session whose end is still on its way keeps its true end reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis_process import RedisProcess
from shared_support import found
from worker_support import LiveLicense

from heartline.plane import keys
from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown
from worker.flush import flush_heartbeats
from worker.history import record_session_events
from worker.reconcile import LostSessions, close_lost_sessions, redis_run_id


async def test_sessions_lost_with_a_redis_restart_are_closed_as_plane_lost(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license(devices=2)
    first = await plane.start_session(lic.license_id, lic.fingerprint)
    await plane.heartbeat(lic.license_id, first.token or "")
    await record_session_events(worker_ctx)
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 1

    await redis.flushdb()  # Redis restarted empty
    assert await close_lost_sessions(worker_ctx) == 0   # noted, not closed yet
    assert await close_lost_sessions(worker_ctx) == 1

    row = found(await db.fetchrow("SELECT * FROM session_history"))
    assert (str(row["session_token"]), row["end_reason"]) == (first.token, "plane_lost")
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
    assert await close_lost_sessions(worker_ctx) == 0


async def test_a_lost_session_is_closed_with_every_stored_heartbeat_counted(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, redis: aioredis.Redis, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    # The mirror row is brought up to date only from marked heartbeats (interval 59 s, mirror 300 s:
    # K = 5), so after 23 heartbeats it says 20; history must say 23, ending at the last one stored.
    lic = await live_license(timeout_s=60)
    session = await plane.start_session(lic.license_id, lic.fingerprint)
    await record_session_events(worker_ctx)
    for _ in range(23):
        assert (await plane.heartbeat(lic.license_id, session.token or "")).code == "OK"
    while await flush_heartbeats(worker_ctx):
        pass
    assert await db.fetchval("SELECT heartbeat_count FROM license_sessions") == 20
    last = await db.fetchval("SELECT max(received_at) FROM license_heartbeats")

    await redis.flushdb()  # Redis restarted empty
    assert await close_lost_sessions(worker_ctx) == 0
    assert await close_lost_sessions(worker_ctx) == 1
    row = found(await db.fetchrow("SELECT end_reason, heartbeat_count, ended_at FROM session_history"))
    assert tuple(row) == ("plane_lost", 23, last)


async def test_session_whose_end_is_still_in_the_stream_keeps_its_true_reason(
        worker_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license(devices=2)
    ending = await plane.start_session(lic.license_id, lic.fingerprint)
    staying = await plane.start_session(lic.license_id, f"fp-{lic.license_id}-1")
    await record_session_events(worker_ctx)
    assert await plane.end_session(lic.license_id, ending.token or "", EndReason.ADMIN_TERMINATED)

    # the `ended` event is not recorded yet: the row is a suspect, but never closed as lost
    for _ in range(3):
        assert await close_lost_sessions(worker_ctx) == 0
    await record_session_events(worker_ctx)
    assert await close_lost_sessions(worker_ctx) == 0

    rows = await db.fetch("SELECT session_token::text AS t, end_reason FROM session_history")
    assert [(r["t"], r["end_reason"]) for r in rows] == [(ending.token, "admin_terminated")]
    live = await db.fetch("SELECT session_token::text AS t FROM license_sessions")
    assert [r["t"] for r in live] == [staying.token]


async def _round(ctx: dict[str, Any]) -> int:
    """One reconciliation round; a first call after Redis restarted may meet a dead pooled connection."""
    for _ in range(5):
        try:
            return await close_lost_sessions(ctx)
        except redis.exceptions.ConnectionError:
            await asyncio.sleep(0.1)
    return await close_lost_sessions(ctx)


@pytest.mark.slow
async def test_rounds_check_one_page_and_sweep_every_row_only_after_a_redis_restart(
        worker_settings: Settings, db: asyncpg.Connection, make_license: Callable[..., Any],
        tmp_path: Path) -> None:
    own = RedisProcess(tmp_path / "redis")
    own.start()
    ctx: dict[str, Any] = {"settings": worker_settings.replace(redis_url=own.url), "consumer_name": "recon"}
    await open_resources(ctx)
    try:
        shards = worker_settings.stream_shards
        lic = await make_license()
        tokens = sorted(str(uuid.uuid4()) for _ in range(25))
        for token in tokens:
            await db.execute("INSERT INTO license_sessions (session_token, license_id, started_at) "
                             "VALUES ($1, $2, now())", uuid.UUID(token), lic["id"])
            await ctx["redis"].zadd(keys.live_sessions(lic["id"], shards), {token: 2**50})
        state: LostSessions = ctx["lost_sessions"]
        state.page = 10

        checked = []
        for _ in range(5):
            assert await _round(ctx) == 0
            checked.append(state.checked)
        assert checked == [25, 10, 10, 5, 10]   # the first round sweeps all, then page after page
        assert state.full_sweeps == 1

        own.kill()
        own.start()   # empty, with a new run id
        assert await _round(ctx) == 0
        assert (state.checked, state.full_sweeps) == (25, 2)
        assert await _round(ctx) == 25       # every session Redis lost, closed as plane_lost
        assert state.checked == 0
        reasons = await db.fetch("SELECT end_reason, count(*) FROM session_history GROUP BY 1")
        assert [tuple(r) for r in reasons] == [("plane_lost", 25)]
    finally:
        await shutdown(ctx)
        own.kill()


async def test_a_round_repairs_a_live_counter_that_drifted_while_no_reaper_ran(
        worker_ctx: dict[str, Any], redis: aioredis.Redis, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license(devices=3)
    for n in range(3):
        assert (await plane.start_session(lic.license_id, f"fp-{lic.license_id}-{n}")).granted
    assert await plane.live_count() == 3
    # the session keys expire (no reaper ended the sessions): the counter still says 3
    live_key = keys.live_sessions(lic.license_id, plane.shards)
    await redis.pexpire(live_key, 1)
    while await redis.exists(live_key):
        await asyncio.sleep(0.01)
    assert await plane.live_count() == 3
    shards = worker_ctx["settings"].stream_shards
    for _ in range(shards):   # an incremental round recounts one shard; every shard within `shards` rounds
        await close_lost_sessions(worker_ctx)
    assert await plane.live_count() == 0
    assert await redis.zcard(keys.deadlines(keys.shard_of(lic.license_id, plane.shards))) == 0
    assert await plane.recount_live(keys.shard_of(lic.license_id, plane.shards)) == 0


async def test_the_run_id_on_a_cluster_covers_every_node(cluster_redis: Any) -> None:
    """A restart of any master (or a failover) must make the next round sweep in full: the run id a
    round compares is every node's, not the one node redis-py sends INFO to by default."""
    run_id = await redis_run_id(cluster_redis)
    assert len(run_id.split(",")) == len(cluster_redis.get_nodes()) >= 3
    assert run_id == await redis_run_id(cluster_redis)
