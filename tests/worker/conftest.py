"""Worker fixtures: the worker's real resources and loops, in-process, on the test servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from worker_support import LiveLicense

from edge.app import create_app
from heartline.apikeys import create_api_key
from heartline.license_cache import to_cached
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown, start_loops


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    """Short intervals and small batches, so a few hundred heartbeats make several batches."""
    return settings.replace(flush_interval_s=0.05, reap_interval_s=0.2, pending_claim_idle_s=1.0,
                            flush_batch_size=200, worker_metrics_port=0, reconcile_interval_s=0.2)


@pytest.fixture
async def worker_ctx(worker_settings: Settings, db: asyncpg.Connection,
                     plane_client: aioredis.Redis) -> AsyncIterator[dict[str, Any]]:
    """The worker's ctx with its resources open but no loop running (tests call the jobs)."""
    ctx: dict[str, Any] = {"settings": worker_settings, "consumer_name": f"test-{uuid.uuid4().hex[:8]}"}
    await open_resources(ctx)
    try:
        yield ctx
    finally:
        await shutdown(ctx)


@pytest.fixture
def run_loops(worker_ctx: dict[str, Any]) -> Callable[[], None]:
    """Start the worker's loops on worker_ctx (stopped by worker_ctx's teardown)."""
    return lambda: start_loops(worker_ctx)


@pytest.fixture
async def edge(worker_settings: Settings, worker_ctx: dict[str, Any], run_loops: Callable[[], None],
               db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """The edge app in process next to a running worker (the worker's loops started), and a client
    holding a valid API key."""
    key = await create_api_key(db, "worker-tests", created_by="tests")
    app = create_app(worker_settings)
    run_loops()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge",
            headers={"X-API-Key": key.key}) as client:
        yield client


@pytest.fixture
async def plane(plane_client: aioredis.Redis, worker_settings: Settings) -> SessionPlane:
    plane = SessionPlane(plane_client, worker_settings)
    await plane.load_scripts()
    return plane


@pytest.fixture
def live_license(db: asyncpg.Connection, make_license: Callable[..., Any], plane: SessionPlane,
                 worker_settings: Settings) -> Callable[..., Awaitable[LiveLicense]]:
    """Factory: a license with one active device, cached in the plane with `timeout_s` (seconds)."""
    async def make(timeout_s: int = 60, devices: int = 1, **fields: Any) -> LiveLicense:
        fields.setdefault("device_limit", max(3, devices))
        fields.setdefault("concurrent_sessions_limit", max(2, devices))
        row = await make_license(**fields)
        device_ids: dict[str, int] = {}
        for n in range(devices):
            fp = f"fp-{row['id']}-{n}"
            device_ids[fp] = await db.fetchval(
                "INSERT INTO device_registrations (license_id, hardware_fingerprint, device_name) "
                "VALUES ($1, $2, 'test box') RETURNING id", row["id"], fp)
        # Timeouts of a second or two, below what the licenses table allows, so timeouts are seen fast.
        cached = msgspec.structs.replace(to_cached(row, worker_settings), interval_s=max(1, timeout_s - 1),
                                         timeout_s=timeout_s)
        assert await plane.cache_license(cached, device_ids)
        fp, device_id = next(iter(device_ids.items()))
        return LiveLicense(row["id"], row["license_key"], device_id, fp)
    return make
