"""X-API-Key: missing, malformed, unknown and revoked keys are refused; use is recorded in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from edge.auth import ApiKeyGuard
from edge.errors import ApiKeyInvalid
from heartline import db as hldb
from heartline.apikeys import generate_key, revoke_api_key
from heartline.settings import Settings

BODY = {"license_key": "HL-AAAAA-BBBBB", "hardware_fingerprint": "fp"}


async def test_missing_key_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/licenses/validate", json=BODY, headers={"X-API-Key": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "API_KEY_MISSING"


async def test_malformed_and_unknown_keys_are_refused(client: httpx.AsyncClient) -> None:
    for key in ("nope", "AF-2026-short", generate_key()):
        r = await client.post("/v1/licenses/validate", json=BODY, headers={"X-API-Key": key})
        assert r.status_code == 401 and r.json()["error"]["code"] == "API_KEY_INVALID", key


async def test_every_client_call_needs_a_key(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as anonymous:
        for path in ("/v1/licenses/validate", "/v1/devices/activate", "/v1/devices/deactivate", "/v1/sessions",
                     "/v1/sessions/6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11/heartbeat",
                     "/v1/sessions/6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11/end", "/v1/licenses/resources"):
            r = await anonymous.post(path, json=BODY)
            assert r.status_code == 401, path


async def test_revoked_key_stops_working_within_cache_time(client: httpx.AsyncClient, db: asyncpg.Connection,
                                                           make_api_key: Callable[..., Any],
                                                           make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    doomed = await make_api_key("doomed")
    body = {"license_key": lic["license_key"], "hardware_fingerprint": "fp"}
    headers = {"X-API-Key": doomed.key}
    assert (await client.post("/v1/licenses/validate", json=body, headers=headers)).status_code == 200
    assert await revoke_api_key(db, doomed.id)
    # edge_settings.api_key_cache_s is 0.5 s: the cached "valid" may serve until then, never after.
    await asyncio.sleep(0.6)
    r = await client.post("/v1/licenses/validate", json=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "API_KEY_INVALID"


async def test_last_used_is_written_in_batches(client: httpx.AsyncClient, app: Starlette,
                                               db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    for _ in range(3):
        await client.post("/v1/licenses/validate", json={"license_key": lic["license_key"],
                                                         "hardware_fingerprint": "fp"})
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL") == 0
    assert await app.state.edge.api_keys.flush_last_used() == 1
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL") == 1
    # last_used_at alone is not worth an audit row (sql/0001 trigger arguments).
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE table_name = 'api_keys' "
                             "AND operation = 'UPDATE'") == 0


async def test_known_key_keeps_working_while_postgres_is_unreachable(
        edge_settings: Settings, database_url: str, make_api_key: Callable[..., Any]) -> None:
    known = await make_api_key("known")
    pool = await hldb.create_pool(database_url, actor="edge", max_size=2)
    guard = ApiKeyGuard(pool, edge_settings.replace(api_key_cache_s=0.01))
    request = _request_with_key(known.key)
    assert await guard.authenticate(request) == known.id
    await pool.close()  # every later lookup fails as if the server were gone
    await asyncio.sleep(0.02)
    assert await guard.authenticate(request) == known.id
    with pytest.raises(asyncpg.InterfaceError):
        await guard.authenticate(_request_with_key(generate_key()))


async def test_a_flood_of_unknown_keys_stays_bounded_and_never_evicts_a_valid_key(
        edge_settings: Settings, database_url: str, make_api_key: Callable[..., Any]) -> None:
    known = await make_api_key("known")
    pool = await hldb.create_pool(database_url, actor="edge", max_size=2)
    guard = ApiKeyGuard(pool, edge_settings.replace(api_key_cache_s=60))
    guard.max_unknown = 50
    assert await guard.check([known.key]) == known.id
    junk = [generate_key() for _ in range(200)]
    for key in junk:
        with pytest.raises(ApiKeyInvalid):
            await guard.check([key])
    assert len(guard._unknown) == 50 and len(guard._cache) == 51
    await pool.close()  # PostgreSQL gone: what is cached must answer without a query
    assert await guard.check([known.key]) == known.id
    for key in junk[-50:]:  # the newest unknown keys are still remembered: refused with no query
        with pytest.raises(ApiKeyInvalid):
            await guard.check([key])
    with pytest.raises(asyncpg.InterfaceError):  # the oldest were let go
        await guard.check([junk[0]])


@pytest.mark.parametrize("path", ["/v1/licenses/validate",
                                  "/v1/sessions/6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11/heartbeat"])
async def test_two_api_key_headers_are_refused_by_the_router_and_the_fast_path_alike(
        app: Starlette, api_key: str, path: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
        for pair in ([api_key, generate_key()], [generate_key(), api_key], [api_key, api_key]):
            r = await http.post(path, json=BODY, headers=[("X-API-Key", pair[0]), ("X-API-Key", pair[1])])
            assert (r.status_code, r.json()["error"]["code"]) == (401, "API_KEY_INVALID"), (pair, r.text)
            assert r.json()["error"]["message"] == "Send exactly one X-API-Key header."


def _request_with_key(key: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"x-api-key", key.encode())]})
