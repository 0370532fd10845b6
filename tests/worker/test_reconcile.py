"""Reconciliation: live-session rows whose session the plane lost are closed as plane_lost, and only
those: a session whose end is still on its way keeps its true end reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from worker_support import LiveLicense

from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from worker.history import record_session_events
from worker.reconcile import close_lost_sessions


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

    row = await db.fetchrow("SELECT * FROM session_history")
    assert (str(row["session_token"]), row["end_reason"]) == (first.token, "plane_lost")
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
    assert await close_lost_sessions(worker_ctx) == 0


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
