"""POST /v1/licenses/validate and /resources, and how edits in PostgreSQL reach the edge."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from shared_support import process_env

from edge.app import create_app
from heartline.devstack import free_port
from heartline.settings import Settings


async def validate(client: httpx.AsyncClient, license_key: str, fingerprint: str) -> dict[str, Any]:
    r = await client.post("/v1/licenses/validate", json={"license_key": license_key,
                                                         "hardware_fingerprint": fingerprint})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_validate_valid_license_and_activated_device(client: httpx.AsyncClient,
                                                           license_with_devices: Callable[..., Any]) -> None:
    lic, devices = await license_with_devices(devices=1, device_limit=3, concurrent_sessions_limit=2,
                                              heartbeat_interval_s=10, heartbeat_timeout_s=25)
    body = await validate(client, lic["license_key"], "fp0")
    assert body["valid"] is True and body["code"] == "VALID"
    assert body["device"] == {"hardware_fingerprint": "fp0", "activated": True, "device_id": devices["fp0"]}
    assert body["license"]["device_limit"] == 3 and body["license"]["concurrent_sessions_limit"] == 2
    assert body["license"]["heartbeat_interval_s"] == 10 and body["license"]["heartbeat_timeout_s"] == 25
    assert body["license"]["status"] == "active" and body["license"]["valid_until"] is None


async def test_validate_codes(client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    good, _ = await license_with_devices(devices=1)
    suspended, _ = await license_with_devices(devices=1, status="suspended")
    expired, _ = await license_with_devices(devices=1, valid_from=now - dt.timedelta(days=5),
                                            valid_until=now - dt.timedelta(seconds=1))
    assert (await validate(client, "HL-NO-SUCH-LICENSE", "fp0")) == {
        "valid": False, "code": "LICENSE_NOT_FOUND", "license": None, "device": None,
        "missing_entitlements": None}
    assert (await validate(client, good["license_key"], "stranger"))["code"] == "DEVICE_NOT_ACTIVATED"
    assert (await validate(client, suspended["license_key"], "fp0"))["code"] == "LICENSE_SUSPENDED"
    body = await validate(client, expired["license_key"], "fp0")
    assert body["code"] == "LICENSE_EXPIRED" and body["valid"] is False


async def test_license_edit_in_postgres_reaches_the_edge(client: httpx.AsyncClient, db: asyncpg.Connection,
                                                         license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=2)
    assert (await validate(client, lic["license_key"], "fp0"))["license"]["concurrent_sessions_limit"] == 2
    await db.execute("UPDATE licenses SET concurrent_sessions_limit = 1 WHERE id = $1", lic["id"])
    for _ in range(100):
        if (await validate(client, lic["license_key"], "fp0"))["license"]["concurrent_sessions_limit"] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await validate(client, lic["license_key"], "fp0"))["license"]["concurrent_sessions_limit"] == 1
    r1 = await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "fp0"})
    r2 = await client.post("/v1/sessions", json={"license_key": lic["license_key"], "hardware_fingerprint": "fp1"})
    assert (r1.status_code, r2.status_code) == (201, 409)


async def test_new_license_is_served_after_unknown_key_was_tried(client: httpx.AsyncClient,
                                                                 make_license: Callable[..., Any]) -> None:
    assert (await validate(client, "HL-LATER-CREATED", "fp"))["code"] == "LICENSE_NOT_FOUND"
    await make_license(license_key="HL-LATER-CREATED")
    for _ in range(100):
        if (await validate(client, "HL-LATER-CREATED", "fp"))["code"] != "LICENSE_NOT_FOUND":
            break
        await asyncio.sleep(0.05)
    assert (await validate(client, "HL-LATER-CREATED", "fp"))["code"] == "DEVICE_NOT_ACTIVATED"


async def test_resources_lists_what_the_license_holds(client: httpx.AsyncClient, db: asyncpg.Connection,
                                                      make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    await db.execute("INSERT INTO resource_pools (resource_type, value, status, license_id) "
                     "VALUES ('domain', 'example.org', 'allocated', $1), ('ipv4', '203.0.113.7', 'allocated', $1)",
                     lic["id"])
    r = await client.post("/v1/licenses/resources", json={"license_key": lic["license_key"]})
    assert r.status_code == 200
    assert r.json() == {"domains": ["example.org"], "ipv4": ["203.0.113.7"], "phones": []}
    missing = await client.post("/v1/licenses/resources", json={"license_key": "HL-NOT-THERE"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "LICENSE_NOT_FOUND"


async def test_a_license_the_heartbeat_defaults_contradict_is_refused_not_served(
        edge_settings: Settings, api_key: str, make_license: Callable[..., Any], redis: Any) -> None:
    """interval 40 without a timeout passes the database's CHECK (which fills in 60), but with defaults
    of 10/25 it resolves to interval 40, timeout 25: sessions would time out between heartbeats.
    (`redis` empties the plane: license ids restart per test, and an earlier test's cached copy of this
    id, valid under its settings, would be served until the edge's first poll dropped it.)"""
    lic = await make_license(heartbeat_interval_s=40)
    app = create_app(edge_settings.replace(heartbeat_interval_s=10, heartbeat_timeout_s=25))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        body = {"license_key": lic["license_key"], "hardware_fingerprint": "box"}
        for path in ("/v1/sessions", "/v1/devices/activate", "/v1/licenses/validate"):
            r = await http.post(path, json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "LICENSE_MISCONFIGURED"), (path, r.text)


async def test_the_edge_refuses_to_start_with_heartbeat_defaults_that_contradict_a_license(
        database_url: str, redis_url: str, make_license: Callable[..., Any], tmp_path: Path) -> None:
    lic = await make_license(heartbeat_interval_s=40)
    env = {**process_env(),
           "HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_REDIS_URL": redis_url,
           "HEARTLINE_DATA_DIR": str(tmp_path), "HEARTLINE_EDGE_PORT": str(free_port()),
           "HEARTLINE_HEARTBEAT_INTERVAL_S": "10", "HEARTLINE_HEARTBEAT_TIMEOUT_S": "25"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "heartline", "edge", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError("the edge started serving with contradicting heartbeat defaults") from None
    assert proc.returncode == 2, err
    assert err.decode().strip().splitlines() == [
        ("heartline edge: HEARTLINE_HEARTBEAT_INTERVAL_S=10 and HEARTLINE_HEARTBEAT_TIMEOUT_S=25 leave licenses "
         f"{lic['id']} with a heartbeat timeout not above their interval (they set one of the two); set both "
         "on those licenses or change the settings")]


async def test_the_edge_starts_while_postgres_is_unreachable_and_skips_the_defaults_check(
        redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**process_env(),
           "HEARTLINE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
           "HEARTLINE_REDIS_URL": redis_url, "HEARTLINE_DATA_DIR": str(tmp_path),
           "HEARTLINE_EDGE_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "heartline", "edge", env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                assert proc.returncode is None, (await proc.communicate())[1].decode()[-2000:]
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the edge did not answer /healthz within 60 s")
    finally:
        if proc.returncode is None:
            proc.terminate()
            _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert "edge.settings.unchecked" in err.decode()
