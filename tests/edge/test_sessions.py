"""POST /v1/sessions and /end: start, resume, limits under concurrency, timeouts, deactivation, suspension."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from shared_support import found

from heartline.plane import keys
from heartline.plane.events import EndReason, SessionEventKind, session_event_from_fields
from heartline.settings import Settings


async def start(client: httpx.AsyncClient, license_key: str, fingerprint: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/sessions", json={"license_key": license_key,
                                                   "hardware_fingerprint": fingerprint, **extra})


async def live_count(redis: aioredis.Redis, settings: Settings, license_id: int) -> int:
    return int(await redis.zcard(keys.live_sessions(license_id, settings.stream_shards)))


async def ended_events(redis: aioredis.Redis, settings: Settings, license_id: int) -> list[Any]:
    shard = keys.shard_of(license_id, settings.stream_shards)
    events = [session_event_from_fields(shard, eid, f)
              for eid, f in await redis.xrange(keys.event_stream(shard))]
    return [e for e in events if e.kind is SessionEventKind.ENDED and e.license_id == license_id]


async def test_start_then_same_device_resumes_same_token(client: httpx.AsyncClient,
                                                         license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    first = await start(client, lic["license_key"], "fp0", client_version="2.1")
    assert first.status_code == 201
    body = first.json()
    assert body["resumed"] is False and body["heartbeat_interval_s"] == 30 and body["heartbeat_timeout_s"] == 60
    again = await start(client, lic["license_key"], "fp0")
    assert again.status_code == 200
    assert again.json()["resumed"] is True and again.json()["session_token"] == body["session_token"]


async def test_start_activates_unknown_device_on_the_fly(client: httpx.AsyncClient, db: asyncpg.Connection,
                                                         make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=2, concurrent_sessions_limit=2)
    r = await start(client, lic["license_key"], "new-box", device_name="Lab PC", device_type="windows")
    assert r.status_code == 201
    row = found(await db.fetchrow("SELECT device_name, device_type, is_active FROM device_registrations "
                            "WHERE license_id = $1 AND hardware_fingerprint = 'new-box'", lic["id"]))
    assert dict(row) == {"device_name": "Lab PC", "device_type": "windows", "is_active": True}
    audit = await db.fetchval("SELECT actor FROM audit_log WHERE table_name = 'device_registrations'")
    assert audit == "edge"


async def test_start_refuses_when_device_limit_reached(client: httpx.AsyncClient,
                                                       license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=2)
    r = await start(client, lic["license_key"], "third")
    assert r.status_code == 409 and r.json()["error"]["code"] == "DEVICE_LIMIT_REACHED"


async def test_start_refuses_unknown_license(client: httpx.AsyncClient) -> None:
    r = await start(client, "HL-NOPE-NOPE-NOPE", "fp0")
    assert r.status_code == 404 and r.json()["error"]["code"] == "LICENSE_NOT_FOUND"


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_race_ten_devices_fifty_starts_each_three_sessions(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], plane_client: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=10, device_limit=10, concurrent_sessions_limit=3)
    fingerprints = [f"fp{i}" for i in range(10) for _ in range(50)]
    replies = await asyncio.gather(*(start(client, lic["license_key"], fp) for fp in fingerprints))
    by_device: dict[str, list[httpx.Response]] = {}
    for fp, reply in zip(fingerprints, replies, strict=True):
        by_device.setdefault(fp, []).append(reply)
    winners = {fp for fp, rs in by_device.items() if any(r.status_code in (200, 201) for r in rs)}
    assert len(winners) == 3
    for fp, rs in by_device.items():
        if fp in winners:
            tokens = {r.json()["session_token"] for r in rs}
            assert len(tokens) == 1, "a device that got a session always gets the same token back"
            assert sorted(r.status_code for r in rs) == [200] * 49 + [201]
            assert all(r.json()["resumed"] for r in rs if r.status_code == 200)
        else:
            assert {(r.status_code, r.json()["error"]["code"]) for r in rs} == {(409, "SESSION_LIMIT_REACHED")}
    assert await live_count(plane_client, edge_settings, lic["id"]) == 3
    assert await ended_events(plane_client, edge_settings, lic["id"]) == []


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_race_five_hundred_unknown_devices(client: httpx.AsyncClient, make_license: Callable[..., Any],
                                                 db: asyncpg.Connection, plane_client: aioredis.Redis,
                                                 edge_settings: Settings) -> None:
    """Three sessions granted; every other start refused for the session limit, and only the three
    devices that got a session were activated (a refused start takes no device slot)."""
    lic = await make_license(device_limit=10, concurrent_sessions_limit=3)
    replies = await asyncio.gather(*(start(client, lic["license_key"], f"box-{i}") for i in range(500)))
    outcomes = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in replies)
    assert outcomes == {(201, None): 3, (409, "SESSION_LIMIT_REACHED"): 497}
    active = await db.fetch("SELECT hardware_fingerprint FROM device_registrations "
                            "WHERE license_id = $1 AND is_active", lic["id"])
    winners = {f"box-{i}" for i, r in enumerate(replies) if r.status_code == 201}
    assert {r["hardware_fingerprint"] for r in active} == winners
    assert await db.fetchval("SELECT count(*) FROM device_registrations WHERE license_id = $1", lic["id"]) == 3
    assert await live_count(plane_client, edge_settings, lic["id"]) == 3


async def test_race_five_hundred_unknown_devices_with_the_device_limit_binding(
        client: httpx.AsyncClient, make_license: Callable[..., Any], db: asyncpg.Connection,
        redis: aioredis.Redis, edge_settings: Settings) -> None:
    lic = await make_license(device_limit=3, concurrent_sessions_limit=3)
    replies = await asyncio.gather(*(start(client, lic["license_key"], f"box-{i}") for i in range(500)))
    outcomes = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in replies)
    assert outcomes == {(201, None): 3, (409, "DEVICE_LIMIT_REACHED"): 497}
    assert await db.fetchval("SELECT count(*) FROM device_registrations WHERE license_id = $1", lic["id"]) == 3
    assert await live_count(redis, edge_settings, lic["id"]) == 3


async def test_a_start_refused_for_the_session_limit_takes_no_device_slot(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic, _ = await license_with_devices(devices=1, device_limit=3, concurrent_sessions_limit=1)
    first = await start(client, lic["license_key"], "fp0")
    assert first.status_code == 201
    for i in range(5):
        refused = await start(client, lic["license_key"], f"stranger-{i}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "SESSION_LIMIT_REACHED"
    assert await db.fetchval("SELECT count(*) FROM device_registrations WHERE license_id = $1", lic["id"]) == 1
    ended = await client.post(f"/v1/sessions/{first.json()['session_token']}/end",
                              json={"license_key": lic["license_key"]})
    assert ended.status_code == 200
    late = await start(client, lic["license_key"], "stranger-0", device_name="Late PC")
    assert late.status_code == 201
    assert await db.fetchval("SELECT device_name FROM device_registrations WHERE license_id = $1 AND "
                             "hardware_fingerprint = 'stranger-0' AND is_active", lic["id"]) == "Late PC"
    again = await start(client, lic["license_key"], "stranger-0")
    assert again.status_code == 200 and again.json()["session_token"] == late.json()["session_token"]


async def test_missed_heartbeats_free_the_slot_after_timeout(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], redis: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=1,
                                        heartbeat_interval_s=1, heartbeat_timeout_s=2)
    first = await start(client, lic["license_key"], "fp0")
    assert first.status_code == 201 and first.json()["heartbeat_timeout_s"] == 2
    refused = await start(client, lic["license_key"], "fp1")
    assert refused.json()["error"]["code"] == "SESSION_LIMIT_REACHED"
    await asyncio.sleep(2.1)
    second = await start(client, lic["license_key"], "fp1")
    assert second.status_code == 201
    [ended] = await ended_events(redis, edge_settings, lic["id"])
    assert ended.session_token == first.json()["session_token"] and ended.reason is EndReason.TIMEOUT
    assert await live_count(redis, edge_settings, lic["id"]) == 1


async def test_end_session_frees_the_slot(client: httpx.AsyncClient, license_with_devices: Callable[..., Any],
                                          redis: aioredis.Redis, edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=1)
    token = (await start(client, lic["license_key"], "fp0")).json()["session_token"]
    r = await client.post(f"/v1/sessions/{token}/end", json={"license_key": lic["license_key"]})
    assert r.status_code == 200 and r.json() == {"ended": True}
    again = await client.post(f"/v1/sessions/{token}/end", json={"license_key": lic["license_key"]})
    assert again.status_code == 404 and again.json()["error"]["code"] == "SESSION_NOT_FOUND"
    assert (await start(client, lic["license_key"], "fp1")).status_code == 201
    [ended] = await ended_events(redis, edge_settings, lic["id"])
    assert ended.reason is EndReason.CLIENT_END


async def test_end_with_another_license_key_is_not_found(client: httpx.AsyncClient,
                                                         license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    other, _ = await license_with_devices(devices=1)
    token = (await start(client, lic["license_key"], "fp0")).json()["session_token"]
    r = await client.post(f"/v1/sessions/{token}/end", json={"license_key": other["license_key"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"


async def test_start_refuses_suspended_and_expired_licenses(client: httpx.AsyncClient,
                                                            license_with_devices: Callable[..., Any]) -> None:
    suspended, _ = await license_with_devices(devices=1, status="suspended")
    r = await start(client, suspended["license_key"], "fp0")
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_SUSPENDED"
    expired, _ = await license_with_devices(devices=1, valid_from=_ago(days=30), valid_until=_ago(days=1))
    r = await start(client, expired["license_key"], "fp0")
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_EXPIRED"
    revoked, _ = await license_with_devices(devices=0, status="revoked")
    r = await start(client, revoked["license_key"], "fp0")
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_REVOKED"


async def test_suspension_in_postgres_ends_live_sessions(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], db: asyncpg.Connection,
        redis: aioredis.Redis, edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=2)
    tokens = [(await start(client, lic["license_key"], fp)).json()["session_token"] for fp in ("fp0", "fp1")]
    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    await _until(lambda: live_count(redis, edge_settings, lic["id"]), 0)
    ended = await ended_events(redis, edge_settings, lic["id"])
    assert sorted(e.session_token for e in ended) == sorted(tokens)
    assert {e.reason for e in ended} == {EndReason.LICENSE_SUSPENDED}
    r = await client.post(f"/v1/sessions/{tokens[0]}/heartbeat", json={"license_key": lic["license_key"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_SUSPENDED"


async def _until(probe: Callable[[], Any], expected: Any, timeout: float = 5.0) -> None:
    """Wait for an eventually-consistent effect (the license poll), failing after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await probe()) != expected:
        assert loop.time() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.05)


def _ago(**delta: float) -> Any:
    import datetime as dt
    return dt.datetime.now(dt.UTC) - dt.timedelta(**delta)


async def test_concurrent_ends_of_one_session_emit_one_event(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], redis: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = (await start(client, lic["license_key"], "fp0")).json()["session_token"]
    replies = await asyncio.gather(*(client.post(f"/v1/sessions/{token}/end", json={"license_key": lic["license_key"]})
                                     for _ in range(20)))
    assert sorted(r.status_code for r in replies) == [200] + [404] * 19
    assert len(await ended_events(redis, edge_settings, lic["id"])) == 1


async def test_plane_restarted_empty_means_session_not_found_then_a_fresh_start(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], redis: aioredis.Redis) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = (await start(client, lic["license_key"], "fp0")).json()["session_token"]
    await redis.flushdb()  # what a Redis restart without persistence leaves: no sessions, no scripts
    await redis.script_flush()
    r = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"
    again = await start(client, lic["license_key"], "fp0")
    assert again.status_code == 201 and again.json()["session_token"] != token
