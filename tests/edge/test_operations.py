"""/v1, /healthz, /readyz, /metrics and /v1/openapi.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from edge.app import create_app
from edge.routes import OPERATIONS
from heartline.devstack import free_port
from heartline.settings import Settings


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "redis": None, "database": None}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "redis": True, "database": True}


async def test_v1_answers_an_index_with_links_without_an_api_key(client: httpx.AsyncClient) -> None:
    index = await client.get("/v1", headers={"X-API-Key": ""})
    assert index.status_code == 200
    body = index.json()
    assert body["openapi"] == "/v1/openapi.json" and "docs/api.md" in body["docs"]
    assert "POST /v1/sessions" in body["calls"] and "POST /v1/sessions/{token}/heartbeat" in body["calls"]
    assert (await client.get(body["openapi"])).status_code == 200


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_metrics_count_requests_refusals_and_live_sessions(client: httpx.AsyncClient,
                                                                 make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=2, concurrent_sessions_limit=1)
    for fp in ("a", "b"):
        await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": fp})
    text = (await client.get("/metrics")).text
    assert 'heartline_edge_requests_total{method="POST",route="/v1/sessions",status="201"} 1.0' in text
    assert 'heartline_edge_requests_total{method="POST",route="/v1/sessions",status="409"} 1.0' in text
    assert 'heartline_edge_refusals_total{code="SESSION_LIMIT_REACHED"} 1.0' in text
    assert 'heartline_edge_request_duration_seconds_count{method="POST",route="/v1/sessions",status="201"} 1.0' \
        in text
    assert "heartline_live_sessions 1.0" in text


async def test_openapi_documents_every_call(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    for op in OPERATIONS:
        spec = doc["paths"][op.path][op.method.lower()]
        if op.authenticated:
            assert spec["security"] == [{"ApiKey": []}] and "401" in spec["responses"]
    start = doc["paths"]["/v1/sessions"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StartSessionRequest"}
    assert {"201", "200", "409", "403", "422"} <= set(start["responses"])
    assert "session_token" in doc["components"]["schemas"]["SessionResponse"]["properties"]


async def test_redis_unreachable_gives_503_and_unready(edge_settings: Settings, api_key: str,
                                                       make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    app = create_app(edge_settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        r = await http.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "PLANE_UNAVAILABLE"
        assert r.headers["Retry-After"] == "1"
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
