"""Entitlements through the public API: returned by validate and session start, ENTITLEMENT_MISSING when
a requested one is absent, product defaults, and edits in PostgreSQL reaching the edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from worker_support import eventually


async def entitlement(db: asyncpg.Connection, code: str, name: str | None = None) -> int:
    return int(await db.fetchval("INSERT INTO entitlements (code, name) VALUES ($1, $2) RETURNING id",
                                 code, name or code.title()))


async def grant(db: asyncpg.Connection, license_id: int, entitlement_id: int) -> None:
    await db.execute("INSERT INTO license_entitlements (license_id, entitlement_id) VALUES ($1, $2)",
                     license_id, entitlement_id)


async def validate(client: httpx.AsyncClient, key: str, fp: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/licenses/validate", json={"license_key": key, "hardware_fingerprint": fp, **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_validate_and_start_return_the_license_and_product_entitlements(
        client: httpx.AsyncClient, db: asyncpg.Connection, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, product="studio")
    export, sync, other = (await entitlement(db, "EXPORT"), await entitlement(db, "cloud.sync"),
                           await entitlement(db, "OTHER"))
    await grant(db, lic["id"], export)
    await db.execute("INSERT INTO product_entitlements (product, entitlement_id) VALUES ('studio', $1), "
                     "('other-product', $2)", sync, other)

    async def shown() -> bool:  # the edge's refresher may have cached the license before the grants
        body = await validate(client, lic["license_key"], "fp0")
        return body["valid"] is True and body["license"]["entitlements"] == ["EXPORT", "cloud.sync"]
    await eventually(shown)
    started = await client.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                      "hardware_fingerprint": "fp0"})
    assert started.status_code == 201 and started.json()["entitlements"] == ["EXPORT", "cloud.sync"]

    assert (await validate(client, lic["license_key"], "fp0", entitlements=["EXPORT"]))["code"] == "VALID"
    body = await validate(client, lic["license_key"], "fp0", entitlements=["EXPORT", "OTHER", "GONE"])
    assert (body["valid"], body["code"], body["missing_entitlements"]) == (False, "ENTITLEMENT_MISSING",
                                                                          ["GONE", "OTHER"])
    # the license's own refusal comes first
    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    await eventually(lambda: _code(client, lic["license_key"], ["GONE"], "LICENSE_SUSPENDED"))


async def _code(client: httpx.AsyncClient, key: str, wanted: list[str], code: str) -> bool:
    return (await validate(client, key, "fp0", entitlements=wanted))["code"] == code


async def test_entitlement_edits_in_postgresql_reach_the_edge(
        client: httpx.AsyncClient, db: asyncpg.Connection, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, product="studio")
    assert (await validate(client, lic["license_key"], "fp0"))["license"]["entitlements"] == []
    pro = await entitlement(db, "PRO")
    await grant(db, lic["id"], pro)

    async def shows(expected: list[str]) -> bool:
        return (await validate(client, lic["license_key"], "fp0"))["license"]["entitlements"] == expected
    await eventually(lambda: shows(["PRO"]))
    extra = await entitlement(db, "EXTRA")
    await db.execute("INSERT INTO product_entitlements (product, entitlement_id) VALUES ('studio', $1)", extra)
    await eventually(lambda: shows(["EXTRA", "PRO"]))
    await db.execute("DELETE FROM license_entitlements WHERE license_id = $1", lic["id"])
    await eventually(lambda: shows(["EXTRA"]))
    audited = await db.fetch("SELECT table_name, operation FROM audit_log WHERE table_name LIKE '%entitlements' "
                             "ORDER BY id")
    assert [tuple(r) for r in audited] == [
        ("entitlements", "INSERT"), ("license_entitlements", "INSERT"), ("entitlements", "INSERT"),
        ("product_entitlements", "INSERT"), ("license_entitlements", "DELETE")]


async def test_bad_entitlement_requests_are_422(client: httpx.AsyncClient,
                                                license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    for bad in (["has space"], ["x" * 65], "EXPORT", [1], ["ok"] * 65):
        r = await client.post("/v1/licenses/validate", json={"license_key": lic["license_key"],
                                                             "hardware_fingerprint": "fp0", "entitlements": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_BODY", bad


async def test_entitlement_codes_are_checked_and_fixed(db: asyncpg.Connection) -> None:
    for bad in ("", "has space", "-lead", "a,b", "x" * 65):
        try:
            await entitlement(db, bad, "n")
        except asyncpg.CheckViolationError as exc:
            assert "entitlements_code_format" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    made = await entitlement(db, "FIXED")
    try:
        await db.execute("UPDATE entitlements SET code = 'MOVED' WHERE id = $1", made)
    except asyncpg.CheckViolationError as exc:
        assert "cannot change" in str(exc)
    else:
        raise AssertionError("the code changed")
    await db.execute("UPDATE entitlements SET name = 'Renamed' WHERE id = $1", made)
