"""The license poll (LicenseCache.refresh_changed): each change is written into the plane once per edge,
however many overlapping polls read its audit row, and a change committed after a poll that could not
see it yet is still written at the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from heartline import db as hldb
from heartline.license_cache import LicenseCache
from heartline.plane.cached_license import CachedLicense
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings


@pytest.fixture
async def cache(settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis) -> AsyncIterator[LicenseCache]:
    """A license cache of its own (no edge, so no background poll races the test's polls)."""
    assert settings.redis_url and settings.database_url
    client = aioredis.Redis.from_url(settings.redis_url)
    pool = await hldb.create_pool(settings.database_url, actor="test", max_size=2)
    try:
        plane = SessionPlane(client, settings)
        await plane.load_scripts()
        yield LicenseCache(pool, plane, settings)
    finally:
        await pool.close()
        await client.aclose()


async def cached_status(cache: LicenseCache, license_id: int) -> str | None:
    cached = await cache.plane.cached_license(license_id)
    return None if cached is None else cached.status


async def test_a_change_is_written_once_across_overlapping_polls(
        cache: LicenseCache, make_license: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic = await make_license()
    # the first poll looks back 10 s: the new license is in its window
    assert await cache.refresh_changed() == 1
    assert await cached_status(cache, lic["id"]) == "active"
    # the next polls read the same audit rows again (their windows overlap by 10 s) and write nothing
    assert await cache.refresh_changed() == 0
    assert await cache.refresh_changed() == 0

    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    assert await cache.refresh_changed() == 1
    assert await cached_status(cache, lic["id"]) == "suspended"
    assert await cache.refresh_changed() == 0
    # a later change to the same license is written again
    await db.execute("UPDATE licenses SET status = 'active' WHERE id = $1", lic["id"])
    assert await cache.refresh_changed() == 1
    assert await cached_status(cache, lic["id"]) == "active"


async def test_a_change_committed_after_a_poll_is_written_at_the_next(
        cache: LicenseCache, make_license: Callable[..., Any], database_url: str) -> None:
    lic = await make_license()
    assert await cache.refresh_changed() == 1
    late = await hldb.connect(database_url, actor="test")
    try:
        # The audit row carries the transaction's start time, before the poll below runs: a poll that
        # went by time alone would take it for a row it had already read.
        async with late.transaction():
            await late.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
            # not committed yet: invisible.  (A poll that reloaded this license now would wait for the
            # row's lock, FOR SHARE, until this transaction ends: bounded, so that fails instead of hanging.)
            assert await asyncio.wait_for(cache.refresh_changed(), timeout=10) == 0
            assert await cached_status(cache, lic["id"]) == "active"
    finally:
        await late.close()
    assert await cache.refresh_changed() == 1
    assert await cached_status(cache, lic["id"]) == "suspended"
    assert await cache.refresh_changed() == 0


async def test_a_product_change_writes_each_of_its_licenses_once(
        cache: LicenseCache, make_license: Callable[..., Any], db: asyncpg.Connection) -> None:
    product = "refresh-test"
    ids = [(await make_license(product=product))["id"] for _ in range(3)]
    other = await make_license(product="another")
    assert await cache.refresh_changed() == 4
    entitlement = await db.fetchval("INSERT INTO entitlements (code, name) VALUES ('export', 'Export') RETURNING id")
    await db.execute("INSERT INTO product_entitlements (product, entitlement_id) VALUES ($1, $2)", product,
                     entitlement)
    assert await cache.refresh_changed() == 3
    assert await cache.refresh_changed() == 0
    for license_id in ids:
        cached = await cache.plane.cached_license(license_id)
        assert cached is not None and cached.entitlements == ("export",)
    cached = await cache.plane.cached_license(other["id"])
    assert cached is not None and cached.entitlements == ()


class HeldPlane(SessionPlane):
    """The real plane, whose next license write waits until the test lets it go: a load that read
    PostgreSQL before a change is still running when the poll finds the change."""

    hold: asyncio.Event | None = None
    reached: asyncio.Event | None = None

    async def cache_license(self, license: CachedLicense, devices: dict[str, int]) -> bool:
        hold, reached = self.hold, self.reached
        if hold is not None and reached is not None:
            self.hold = self.reached = None
            reached.set()
            await hold.wait()
        return await super().cache_license(license, devices)


async def test_the_poll_does_not_take_a_load_that_read_before_the_change(
        cache: LicenseCache, make_license: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic = await make_license()
    device = await db.fetchval("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                               "VALUES ($1, 'fp-held') RETURNING id", lic["id"])
    plane = HeldPlane(cache.plane.redis, cache.settings)
    await plane.load_scripts()
    cache.plane = plane
    assert await cache.refresh_changed() == 1
    assert await plane.cached_device(lic["id"], "fp-held") == device

    # a read-through load (a request's cache miss) reads the device as active, then its write waits
    plane.hold, plane.reached = asyncio.Event(), asyncio.Event()
    hold, reached = plane.hold, plane.reached
    early = asyncio.create_task(cache.load(lic["id"]))
    await asyncio.wait_for(reached.wait(), timeout=10)
    # the device is deactivated (no change to the license's row, so its version stays), and the poll
    # finds that change while the early load still holds its copy from before
    await db.execute("UPDATE device_registrations SET is_active = false, deactivated_at = now() WHERE id = $1",
                     device)
    poll = asyncio.create_task(cache.refresh_changed())

    async def found() -> None:  # the poll has read the change and goes on to reload the license
        while lic["id"] not in cache._pending:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(found(), timeout=10)
    await asyncio.sleep(0.05)  # (it reaches the running load within a loop turn or two)
    hold.set()
    await asyncio.wait_for(early, timeout=10)
    assert await asyncio.wait_for(poll, timeout=10) == 1
    assert await plane.cached_device(lic["id"], "fp-held") is None
