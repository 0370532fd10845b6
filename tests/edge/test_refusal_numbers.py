"""Refusals carry numbers (issue 17): DEVICE_LIMIT_REACHED and SESSION_LIMIT_REACHED say the license's
limit and how many are in use, in the signed error object, and the client library hands them over."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from heartline_client import AsyncClient, KeySet, Refused
from starlette.applications import Starlette


@pytest.fixture
async def licensed_client(app: Starlette, api_key: str) -> Callable[..., Any]:
    """Factory: the client library on the in-process edge for one license, verifying every answer."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
        keys = KeySet.from_jwks((await http.get("/v1/keys")).content)

    def make(license_key: str) -> AsyncClient:
        return AsyncClient("http://edge", api_key=api_key, license_key=license_key, keys=keys,
                           transport=httpx.ASGITransport(app=app))
    return make


async def test_session_limit_reached_says_the_limit_and_the_seats_in_use(
        licensed_client: Callable[..., Any], license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=3, device_limit=3, concurrent_sessions_limit=2)
    async with licensed_client(lic["license_key"]) as client:
        for fp in ("fp0", "fp1"):
            assert (await client.start_session(fp)).status == 201
        with pytest.raises(Refused) as refused:       # the answer verified against the edge's keys
            await client.start_session("fp2")
    assert refused.value.code == "SESSION_LIMIT_REACHED" and refused.value.status == 409
    assert (refused.value.limit, refused.value.in_use) == (2, 2)
    assert refused.value.details["limit"] == 2 and len(refused.value.details["seat_holders"]) == 2


async def test_device_limit_reached_says_the_limit_and_the_devices_in_use(
        licensed_client: Callable[..., Any], license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=2)
    async with licensed_client(lic["license_key"]) as client:
        with pytest.raises(Refused) as by_activation:
            await client.activate("third")
        with pytest.raises(Refused) as by_start:      # a start on an unknown device activates on the fly
            await client.start_session("fourth")
    for refused in (by_activation.value, by_start.value):
        assert (refused.status, refused.code) == (409, "DEVICE_LIMIT_REACHED")
        assert (refused.limit, refused.in_use) == (2, 2)


async def test_the_numbers_are_plain_json_fields_of_the_error(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=3, device_limit=3, concurrent_sessions_limit=1)
    key = lic["license_key"]
    assert (await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "fp0"})
            ).status_code == 201
    full = await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "fp1"})
    error = full.json()["error"]
    assert (error["code"], error["limit"], error["in_use"]) == ("SESSION_LIMIT_REACHED", 1, 1)
    devices = await client.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": "x"})
    error = devices.json()["error"]
    assert (error["code"], error["limit"], error["in_use"]) == ("DEVICE_LIMIT_REACHED", 3, 3)
    assert "signature" in {h.lower() for h in full.headers} and "signature" in {h.lower() for h in devices.headers}


async def test_the_client_library_queues_and_renews_its_ticket(
        licensed_client: Callable[..., Any], license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=2, device_limit=2, concurrent_sessions_limit=1)
    async with licensed_client(lic["license_key"]) as client:
        holder = await client.start_session("fp0")
        with pytest.raises(Refused) as queued:
            await client.start_session("fp1", queue=True)
        ticket = queued.value.details["queue"]["ticket"]
        assert queued.value.details["queue"]["position"] == 1
        await client.end_session(holder.data["session_token"])
        granted = await client.start_session("fp1", ticket=ticket)
        assert granted.status == 201
