"""Refusals the edge decides from PostgreSQL are recorded as `refused` events of the plane; with the plane
unreachable at that moment the client still hears its refusal (the event is lost, and logged)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from worker_support import TcpProxy

from edge.app import create_app
from heartline.plane import keys
from heartline.plane.events import RefusalOperation, refusal_event_from_fields
from heartline.settings import Settings


async def activate(http: httpx.AsyncClient, key: str, fp: str) -> httpx.Response:
    return await http.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": fp})


async def test_a_refused_activation_is_one_refused_event(
        client: httpx.AsyncClient, make_license: Callable[..., Any], plane_client: aioredis.Redis,
        edge_settings: Settings) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    assert (await activate(client, lic["license_key"], "a")).status_code == 201
    refused = await activate(client, lic["license_key"], "b")
    assert refused.json()["error"]["code"] == "DEVICE_LIMIT_REACHED"
    shard = keys.shard_of(lic["id"], edge_settings.stream_shards)
    entries = [(i, f) for i, f in await plane_client.xrange(keys.event_stream(shard))
               if f.get(b"k") == b"refused"]
    assert len(entries) == 1
    event = refusal_event_from_fields(shard, *entries[0])
    assert (event.license_id, event.code, event.fingerprint, event.operation, event.device_id) == \
        (lic["id"], "DEVICE_LIMIT_REACHED", "b", RefusalOperation.ACTIVATE, None)


async def test_the_refusal_is_answered_while_the_plane_is_unreachable(
        edge_settings: Settings, api_key: str, make_license: Callable[..., Any], redis: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # `redis` empties the plane: license ids restart per test (an earlier test's cache of this id would
    # otherwise be served)
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    host, port = edge_settings.redis_url.split("//", 1)[1].split("/", 1)[0].split(":")  # type: ignore[union-attr]
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    db_number = edge_settings.redis_url.rsplit("/", 1)[1]  # type: ignore[union-attr]
    app = create_app(edge_settings.replace(redis_url=f"redis://127.0.0.1:{proxy.port}/{db_number}"))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://edge",
                headers={"X-API-Key": api_key}) as http:
            assert (await activate(http, lic["license_key"], "a")).status_code == 201
            await proxy.cut()
            refused = await activate(http, lic["license_key"], "b")
            assert (refused.status_code, refused.json()["error"]["code"]) == (409, "DEVICE_LIMIT_REACHED")
    finally:
        await proxy.cut()
    assert any("edge.refusal.not_recorded" in r.getMessage() for r in caplog.records)
