"""A slot moved to another master while heartbeats flow into it: nothing lost, nothing stored twice.

The slot holds one plane shard: its streams (with their consumer groups and pending entries), its
deadline index and every key of its licenses.  It is moved in small MIGRATE batches, as redis-cli
moves a slot, so heartbeats meet every state of a migration: keys still on the source, ASK to the
target, TRYAGAIN while a license's keys are split over both, then MOVED once the slot has its new owner.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from redis.crc import key_slot
from worker_support import eventually

from heartline.devcluster import EmbeddedRedisCluster
from heartline.plane import keys
from heartline.settings import Settings

LICENSES = 8


@pytest.fixture
def worker_settings(worker_settings: Settings) -> Settings:
    return worker_settings.replace(stream_shards=2)  # the licenses crowd into the shard that moves


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("plane_mode", ["cluster"], indirect=True)
async def test_slot_moved_while_heartbeats_flow_loses_and_duplicates_nothing(
        edge: httpx.AsyncClient, db: asyncpg.Connection, make_license: Any, redis_cluster: EmbeddedRedisCluster,
        worker_settings: Settings) -> None:
    shards = worker_settings.stream_shards
    sessions: list[tuple[str, str]] = []
    moving_shard = None
    while len(sessions) < LICENSES:
        lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
        shard = keys.shard_of(lic["id"], shards)
        moving_shard = shard if moving_shard is None else moving_shard
        if shard != moving_shard:
            continue
        started = await edge.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                        "hardware_fingerprint": "box"})
        assert started.status_code == 201, started.text
        sessions.append((started.json()["session_token"], lic["license_key"]))
    assert moving_shard is not None
    slot = key_slot(keys.heartbeat_stream(moving_shard).encode())
    source = redis_cluster.master_of_slot(slot)
    target = next(redis_cluster.node(p) for p in redis_cluster.master_ports() if p != source.port)

    answers: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def beat(token: str, license_key: str) -> None:
        while not stop.is_set():
            reply = await edge.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": license_key})
            answers.append((token, reply.status_code))
            await asyncio.sleep(0.02)

    flows = [asyncio.create_task(beat(token, key)) for token, key in sessions]
    try:
        await asyncio.sleep(1.5)
        before = len(answers)
        moved = await asyncio.to_thread(redis_cluster.move_slot, slot, target, batch=3)
        assert moved >= LICENSES * 3  # each license's keys, the shard's streams and index
        during = len(answers) - before
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*flows)
    assert redis_cluster.master_of_slot(slot).port == target.port

    statuses = Counter(s for _, s in answers)
    assert set(statuses) <= {200, 503}, statuses
    ok = Counter(t for t, s in answers if s == 200)

    async def all_stored() -> bool:
        return int(await db.fetchval("SELECT count(*) FROM license_heartbeats")) >= sum(ok.values())

    await eventually(all_stored, timeout=30)
    await asyncio.sleep(1.0)  # anything stored twice would show up by now
    rows = {r["t"]: (r["c"], r["d"]) for r in await db.fetch(
        "SELECT session_token::text AS t, count(*) AS c, count(DISTINCT event_id) AS d "
        "FROM license_heartbeats GROUP BY 1")}
    print(f"\nresharding: slot {slot} ({moved} keys) moved {source.port} -> {target.port} in batches of 3 "
          f"while {during} heartbeats were answered; answers {dict(statuses)}")
    for token, _ in sessions:
        count, distinct = rows.get(token, (0, 0))
        assert count == distinct == ok[token], (token, count, distinct, ok[token])
