"""A useful answer when the license is full: SESSION_LIMIT_REACHED with Retry-After (time to the earliest
live deadline) and the seat holders (device name and type, started, last heartbeat; no fingerprints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx


async def test_a_full_license_says_who_holds_the_seats_and_when_to_retry(
        client: httpx.AsyncClient, db: asyncpg.Connection, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=3, device_limit=3, concurrent_sessions_limit=2,
                                        heartbeat_interval_s=10, heartbeat_timeout_s=40)
    await db.execute("UPDATE device_registrations SET device_type = 'laptop' WHERE hardware_fingerprint = 'fp0'")
    key = lic["license_key"]
    tokens = []
    for fp in ("fp0", "fp1"):
        r = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": fp})
        assert r.status_code == 201, r.text
        tokens.append(r.json()["session_token"])
    assert (await client.post(f"/v1/sessions/{tokens[1]}/heartbeat", json={"license_key": key})).status_code == 200

    refused = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "fp2"})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "SESSION_LIMIT_REACHED"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 40 and error["retry_after_s"] == retry_after
    holders = sorted(error["seat_holders"], key=lambda h: h["device_name"])
    assert [(h["device_name"], h["device_type"]) for h in holders] == [("device 0", "laptop"), ("device 1", None)]
    assert holders[0]["last_heartbeat_at"] is None and holders[1]["last_heartbeat_at"] is not None
    assert all(h["started_at"] for h in holders)
    assert "fp0" not in refused.text and "fp1" not in refused.text and tokens[0] not in refused.text
    # never ending another session to make room: both still live
    for token in tokens:
        assert (await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": key})).status_code == 200


async def test_other_errors_keep_their_short_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sessions", json={"license_key": "HL-NO-SUCH-KEY", "hardware_fingerprint": "x"})
    assert r.status_code == 404 and r.json() == {"error": {"code": "LICENSE_NOT_FOUND",
                                                           "message": "No license has this key."}}
