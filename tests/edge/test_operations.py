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
    health = (await client.get("/healthz")).json()
    assert health["status"] == "ok" and set(health) == {"status", "checks"}
    assert set(health["checks"]) == {"database", "redis", "signing"}
    for name in ("database", "redis"):
        check = health["checks"][name]
        assert check["status"] == "ok" and check["latency_ms"] >= 0 and "detail" not in check
    assert health["checks"]["signing"]["status"] == "ok"
    assert health["checks"]["signing"]["detail"].startswith("kid ")
    r = await client.get("/readyz")
    body = r.json()
    assert r.status_code == 200 and (body["status"], body["redis"], body["database"]) == ("ready", True, True)
    assert body["checks"]["redis"]["status"] == "ok"


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
        assert ready.json()["checks"]["redis"]["status"] == "down"
        # liveness stays 200 (a restart would not bring Redis back) and says what is wrong
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["checks"]["redis"]["status"] == "down"
        assert health.json()["checks"]["redis"]["detail"].startswith("unreachable")
        assert health.json()["checks"]["database"]["status"] == "ok"


async def test_healthz_reports_postgres_and_signing_key_down_and_stays_200(edge_settings: Settings) -> None:
    app = create_app(edge_settings.replace(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "degraded"
        assert body["checks"]["database"]["status"] == "down"
        assert body["checks"]["redis"]["status"] == "ok"
        assert body["checks"]["signing"] == {
            "status": "down", "detail": "signing key not loaded yet: answers go out unsigned"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] is False


async def test_healthz_says_signing_is_off_when_answers_are_unsigned(edge_settings: Settings) -> None:
    app = create_app(edge_settings.replace(sign_answers=False))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
        body = (await http.get("/healthz")).json()
        assert body["status"] == "ok" and body["checks"]["signing"]["status"] == "off"
