"""PostgreSQL access shared by edge and worker: pools whose connections carry the audit actor."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg

# A connection of its own (connect) or one acquired from a pool (pool.acquire()).
Conn: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"


def actor_settings(actor: str) -> dict[str, str]:
    """Startup settings that make every statement on the connection audit as `actor` (sql/0001).

    Sent at connect time, so the value survives the RESET ALL that asyncpg runs when a pooled
    connection is released.
    """
    return {"heartline.actor": actor, "timezone": "UTC"}


async def create_pool(dsn: str, *, actor: str, min_size: int = 1, max_size: int = 10,
                      **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     server_settings=actor_settings(actor), **kwargs)
    assert pool is not None
    return pool


async def connect(dsn: str, *, actor: str, **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings=actor_settings(actor), **kwargs)
