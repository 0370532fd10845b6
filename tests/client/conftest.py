"""Fixtures for the client library against a real edge (and worker) process on PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from client_support import ServerProcess
from heartline_client import KeySet

from heartline.settings import Settings


@pytest.fixture
def client_settings(settings: Settings) -> Settings:
    return settings.replace(heartbeat_min_gap_ms=1500)


@pytest.fixture
def edge(client_settings: Settings, db: object, redis: object, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real edge on a free port; heartbeats closer than 1.5 s are refused with 429."""
    server = ServerProcess("edge", client_settings, tmp_path / "edge.log",
                           HEARTLINE_HEARTBEAT_MIN_GAP_MS=str(client_settings.heartbeat_min_gap_ms),
                           HEARTLINE_LICENSE_CACHE_S="0.2", HEARTLINE_SIGNING_KEY_REFRESH_S="0.2")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def worker(client_settings: Settings, edge: ServerProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess("worker", client_settings, tmp_path / "worker.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pinned(edge: ServerProcess) -> KeySet:
    """The edge's key set, as a vendor would ship it pinned in the program."""
    return KeySet.from_jwks(httpx.get(f"{edge.url}/v1/keys", timeout=10).content)


@pytest.fixture
async def api_key(db: object) -> str:
    from heartline.apikeys import create_api_key

    assert isinstance(db, asyncpg.Connection)
    return (await create_api_key(db, "client tests", created_by="tests")).key
