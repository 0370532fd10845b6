"""Fixtures for the edge: the app in process (lifespan running) on the real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from edge.app import create_app
from heartline.apikeys import create_api_key
from heartline.settings import Settings


@pytest.fixture
def edge_settings(settings: Settings) -> Settings:
    """Short caches so revocations and edits can be seen within a test."""
    return settings.replace(api_key_cache_s=0.5, license_cache_s=0.2)


@pytest.fixture
def make_api_key(db: asyncpg.Connection) -> Callable[..., Any]:
    """Factory: `await make_api_key("name")` -> NewApiKey (id, name, key)."""
    async def make(name: str = "tests") -> Any:
        return await create_api_key(db, name, created_by="tests")
    return make


@pytest.fixture
async def api_key(make_api_key: Callable[..., Any]) -> str:
    return str((await make_api_key()).key)


@pytest.fixture
async def app(edge_settings: Settings, db: asyncpg.Connection,
              plane_client: aioredis.Redis) -> AsyncIterator[Starlette]:
    """The edge app inside its lifespan (after the db/redis fixtures emptied both stores)."""
    application = create_app(edge_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Starlette, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the in-process edge, sending a valid API key."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge",
                                 headers={"X-API-Key": api_key}) as http:
        yield http


@pytest.fixture
def license_with_devices(make_license: Callable[..., Any], db: asyncpg.Connection) -> Callable[..., Any]:
    """Factory: a license plus `devices` activated devices fp0..fpN-1 -> (license row, {fp: device id})."""
    async def make(devices: int = 0, **fields: Any) -> tuple[dict[str, Any], dict[str, int]]:
        lic = await make_license(**fields)
        ids = {}
        for i in range(devices):
            ids[f"fp{i}"] = await db.fetchval(
                "INSERT INTO device_registrations (license_id, hardware_fingerprint, device_name) "
                "VALUES ($1, $2, $3) RETURNING id", lic["id"], f"fp{i}", f"device {i}")
        return lic, ids
    return make
