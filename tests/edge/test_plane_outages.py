"""The plane unreachable or restarting: while Redis loads its data every call answers 503
PLANE_UNAVAILABLE with Retry-After, and an edit made while Redis was unreachable still reaches the edge's
cache once it is back."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from redis_process import RedisProcess
from worker_support import TcpProxy, eventually

from edge.app import create_app
from heartline.settings import Settings


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
async def test_redis_loading_after_a_restart_answers_503_plane_unavailable(
        edge_settings: Settings, api_key: str, make_license: Callable[..., Any], own_redis: RedisProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    lic = await make_license()
    # 2000 keys of 10 kB, 5 ms each: some ten seconds of LOADING, time enough for the calls below
    own_redis.loading(keys=2000, value_bytes=10_000, delay_us=5000)
    app = create_app(edge_settings.replace(redis_url=own_redis.url))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        key = {"license_key": lic["license_key"]}
        device = {**key, "hardware_fingerprint": "box"}
        answers = [
            await http.post(f"/v1/sessions/{uuid.uuid4()}/heartbeat", json=key),
            await http.post("/v1/sessions", json=device),
            await http.post("/v1/licenses/validate", json=device),
            await http.post(f"/v1/sessions/{uuid.uuid4()}/end", json=key),
        ]
    for r in answers:
        assert (r.status_code, r.json()["error"]["code"]) == (503, "PLANE_UNAVAILABLE"), (r.request.url, r.text)
        assert r.headers["Retry-After"] == "1"
    assert not [rec for rec in caplog.records if rec.exc_info]


async def test_a_suspension_made_while_redis_was_unreachable_is_enforced_once_it_is_back(
        edge_settings: Settings, api_key: str, license_with_devices: Callable[..., Any],
        db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    # `redis` empties the plane: `db` restarts the ids, so an earlier test's live session of license 1's
    # device fp0 would otherwise be resumed (200) instead of started (201)
    lic, _ = await license_with_devices(devices=1)
    host, port = edge_settings.redis_url.split("//", 1)[1].split("/", 1)[0].split(":")  # type: ignore[union-attr]
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    db_number = edge_settings.redis_url.rsplit("/", 1)[1]  # type: ignore[union-attr]
    app = create_app(edge_settings.replace(redis_url=f"redis://127.0.0.1:{proxy.port}/{db_number}"))
    body = {"license_key": lic["license_key"], "hardware_fingerprint": "fp0"}
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://edge",
                headers={"X-API-Key": api_key}) as http:
            # the poll looks back a tenth of a second beyond its previous run instead of ten seconds,
            # so an outage of a second outlasts the overlap as a long one does in production
            app.state.edge.licenses.poll_overlap = dt.timedelta(seconds=0.1)
            assert (await http.post("/v1/sessions", json=body)).status_code == 201
            await proxy.cut()
            await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
            await asyncio.sleep(1.5)  # several polls (every 0.2 s) fail while Redis is unreachable
            await proxy.start()

            async def refused() -> bool:
                r = await http.post("/v1/sessions", json=body)
                return r.status_code == 403 and r.json()["error"]["code"] == "LICENSE_SUSPENDED"

            await eventually(refused, timeout=5)
    finally:
        await proxy.cut()
