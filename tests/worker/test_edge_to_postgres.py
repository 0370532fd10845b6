"""End to end: sessions and heartbeats sent through the edge's HTTP API end up in PostgreSQL once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from shared_support import found
from worker_support import eventually

from heartline.settings import Settings


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_heartbeats_sent_through_the_edge_are_stored_once_each(
        edge: httpx.AsyncClient, db: asyncpg.Connection, make_license: Any, plane_mode: str,
        worker_settings: Settings) -> None:
    assert (worker_settings.redis_url or "").startswith("redis+cluster://") is (plane_mode == "cluster")
    lic = await make_license(device_limit=2, concurrent_sessions_limit=2)
    started = await edge.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                    "hardware_fingerprint": "box-1", "client_version": "3.0"})
    assert started.status_code == 201, started.text
    token = started.json()["session_token"]
    n = 120
    for _ in range(n):
        beat = await edge.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]})
        assert beat.status_code == 200, beat.text
    ended = await edge.post(f"/v1/sessions/{token}/end", json={"license_key": lic["license_key"]})
    assert ended.status_code == 200, ended.text

    async def history() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM session_history WHERE session_token = $1", uuid.UUID(token))

    row = await eventually(history)
    assert (row["end_reason"], row["heartbeat_count"], row["client_version"]) == ("client_end", n, "3.0")

    async def all_stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM license_heartbeats") == n

    await eventually(all_stored)
    month = datetime.now(UTC).strftime("%Y_%m")
    parts = await db.fetch("SELECT tableoid::regclass::text AS p, count(*) AS c, "
                           "count(DISTINCT event_id) AS d "
                           "FROM license_heartbeats GROUP BY 1")
    # a test running across midnight at a month's end may split them over two partitions
    assert sum(r["c"] for r in parts) == sum(r["d"] for r in parts) == n
    assert f"license_heartbeats_{month}" in {r["p"] for r in parts}
    device = found(await db.fetchrow("SELECT last_seen_at FROM device_registrations WHERE license_id = $1",
                               lic["id"]))
    assert device["last_seen_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM license_sessions") == 0
