"""POST /v1/devices/activate and /deactivate: PostgreSQL is the record, limits hold, sessions end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
import httpx
import redis.asyncio as aioredis
from shared_support import found

from heartline.plane import keys
from heartline.plane.events import EndReason, SessionEventKind, session_event_from_fields
from heartline.settings import Settings


async def activate(client: httpx.AsyncClient, license_key: str, fingerprint: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/devices/activate", json={"license_key": license_key,
                                                           "hardware_fingerprint": fingerprint, **extra})


async def deactivate(client: httpx.AsyncClient, license_key: str, fingerprint: str) -> httpx.Response:
    return await client.post("/v1/devices/deactivate", json={"license_key": license_key,
                                                             "hardware_fingerprint": fingerprint})


async def test_activate_creates_device_then_is_idempotent(client: httpx.AsyncClient, db: asyncpg.Connection,
                                                          make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=2)
    first = await activate(client, lic["license_key"], "abc", device_name="Laptop", device_type="macos")
    assert first.status_code == 201
    assert first.json()["newly_activated"] is True and first.json()["active_devices"] == 1
    again = await activate(client, lic["license_key"], "abc")
    assert again.status_code == 200
    assert again.json()["device_id"] == first.json()["device_id"] and again.json()["newly_activated"] is False
    rows = await db.fetch("SELECT device_name, device_type FROM device_registrations WHERE license_id = $1",
                          lic["id"])
    assert [tuple(r) for r in rows] == [("Laptop", "macos")]


async def test_activate_refuses_beyond_device_limit_under_concurrency(
        client: httpx.AsyncClient, db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=4, concurrent_sessions_limit=1)
    replies = await asyncio.gather(*(activate(client, lic["license_key"], f"d{i}") for i in range(60)))
    assert sorted(r.status_code for r in replies) == [201] * 4 + [409] * 56
    assert {r.json()["error"]["code"] for r in replies if r.status_code == 409} == {"DEVICE_LIMIT_REACHED"}
    assert await db.fetchval("SELECT count(*) FROM device_registrations WHERE license_id = $1 AND is_active",
                             lic["id"]) == 4


async def test_activate_refuses_unknown_suspended_and_expired(client: httpx.AsyncClient,
                                                              make_license: Callable[..., Any]) -> None:
    r = await activate(client, "HL-NOT-A-LICENSE", "abc")
    assert r.status_code == 404 and r.json()["error"]["code"] == "LICENSE_NOT_FOUND"
    suspended = await make_license(status="suspended")
    r = await activate(client, suspended["license_key"], "abc")
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_SUSPENDED"
    import datetime as dt
    now = dt.datetime.now(dt.UTC)
    expired = await make_license(valid_from=now - dt.timedelta(days=9), valid_until=now - dt.timedelta(days=1))
    r = await activate(client, expired["license_key"], "abc")
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_EXPIRED"


async def test_deactivate_ends_the_device_session_and_frees_a_device_slot(
        client: httpx.AsyncClient, db: asyncpg.Connection, redis: aioredis.Redis, edge_settings: Settings,
        make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    r = await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "old"})
    token = r.json()["session_token"]
    assert (await activate(client, lic["license_key"], "new")).json()["error"]["code"] == "DEVICE_LIMIT_REACHED"

    r = await deactivate(client, lic["license_key"], "old")
    assert r.status_code == 200 and r.json() == {"hardware_fingerprint": "old", "deactivated": True,
                                                 "sessions_ended": 1}
    row = found(await db.fetchrow("SELECT is_active, deactivated_at, deactivation_reason FROM device_registrations "
                            "WHERE license_id = $1 AND hardware_fingerprint = 'old'", lic["id"]))
    assert row["is_active"] is False and row["deactivated_at"] is not None
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    events = [session_event_from_fields(shard, i, f) for i, f in await redis.xrange(keys.event_stream(shard))]
    assert [(e.session_token, e.reason) for e in events if e.kind is SessionEventKind.ENDED] == [
        (token, EndReason.DEVICE_DEACTIVATED)]
    hb = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]})
    assert hb.status_code == 404 and hb.json()["error"]["code"] == "SESSION_NOT_FOUND"
    assert (await activate(client, lic["license_key"], "new")).status_code == 201


async def test_deactivated_device_cannot_start_until_reactivated(client: httpx.AsyncClient,
                                                                 make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    await activate(client, lic["license_key"], "a")
    await deactivate(client, lic["license_key"], "a")
    await activate(client, lic["license_key"], "b")
    r = await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "a"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_LIMIT_REACHED"


async def test_deactivate_unknown_device_is_device_not_found(client: httpx.AsyncClient,
                                                             make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    r = await deactivate(client, lic["license_key"], "never-seen")
    assert r.status_code == 404 and r.json()["error"]["code"] == "DEVICE_NOT_FOUND"
    await activate(client, lic["license_key"], "x")
    assert (await deactivate(client, lic["license_key"], "x")).status_code == 200
    assert (await deactivate(client, lic["license_key"], "x")).json()["error"]["code"] == "DEVICE_NOT_FOUND"


async def test_device_deactivated_in_postgres_is_seen_by_the_edge(
        client: httpx.AsyncClient, db: asyncpg.Connection, license_with_devices: Callable[..., Any],
        redis: aioredis.Redis, edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1, device_limit=1, concurrent_sessions_limit=1)
    assert (await client.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                    "hardware_fingerprint": "fp0"})).status_code == 201
    # An admin deactivates with psql, bypassing the edge: the poll picks it up from the audit log.
    await db.execute("UPDATE device_registrations SET is_active = false, deactivated_at = now() "
                     "WHERE license_id = $1", lic["id"])
    live_key = keys.live_sessions(lic["id"], edge_settings.stream_shards)
    for _ in range(100):
        if await redis.zcard(live_key) == 0:
            break
        await asyncio.sleep(0.05)
    assert await redis.zcard(live_key) == 0
    assert not await cast("Awaitable[bool]", redis.hexists(keys.devices(lic["id"], edge_settings.stream_shards), "fp0"))
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    events = [session_event_from_fields(shard, i, f) for i, f in await redis.xrange(keys.event_stream(shard))]
    assert [e.reason for e in events if e.kind is SessionEventKind.ENDED] == [EndReason.DEVICE_DEACTIVATED]
    r = await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "fp0"})
    assert r.status_code == 201, "the device slot is free again, so fp0 is activated anew on the fly"
