"""Property-based fuzzing of the edge from its own OpenAPI document (schemathesis): no 500, and every
answer matches the document (status code, content type, headers, body schema).

The edge runs in this process under uvicorn, in a thread with its own event loop, on the real
PostgreSQL and Redis; half of the generated bodies carry a real license key and session token so the
fuzzing reaches past the "not found" answers into activation, sessions and heartbeats.
"""

from __future__ import annotations

import asyncio
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edge.app import create_app
from edge.openapi import build_document
from heartline import db as hldb
from heartline.apikeys import create_api_key
from heartline.devstack import free_port
from heartline.license_keys import new_license_key
from heartline.settings import Settings

schema = schemathesis.openapi.from_dict(build_document())

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@dataclass(frozen=True)
class LiveEdge:
    base_url: str
    api_key: str
    license_key: str
    session_token: str


async def _seed(database_url: str) -> tuple[str, str]:
    conn = await hldb.connect(database_url, actor="test")
    try:
        customer = await conn.fetchval("INSERT INTO customers (name) VALUES ('fuzz') RETURNING id")
        license_key = new_license_key()
        await conn.execute("INSERT INTO licenses (customer_id, license_key, device_limit, concurrent_sessions_limit)"
                           " VALUES ($1, $2, 4, 2)", customer, license_key)
        return (await create_api_key(conn, "fuzz")).key, license_key
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def live_edge(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEdge]:
    settings = Settings(database_url=database_url, redis_url=redis_url, stream_shards=4,
                        data_dir=Path(tmp_path_factory.mktemp("fuzz")), heartbeat_min_gap_ms=500,
                        signing_key_secret=os.environ["HEARTLINE_SIGNING_KEY_SECRET"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning", access_log=False))
    seeded: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            seeded["keys"] = await _seed(database_url)
            await server.serve()
        asyncio.run(main())

    thread = threading.Thread(target=run, name="fuzz-edge", daemon=True)
    thread.start()
    import time

    import httpx
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the edge did not start"
        time.sleep(0.05)
    api_key, license_key = seeded["keys"]
    base = f"http://127.0.0.1:{port}"
    started = httpx.post(f"{base}/v1/sessions", headers={"X-API-Key": api_key},
                         json={"license_key": license_key, "hardware_fingerprint": "fuzz-device"})
    assert started.status_code == 201, started.text
    try:
        yield LiveEdge(base, api_key, license_key, started.json()["session_token"])
    finally:
        server.should_exit = True
        thread.join(15)


def _aim(case: Any, edge: LiveEdge) -> None:
    """Point about half of the cases at the real license and live session (chosen from the case itself,
    so a failing example replays the same way)."""
    seed = zlib.crc32(repr((case.body, case.path_parameters)).encode())
    if seed % 2 == 0 and isinstance(case.body, dict):
        case.body["license_key"] = edge.license_key
        if seed % 4 == 0 and case.path_parameters and "token" in case.path_parameters:
            case.path_parameters["token"] = edge.session_token
        if seed % 3 == 0 and "hardware_fingerprint" in case.body:
            case.body["hardware_fingerprint"] = "fuzz-2"


@schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_edge_answers_every_generated_request_as_documented(case: Any, live_edge: LiveEdge) -> None:
    _aim(case, live_edge)
    case.call_and_validate(base_url=live_edge.base_url, headers={"X-API-Key": live_edge.api_key}, checks=CHECKS)
