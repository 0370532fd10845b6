"""The device-churn limit through the public API: a license may change devices (deactivate one, activate
another in its place) at most `device_change_limit` times in 30 days; DEVICE_CHANGE_LIMIT_REACHED after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx


async def activate(client: httpx.AsyncClient, key: str, fp: str) -> httpx.Response:
    return await client.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": fp})


async def deactivate(client: httpx.AsyncClient, key: str, fp: str) -> None:
    r = await client.post("/v1/devices/deactivate", json={"license_key": key, "hardware_fingerprint": fp})
    assert r.status_code == 200, r.text


async def test_device_changes_are_limited_per_30_days_and_an_admin_reset_allows_more(
        client: httpx.AsyncClient, db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=2, concurrent_sessions_limit=1, device_change_limit=2)
    key = lic["license_key"]
    # filling free places is no change
    assert (await activate(client, key, "a")).status_code == 201
    assert (await activate(client, key, "b")).status_code == 201
    # two changes allowed ...
    for old, new in (("a", "c"), ("b", "d")):
        await deactivate(client, key, old)
        assert (await activate(client, key, new)).status_code == 201
    # ... the third is refused, through activation and through a session start on a new device
    await deactivate(client, key, "c")
    refused = await activate(client, key, "e")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "DEVICE_CHANGE_LIMIT_REACHED"
    started = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "e"})
    assert started.status_code == 409 and started.json()["error"]["code"] == "DEVICE_CHANGE_LIMIT_REACHED"
    assert await db.fetchval("SELECT count(*) FROM device_registrations WHERE license_id = $1 AND is_active",
                             lic["id"]) == 1
    # an already active device is untouched by the limit
    assert (await activate(client, key, "d")).status_code == 200

    # changes older than 30 days no longer count
    await db.execute("UPDATE device_changes SET deactivated_at = deactivated_at - interval '31 days', "
                     "replaced_at = replaced_at - interval '31 days' WHERE replaced_at IS NOT NULL")
    assert (await activate(client, key, "e")).status_code == 201
    await deactivate(client, key, "e")
    await deactivate(client, key, "d")
    assert (await activate(client, key, "f")).status_code == 201
    assert (await activate(client, key, "g")).status_code == 409
    # the admin's reset starts the count anew
    await db.execute("UPDATE licenses SET device_changes_reset_at = now() WHERE id = $1", lic["id"])
    await db.execute("UPDATE device_changes SET deactivated_at = now() WHERE replaced_at IS NULL")
    assert (await activate(client, key, "g")).status_code == 201


async def test_no_limit_by_default_and_the_limit_is_checked(
        client: httpx.AsyncClient, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1)
    for n in range(5):
        assert (await activate(client, lic["license_key"], f"fp{n}")).status_code == 201
        await deactivate(client, lic["license_key"], f"fp{n}")
    for bad in (-1, 1001):
        try:
            await make_license(device_change_limit=bad)
        except asyncpg.CheckViolationError as exc:
            assert "licenses_device_change_limit_range" in str(exc)
        else:
            raise AssertionError(bad)
