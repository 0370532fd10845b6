"""Heartbeats take the fast path ahead of the router, and keep the metrics and error answers of the rest."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from edge.app import create_app
from heartline.devstack import free_port
from heartline.settings import Settings

ROUTE = "/v1/sessions/{token}/heartbeat"


def _count(text: str, status: int) -> float:
    prefix = f'heartline_edge_requests_total{{method="POST",route="{ROUTE}",status="{status}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_heartbeats_are_counted_under_their_route_with_their_status(
        client: httpx.AsyncClient, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    body = {"license_key": lic["license_key"]}
    token = (await client.post("/v1/sessions", json={**body, "hardware_fingerprint": "fp"})).json()["session_token"]
    assert (await client.post(f"/v1/sessions/{token}/heartbeat", json=body)).status_code == 200
    assert (await client.post(f"/v1/sessions/{token}/heartbeat", json=body)).status_code == 200
    missing = await client.post(f"/v1/sessions/{uuid.uuid4()}/heartbeat", json=body)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SESSION_NOT_FOUND"
    bad = await client.post("/v1/sessions/not-a-uuid/heartbeat", json=body)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_SESSION_TOKEN"
    text = (await client.get("/metrics")).text
    assert (_count(text, 200), _count(text, 404), _count(text, 422)) == (2.0, 1.0, 1.0)
    assert 'heartline_edge_refusals_total{code="SESSION_NOT_FOUND"} 1.0' in text
    assert f'heartline_edge_request_duration_seconds_count{{method="POST",route="{ROUTE}",status="200"}} 2.0' \
        in text


async def test_paths_near_the_heartbeat_still_go_through_the_router(client: httpx.AsyncClient) -> None:
    token = uuid.uuid4()
    wrong_method = await client.get(f"/v1/sessions/{token}/heartbeat")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    nested = await client.post(f"/v1/sessions/{token}/x/heartbeat", json={})
    assert nested.status_code == 404 and nested.json()["error"]["code"] == "NOT_FOUND"
    empty = await client.post("/v1/sessions//heartbeat", json={})
    assert empty.status_code == 404


async def test_heartbeat_with_redis_unreachable_gets_the_apps_503(
        edge_settings: Settings, api_key: str, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    app = create_app(edge_settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        r = await http.post(f"/v1/sessions/{uuid.uuid4()}/heartbeat", json={"license_key": lic["license_key"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "PLANE_UNAVAILABLE"
        assert r.headers["Retry-After"] == "1"
        # counted like every other answer (/metrics itself needs Redis for the live-session gauge)
        assert app.state.metrics.requests.labels(ROUTE, "POST", "503")._value.get() == 1.0


def test_a_tally_shows_at_scrape_what_observe_would_have_counted() -> None:
    import random
    import re

    from prometheus_client import generate_latest

    from edge.metrics import LATENCY_BUCKETS, EdgeMetrics

    observed, tallied = EdgeMetrics(), EdgeMetrics()
    rng = random.Random(16)
    # every bucket bound exactly (observe counts a value equal to a bound into that bound's bucket), zero,
    # values past the last bound, and values in between
    values = [*LATENCY_BUCKETS, 0.0, 3.0, 100.0, *(rng.random() * 0.3 for _ in range(2000))]
    tally = tallied.tally(ROUTE, "POST", 200)
    for i, seconds in enumerate(values):
        observed.observe(ROUTE, "POST", 200, seconds)
        tally.add(seconds)
        if i % 500 == 0:  # scrapes in between: each moves what was counted so far
            generate_latest(tallied.registry)

    def text(metrics: EdgeMetrics) -> str:
        # _created is when each series was made: not the same instant in two registries
        return re.sub(r"^\S+_created\{.*\n", "", generate_latest(metrics.registry).decode(), flags=re.MULTILINE)

    def parsed(metrics: EdgeMetrics) -> dict[str, float]:
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text(metrics).splitlines() if line and not line.startswith("#")}

    expected, got = parsed(observed), parsed(tallied)
    assert expected.keys() == got.keys()
    for series, value in expected.items():  # the sum may differ in its last bits (added in another order)
        assert got[series] == pytest.approx(value, rel=1e-12), series
    assert f'heartline_edge_requests_total{{method="POST",route="{ROUTE}",status="200"}} {float(len(values))}' \
        in text(tallied)


def test_a_tally_series_appears_with_its_first_count_as_with_observe() -> None:
    from prometheus_client import generate_latest

    from edge.metrics import EdgeMetrics

    metrics = EdgeMetrics()
    tally = metrics.tally(ROUTE, "POST", 200)
    series = f'heartline_edge_requests_total{{method="POST",route="{ROUTE}",status="200"}}'
    assert series not in generate_latest(metrics.registry).decode()
    tally.add(0.001)
    assert f"{series} 1.0" in generate_latest(metrics.registry).decode()
    assert f"{series} 1.0" in generate_latest(metrics.registry).decode()  # moved once, not counted again
