"""The plane's streams keep every unstored entry unless an operator caps them."""

from __future__ import annotations

import redis.asyncio as aioredis
from shared_support import found

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings

LICENSE_ID = 11


async def _heartbeats(redis: aioredis.Redis, settings: Settings, count: int) -> int:
    plane = SessionPlane(redis, settings)
    await plane.load_scripts()
    await plane.cache_license(
        CachedLicense(license_id=LICENSE_ID, version=1, status="active", valid_from_ms=0, valid_until_ms=None,
                      device_limit=1, sessions_limit=1, interval_s=30, timeout_s=60), {"fp": 1})
    started = await plane.start_session(LICENSE_ID, "fp")
    assert started.code is PlaneCode.STARTED
    for _ in range(count):
        assert (await plane.heartbeat(LICENSE_ID, found(started.token))).code is PlaneCode.OK
    shard = keys.shard_of(LICENSE_ID, settings.stream_shards)
    return int(await redis.xlen(keys.heartbeat_stream(shard)))


async def test_heartbeat_stream_is_never_trimmed_by_default(redis: aioredis.Redis, settings: Settings) -> None:
    # nobody drains the stream here: it stands for a worker that cannot reach PostgreSQL
    assert settings.stream_max_len == 0
    assert await _heartbeats(redis, settings, 1500) == 1500


async def test_a_positive_cap_trims_the_stream(redis: aioredis.Redis, settings: Settings) -> None:
    cap = 100
    kept = await _heartbeats(redis, settings.replace(stream_max_len=cap), 1500)
    assert cap <= kept < 1500
