"""The edge's plane client takes its write batch from the settings (HEARTLINE_REDIS_WRITE_BATCH)."""

from __future__ import annotations

import asyncio
import dataclasses

from edge.app import create_app
from heartline.plane.redis.single import MultiplexedRedis
from heartline.settings import Settings


async def test_the_edge_writes_its_plane_commands_in_batches_of_the_setting(edge_settings: Settings) -> None:
    application = create_app(dataclasses.replace(edge_settings, redis_write_batch=3))
    async with application.router.lifespan_context(application):
        client = application.state.edge.plane.scripts.redis
        assert isinstance(client, MultiplexedRedis)
        assert client.write_batch == 3
        await client.ping()
        writes = client.writes
        assert await asyncio.gather(*(client.execute("PING") for _ in range(7))) == [b"PONG"] * 7
        assert client.writes - writes == 3  # two of 3 as they were made, the last one at the tick's end
