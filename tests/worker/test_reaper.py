"""Reaper: a session that stops sending heartbeats is ended as timeout and reaches history in seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from worker_support import LiveLicense, eventually

from heartline.plane.sessions import PlaneCode, SessionPlane


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_timed_out_session_reaches_history_as_timeout_soon_after_its_deadline(
        worker_ctx: dict[str, Any], run_loops: Any, db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    lic = await live_license(timeout_s=1)
    quiet = await plane.start_session(lic.license_id, lic.fingerprint)
    assert quiet.token
    run_loops()

    async def history() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM session_history")

    row = await eventually(history, timeout=20)
    assert str(row["session_token"]) == quiet.token and row["end_reason"] == "timeout"
    # ended by the reaper within a couple of reap intervals of the deadline (Redis server clock)
    overdue_ms = row["ended_at"].timestamp() * 1000 - quiet.deadline_ms
    assert 0 <= overdue_ms < 3000
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
    assert not await plane.is_live(lic.license_id, quiet.token)
    assert worker_ctx["metrics"].reaped._value.get() == 1


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_a_lapsed_session_is_kept_for_its_grace_and_reaches_history_once_with_its_lapses(
        worker_ctx: dict[str, Any], run_loops: Any, db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    """resume_grace_s: a session revived once and then silent ends as timeout only when the grace after
    its second missed deadline runs out, in one history row that says it lapsed twice."""
    lic = await live_license(timeout_s=1, resume_grace_s=2)
    run_loops()
    session = await plane.start_session(lic.license_id, lic.fingerprint)
    assert session.token
    await asyncio.sleep(max(0, session.deadline_ms + 300 - await plane.now_ms()) / 1000)
    revived = await plane.heartbeat(lic.license_id, session.token)   # the reaper ran meanwhile: kept
    assert revived.code is PlaneCode.OK

    async def history() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM session_history")

    row = await eventually(history, timeout=20)
    assert str(row["session_token"]) == session.token
    assert (row["end_reason"], row["lapses"], row["heartbeat_count"]) == ("timeout", 2, 1)
    # ended once the grace after the last deadline ran out, not at the deadline
    assert row["ended_at"].timestamp() * 1000 >= revived.deadline_ms + 2000
    assert await db.fetchval("SELECT count(*) FROM session_history") == 1
