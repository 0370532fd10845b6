"""The plane restarting: while Redis loads its data every call answers 503 PLANE_UNAVAILABLE with
Retry-After, on the heartbeat's fast path as on the router's calls."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_process import RedisProcess

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
