"""Offline grace and seat borrowing through the edge: signed answers carry the license's grace, a borrow
holds the seat, a return frees it, refusals have codes, and the admin's revocation ends it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from heartline_client.verify import KeySet
from shared_support import found
from test_signing import _both

from edge.borrows import revoke_borrow


async def _keys(client: httpx.AsyncClient) -> KeySet:
    return KeySet.from_jwks((await client.get("/v1/keys")).content)


async def _start(client: httpx.AsyncClient, key: str, fingerprint: str) -> httpx.Response:
    return await client.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": fingerprint})


def _later(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def test_session_answers_carry_the_offline_grace_the_license_allows(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, offline_grace_s=900, max_borrow_s=3600)
    started = await _start(client, lic["license_key"], "fp0")
    assert started.json()["offline_grace_s"] == 900
    token = started.json()["session_token"]
    beat = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]},
                             headers={"Heartline-Nonce": "grace-nonce-1"})
    assert beat.json()["offline_grace_s"] == 900
    _both(await _keys(client), beat, "grace-nonce-1")          # the grace is inside the signed body
    valid = await client.post("/v1/licenses/validate", json={"license_key": lic["license_key"],
                                                             "hardware_fingerprint": "fp0"})
    assert (valid.json()["license"]["offline_grace_s"], valid.json()["license"]["max_borrow_s"]) == (900, 3600)


async def test_a_borrow_holds_the_seat_and_a_return_frees_it(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic, _ = await license_with_devices(devices=2, concurrent_sessions_limit=1, max_borrow_s=3600)
    key = lic["license_key"]
    token = (await _start(client, key, "fp0")).json()["session_token"]
    lent = await client.post(f"/v1/sessions/{token}/borrow", json={"license_key": key, "until": _later(600)},
                             headers={"Heartline-Nonce": "borrow-nonce-1"})
    assert lent.status_code == 200, lent.text
    lease = lent.json()
    assert lease["session_token"] == token and lease["hardware_fingerprint"] == "fp0"
    _both(await _keys(client), lent, "borrow-nonce-1")
    row = found(await db.fetchrow("SELECT license_id, hardware_fingerprint, returned_at FROM session_borrows "
                            "WHERE id = $1", uuid.UUID(lease["borrow_id"])))
    assert (row["license_id"], row["hardware_fingerprint"], row["returned_at"]) == (lic["id"], "fp0", None)
    assert (await _start(client, key, "fp1")).json()["error"]["code"] == "SESSION_LIMIT_REACHED"

    back = await client.post(f"/v1/borrows/{lease['borrow_id']}/return", json={"license_key": key},
                             headers={"Heartline-Nonce": "return-nonce-1"})
    assert back.status_code == 200 and back.json() == {"returned": True}
    _both(await _keys(client), back, "return-nonce-1")
    assert (await _start(client, key, "fp1")).status_code == 201
    again = await client.post(f"/v1/borrows/{lease['borrow_id']}/return", json={"license_key": key})
    assert again.status_code == 404 and again.json()["error"]["code"] == "BORROW_NOT_FOUND"


async def test_borrow_refusals_have_codes(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1, max_borrow_s=3600)
    none, _ = await license_with_devices(devices=1)                # max_borrow_s 0: not allowed
    key = lic["license_key"]
    token = (await _start(client, key, "fp0")).json()["session_token"]
    cases = [
        ({"license_key": key, "until": _later(7200)}, 422, "BORROW_TOO_LONG"),
        ({"license_key": key, "until": _later(-60)}, 422, "BORROW_IN_PAST"),
        ({"license_key": key, "until": "2026-12-01T10:00:00"}, 422, "INVALID_BODY"),   # no time zone
        ({"license_key": key, "until": "soon"}, 422, "INVALID_BODY"),
    ]
    for body, status, code in cases:
        answer = await client.post(f"/v1/sessions/{token}/borrow", json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), body
    unknown = await client.post(f"/v1/sessions/{uuid.uuid4()}/borrow", json={"license_key": key,
                                                                             "until": _later(60)})
    assert unknown.json()["error"]["code"] == "SESSION_NOT_FOUND"
    other = (await _start(client, none["license_key"], "fp0")).json()["session_token"]
    refused = await client.post(f"/v1/sessions/{other}/borrow", json={"license_key": none["license_key"],
                                                                     "until": _later(60)})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "BORROW_NOT_ALLOWED")
    bad_id = await client.post("/v1/borrows/not-a-uuid/return", json={"license_key": key})
    assert bad_id.json()["error"]["code"] == "BORROW_NOT_FOUND"


async def test_a_revoked_borrow_frees_the_seat_and_cannot_be_returned(
        client: httpx.AsyncClient, app: Any, license_with_devices: Callable[..., Any],
        db: asyncpg.Connection) -> None:
    lic, _ = await license_with_devices(devices=2, concurrent_sessions_limit=1, max_borrow_s=3600)
    key = lic["license_key"]
    token = (await _start(client, key, "fp0")).json()["session_token"]
    lease = (await client.post(f"/v1/sessions/{token}/borrow",
                               json={"license_key": key, "until": _later(600)})).json()
    found = await revoke_borrow(db, uuid.UUID(lease["borrow_id"]), "admin:test")
    assert found == (lic["id"], token)
    from heartline.plane.events import EndReason

    assert await app.state.edge.plane.end_session(lic["id"], token, EndReason.ADMIN_TERMINATED)
    assert await revoke_borrow(db, uuid.UUID(lease["borrow_id"]), "admin:test") is None
    beat = await client.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": key})
    assert beat.json()["error"]["code"] == "SESSION_NOT_FOUND"          # refused at the next contact
    back = await client.post(f"/v1/borrows/{lease['borrow_id']}/return", json={"license_key": key})
    assert back.json()["error"]["code"] == "BORROW_NOT_FOUND"
    assert (await _start(client, key, "fp1")).status_code == 201
