"""POST /v1/sessions/{token}/heartbeat: extension, rate limit, refusals, per-license overrides."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from edge.app import create_app
from heartline.plane import keys
from heartline.plane.events import (
    EndReason,
    SessionEventKind,
    heartbeat_from_fields,
    session_event_from_fields,
)
from heartline.settings import Settings


async def open_session(client: httpx.AsyncClient, license_key: str, fingerprint: str = "fp0") -> str:
    r = await client.post("/v1/sessions", json={"license_key": license_key, "hardware_fingerprint": fingerprint})
    assert r.status_code == 201, r.text
    return str(r.json()["session_token"])


async def beat(client: httpx.AsyncClient, token: str, license_key: str) -> httpx.Response:
    return await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": license_key})


async def test_heartbeat_extends_session_and_records_event(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], redis: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic, devices = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    r = await beat(client, token, lic["license_key"])
    assert r.status_code == 200
    body = r.json()
    assert body["next_heartbeat_in_s"] == 30
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(seconds=55) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=61)
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    [(eid, fields)] = await redis.xrange(keys.heartbeat_stream(shard))
    event = heartbeat_from_fields(shard, eid, fields)
    assert (event.license_id, event.session_token, event.device_id) == (lic["id"], token, devices["fp0"])


async def test_heartbeat_uses_per_license_interval_and_timeout(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, heartbeat_interval_s=5, heartbeat_timeout_s=12)
    token = await open_session(client, lic["license_key"])
    r = await beat(client, token, lic["license_key"])
    assert r.json()["next_heartbeat_in_s"] == 5
    expires = dt.datetime.fromisoformat(r.json()["expires_at"])
    assert dt.timedelta(seconds=10) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=13)


async def test_heartbeat_of_unknown_token_is_session_not_found(client: httpx.AsyncClient,
                                                               make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    r = await beat(client, "6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11", lic["license_key"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"


async def test_heartbeat_with_non_uuid_token_is_refused(client: httpx.AsyncClient,
                                                        make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    for token in ("not-a-uuid", "1234", "%00", "' OR 1=1"):
        r = await beat(client, token, lic["license_key"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_SESSION_TOKEN", token


async def test_heartbeat_with_unknown_license_key_is_license_not_found(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    r = await beat(client, token, "HL-UNKNOWN-KEY")
    assert r.status_code == 404 and r.json()["error"]["code"] == "LICENSE_NOT_FOUND"


async def test_heartbeat_on_suspended_license_is_refused_and_ends_session(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], db: asyncpg.Connection,
        redis: aioredis.Redis, app: Starlette, edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    # Stop the poller from ending the session first: this test is about the heartbeat's own check.
    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    await app.state.edge.plane.invalidate_license(lic["id"])
    r = await beat(client, token, lic["license_key"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_SUSPENDED"
    assert not await app.state.edge.plane.is_live(lic["id"], token)
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    events = [session_event_from_fields(shard, i, f) for i, f in await redis.xrange(keys.event_stream(shard))]
    ended = [e for e in events if e.kind is SessionEventKind.ENDED]
    assert [(e.session_token, e.reason) for e in ended] == [(token, EndReason.LICENSE_SUSPENDED)]
    again = await beat(client, token, lic["license_key"])
    assert again.status_code == 403 and again.json()["error"]["code"] == "LICENSE_SUSPENDED"


async def test_heartbeat_after_expiry_is_refused_and_ends_session(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], db: asyncpg.Connection,
        redis: aioredis.Redis, app: Starlette, edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    await db.execute("UPDATE licenses SET valid_until = now() - interval '1 second', "
                     "valid_from = now() - interval '1 day' WHERE id = $1", lic["id"])
    await app.state.edge.licenses.refresh_changed()
    r = await beat(client, token, lic["license_key"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_EXPIRED"
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    events = [session_event_from_fields(shard, i, f) for i, f in await redis.xrange(keys.event_stream(shard))]
    assert [e.reason for e in events if e.kind is SessionEventKind.ENDED] == [EndReason.LICENSE_EXPIRED]


async def test_heartbeat_reloads_license_missing_from_cache(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], app: Starlette) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    await app.state.edge.plane.invalidate_license(lic["id"])
    assert (await beat(client, token, lic["license_key"])).status_code == 200
    assert await app.state.edge.plane.cached_license(lic["id"]) is not None


@pytest.fixture
async def gap_client(edge_settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis,
                     api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(edge_settings.replace(heartbeat_min_gap_ms=10_000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge",
            headers={"X-API-Key": api_key}) as http:
        yield http


async def test_too_frequent_heartbeat_gets_429_with_retry_after(
        gap_client: httpx.AsyncClient, license_with_devices: Callable[..., Any], redis: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(gap_client, lic["license_key"])
    r = await beat(gap_client, token, lic["license_key"])
    assert r.status_code == 429 and r.json()["error"]["code"] == "HEARTBEAT_TOO_FREQUENT"
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    assert await redis.xlen(keys.heartbeat_stream(shard)) == 0


async def test_heartbeats_need_no_postgres_once_warm(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], app: Starlette,
        edge_settings: Settings) -> None:
    lic, _ = await license_with_devices(devices=1)
    token = await open_session(client, lic["license_key"])
    assert (await beat(client, token, lic["license_key"])).status_code == 200
    await app.state.edge.pool.close()  # from here on every PostgreSQL query fails
    await asyncio.sleep(edge_settings.api_key_cache_s + 0.1)  # the API key's cache entry has expired too
    for _ in range(3):
        assert (await beat(client, token, lic["license_key"])).status_code == 200
    r = await client.post("/v1/licenses/validate", json={"license_key": "HL-NEVER-SEEN-KEY",
                                                         "hardware_fingerprint": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "DATABASE_UNAVAILABLE"


def test_the_answer_body_is_what_msgspec_writes_for_the_response_struct() -> None:
    from edge.heartbeats import AnswerBody
    from edge.schemas import HeartbeatResponse, encode, utc_from_ms

    body = AnswerBody()
    rng = random.Random(16)
    # deadlines are the Redis server's now plus a heartbeat timeout; up to 2100 (past ~2112, utc_from_ms's
    # float division is off by microseconds, where AnswerBody stays exact)
    deadlines = [0, 999, 1000, 1_764_536_400_000, 1_764_536_400_001, 1_764_536_400_010, 1_764_536_400_999,
                 4_102_444_799_999]
    deadlines += [rng.randrange(0, 4_102_444_800_000) for _ in range(3000)]
    for deadline_ms in deadlines:
        for interval_s, grace_s in ((30, 0), (1, 86_400), (3600, 7)):
            expected = encode(HeartbeatResponse(expires_at=utc_from_ms(deadline_ms), next_heartbeat_in_s=interval_s,
                                                offline_grace_s=grace_s))
            assert body(deadline_ms, interval_s, grace_s) == expected, deadline_ms


def test_canonical_and_other_uuid_spellings_become_the_same_token() -> None:
    from edge.errors import InvalidSessionToken
    from edge.heartbeats import session_token

    token = uuid.uuid4()
    for spelling in (str(token), str(token).upper(), token.hex, f"{{{token}}}", f"urn:uuid:{token}"):
        assert session_token(spelling) == str(token)
    for bad in ("", "not-a-uuid", str(token)[:-1], str(token) + "0"):
        with pytest.raises(InvalidSessionToken):
            session_token(bad)
