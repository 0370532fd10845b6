"""Fixtures for deployment tests: a database of their own on the test server, for backups to restore into."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from heartline.migrations import migrate
from heartline.settings import Settings


def url_for_database(url: str, name: str) -> str:
    """The same server URL, naming another database (query string kept)."""
    head, _, query = url.partition("?")
    scheme, rest = head.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{name}" + (f"?{query}" if query else "")


async def _recreate(server_url: str, name: str, *, drop_only: bool = False) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
def backup_database_url(service_urls: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[str]:
    """A freshly migrated database of this test alone, dropped afterwards: restores never hit the shared one."""
    name = f"heartline_backup_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    server = service_urls[0]
    asyncio.run(_recreate(server, name))
    url = url_for_database(server, name)
    asyncio.run(migrate(url))
    yield url
    asyncio.run(_recreate(server, name, drop_only=True))


@pytest.fixture
def empty_database_url(service_urls: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[str]:
    """A database with nothing in it (not even migrations), dropped afterwards."""
    name = f"heartline_empty_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    asyncio.run(_recreate(service_urls[0], name))
    yield url_for_database(service_urls[0], name)
    asyncio.run(_recreate(service_urls[0], name, drop_only=True))


@pytest.fixture
def backup_settings(backup_database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=backup_database_url, redis_url=redis_url, data_dir=tmp_path / "data",
                    backup_dir=tmp_path / "backups", backup_keep_local=2)
