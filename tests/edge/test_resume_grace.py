"""Grace after a missed heartbeat through the public API: a lapsed session's seat goes to another
device, its heartbeat is refused with the numbers while no seat is free, and it comes back with its
token (heartbeat or start) once one is; validate says the license's resume_grace_s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx


async def test_a_lapsed_session_gives_up_its_seat_and_is_revived_within_the_grace(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=1,
                                        heartbeat_interval_s=1, heartbeat_timeout_s=2, resume_grace_s=60)
    key = lic["license_key"]

    async def start(fp: str) -> httpx.Response:
        return await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": fp})

    first = await start("fp0")
    assert first.status_code == 201
    token = first.json()["session_token"]
    await asyncio.sleep(2.3)                                   # the 2 s timeout passes without a beat
    second = await start("fp1")
    assert second.status_code == 201, second.text              # the lapsed session holds no seat
    beat = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": key})
    assert beat.status_code == 409
    error = beat.json()["error"]
    assert (error["code"], error["limit"], error["in_use"]) == ("SESSION_LIMIT_REACHED", 1, 1)
    assert "signature" in beat.headers
    ended = await client.post(f"/v1/sessions/{second.json()['session_token']}/end", json={"license_key": key})
    assert ended.status_code == 200
    back = await start("fp0")                                  # the same device brings it back
    assert back.status_code == 200 and back.json()["resumed"] and back.json()["session_token"] == token
    assert (await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": key})).status_code == 200
    valid = await client.post("/v1/licenses/validate", json={"license_key": key, "hardware_fingerprint": "fp0"})
    assert valid.json()["license"]["resume_grace_s"] == 60


async def test_without_grace_the_lapsed_token_is_gone(client: httpx.AsyncClient,
                                                      license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, device_limit=1, concurrent_sessions_limit=1,
                                        heartbeat_interval_s=1, heartbeat_timeout_s=2)
    key = lic["license_key"]
    first = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "fp0"})
    token = first.json()["session_token"]
    await asyncio.sleep(2.3)
    beat = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": key})
    assert beat.status_code == 404 and beat.json()["error"]["code"] == "SESSION_NOT_FOUND"
    again = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "fp0"})
    assert again.status_code == 201 and again.json()["session_token"] != token
