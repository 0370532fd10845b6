"""`heartline edge` as a real process: uvicorn serves the app, proxy headers only from trusted proxies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from heartline.devstack import free_port
from heartline.plane import keys
from heartline.plane.events import session_event_from_fields
from heartline.settings import Settings


def _serve(settings: Settings, **env: str) -> Iterator[str]:
    port = free_port()
    environ = dict(os.environ, HEARTLINE_DATABASE_URL=settings.database_url or "",
                   HEARTLINE_REDIS_URL=settings.redis_url or "", HEARTLINE_STREAM_SHARDS=str(settings.stream_shards),
                   HEARTLINE_LOG_LEVEL="WARNING", **env)
    proc = subprocess.Popen([sys.executable, "-m", "heartline", "edge", "--port", str(port)], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "edge exited"
            assert time.monotonic() < deadline, "edge did not answer /healthz"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def edge_process(settings: Settings) -> Iterator[str]:
    yield from _serve(settings)


@pytest.fixture
def untrusting_edge_process(settings: Settings) -> Iterator[str]:
    yield from _serve(settings, HEARTLINE_TRUSTED_PROXIES="192.0.2.1/32")


async def _started_ip(redis: aioredis.Redis, settings: Settings, license_id: int) -> str | None:
    shard = keys.shard_of(license_id, settings.stream_shards)
    [(eid, fields)] = await redis.xrange(keys.event_stream(shard))
    return session_event_from_fields(shard, eid, fields).client_ip


async def test_edge_process_serves_and_trusts_forwarded_for_from_local_proxy(
        edge_process: str, api_key: str, make_license: Callable[..., Any], redis: aioredis.Redis,
        settings: Settings) -> None:
    lic = await make_license()
    async with httpx.AsyncClient(base_url=edge_process, headers={"X-API-Key": api_key}) as http:
        r = await http.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "p"},
                            headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 201, r.text
        assert (await http.get("/readyz")).status_code == 200
    assert await _started_ip(redis, settings, lic["id"]) == "203.0.113.9"


async def test_forwarded_for_from_untrusted_peer_is_ignored(
        untrusting_edge_process: str, api_key: str, make_license: Callable[..., Any], redis: aioredis.Redis,
        settings: Settings) -> None:
    lic = await make_license()
    async with httpx.AsyncClient(base_url=untrusting_edge_process, headers={"X-API-Key": api_key}) as http:
        r = await http.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "p"},
                            headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 201, r.text
    assert await _started_ip(redis, settings, lic["id"]) == "127.0.0.1"
