"""The seat queue through the public API: a start with "queue": true refused for the limit gets a ticket
and its position; renewed tickets get the seats that free in ticket order, never a later arrival or a
start that did not queue, never above the limit, also under racing starts and ends; a ticket not renewed
expires and its seat goes to the next."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from edge.app import create_app
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings


def body(key: str, fp: str, **extra: Any) -> dict[str, Any]:
    return {"license_key": key, "hardware_fingerprint": fp, **extra}


async def live_count(app: Starlette, license_id: int) -> int:
    plane: SessionPlane = app.state.edge.plane
    return len(await plane.live_tokens(license_id))


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_racing_starts_and_ends_give_the_seats_in_ticket_order_and_never_above_the_limit(
        client: httpx.AsyncClient, app: Starlette, license_with_devices: Callable[..., Any]) -> None:
    """Ten activated devices (the most a license has): two hold the seats, six queue, two keep
    arriving without a ticket (half of their starts asking to queue) while seats free and fill."""
    lic, _ = await license_with_devices(devices=10, device_limit=10, concurrent_sessions_limit=2)
    key = lic["license_key"]
    holders = []
    for i in range(2):
        r = await client.post("/v1/sessions", json=body(key, f"fp{i}"))
        assert r.status_code == 201
        holders.append(r.json()["session_token"])

    # Six devices queue at once: each gets a ticket, the positions are 1..6 in some order.
    waiters = [f"fp{i}" for i in range(2, 8)]
    replies = await asyncio.gather(*(client.post("/v1/sessions", json=body(key, fp, queue=True))
                                     for fp in waiters))
    tickets: dict[str, str] = {}
    position: dict[str, int] = {}
    for fp, r in zip(waiters, replies, strict=True):
        error = r.json()["error"]
        assert (r.status_code, error["code"], error["limit"], error["in_use"]) == (409, "SESSION_LIMIT_REACHED", 2, 2)
        tickets[fp], position[fp] = error["queue"]["ticket"], error["queue"]["position"]
        assert error["queue"]["renew_within_s"] == 10 and int(r.headers["Retry-After"]) <= 5
    assert sorted(position.values()) == list(range(1, 7))
    order = sorted(waiters, key=position.__getitem__)

    rng = random.Random(14)
    granted_in_round: dict[str, int] = {}
    live = list(holders)
    waiting = list(order)
    rounds = 0
    while waiting:
        rounds += 1
        assert rounds < 200, "the queue stopped moving"
        # never more seats free than tickets wait, so no arrival without a ticket is entitled to one
        free = 2 - len(live)
        ending = rng.sample(live, k=min(len(live), rng.choice([0, 1, 1, 2]), max(0, len(waiting) - free)))
        calls: list[tuple[str, Any]] = [
            ("end", client.post(f"/v1/sessions/{token}/end", json={"license_key": key})) for token in ending]
        calls += [("renew", client.post("/v1/sessions", json=body(key, fp, queue=True, ticket=tickets[fp])))
                  for fp in waiting]
        # arrivals racing the queue: without a ticket, queued or not, they never get a seat before it
        calls += [("late", client.post("/v1/sessions", json=body(key, f"fp{8 + i % 2}", queue=i % 2 == 0)))
                  for i in range(4)]
        rng.shuffle(calls)
        answers = await asyncio.gather(*(call for _, call in calls))
        late = [r for (kind, _), r in zip(calls, answers, strict=True) if kind == "late"]
        assert {(r.status_code, r.json()["error"]["code"]) for r in late} == {(409, "SESSION_LIMIT_REACHED")}
        assert all(r.status_code == 200 for (kind, _), r in zip(calls, answers, strict=True) if kind == "end")
        # who got a seat in the race: each waiter's renewal again (a granted one is resumed, same token)
        for token in ending:
            live.remove(token)
        renewals = await asyncio.gather(*(client.post("/v1/sessions", json=body(key, fp, queue=True,
                                                                                 ticket=tickets[fp]))
                                          for fp in waiting))
        now_granted = [fp for fp, r in zip(waiting, renewals, strict=True) if r.status_code in (200, 201)]
        # the seats went to a prefix of the queue, in ticket order
        assert now_granted == waiting[:len(now_granted)]
        for fp, r in zip(waiting, renewals, strict=True):
            if fp in now_granted:
                granted_in_round[fp] = rounds
                live.append(r.json()["session_token"])
            else:
                queue = r.json()["error"]["queue"]
                assert queue["ticket"] == tickets[fp]                     # renewed, not replaced
                assert queue["position"] == waiting.index(fp) - len(now_granted) + 1
        waiting = waiting[len(now_granted):]
        assert len(live) <= 2 and await live_count(app, lic["id"]) == len(live)

    assert [granted_in_round[fp] for fp in order] == sorted(granted_in_round[fp] for fp in order)
    assert await live_count(app, lic["id"]) <= 2


@pytest.fixture
async def short_ticket_app(edge_settings: Settings, db: Any, plane_client: Any) -> AsyncIterator[Starlette]:
    application = create_app(edge_settings.replace(queue_ticket_s=2))
    async with application.router.lifespan_context(application):
        yield application


async def test_a_ticket_not_renewed_expires_and_its_seat_goes_to_the_next(
        short_ticket_app: Starlette, api_key: str, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=5, concurrent_sessions_limit=1)
    key = lic["license_key"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=short_ticket_app), base_url="http://edge",
                                 headers={"X-API-Key": api_key}) as client:
        holder = (await client.post("/v1/sessions", json=body(key, "holder"))).json()["session_token"]
        first = (await client.post("/v1/sessions", json=body(key, "first", queue=True))).json()["error"]["queue"]
        second = (await client.post("/v1/sessions", json=body(key, "second", queue=True))).json()["error"]["queue"]
        assert (first["position"], second["position"], first["renew_within_s"]) == (1, 2, 2)
        await client.post(f"/v1/sessions/{holder}/end", json={"license_key": key})
        # the free seat is held for the head: the second ticket and a newcomer are refused
        held = await client.post("/v1/sessions", json=body(key, "second", ticket=second["ticket"]))
        assert held.status_code == 409 and held.json()["error"]["queue"]["position"] == 2
        assert held.json()["error"]["in_use"] == 0 and held.json()["error"]["waiting"] == 2
        assert (await client.post("/v1/sessions", json=body(key, "newcomer"))).status_code == 409
        await asyncio.sleep(1.0)                    # the second renews within its 2 s, the first does not
        renewed = await client.post("/v1/sessions", json=body(key, "second", ticket=second["ticket"]))
        assert renewed.status_code == 409 and renewed.json()["error"]["queue"]["position"] == 2
        # past the first ticket's life (and within the renewed second's): the seat goes to the second
        await asyncio.sleep(1.3)
        got = await client.post("/v1/sessions", json=body(key, "second", ticket=second["ticket"]))
        assert got.status_code == 201, got.text
        # the expired ticket is gone: renewing it takes a new place at the end
        late = await client.post("/v1/sessions", json=body(key, "first", ticket=first["ticket"]))
        queue = late.json()["error"]["queue"]
        assert late.status_code == 409 and queue["ticket"] != first["ticket"] and queue["position"] == 1


async def test_a_ticket_is_bound_to_its_device_and_bad_tickets_are_422(
        client: httpx.AsyncClient, make_license: Callable[..., Any]) -> None:
    lic = await make_license(device_limit=5, concurrent_sessions_limit=1)
    key = lic["license_key"]
    assert (await client.post("/v1/sessions", json=body(key, "holder"))).status_code == 201
    mine = (await client.post("/v1/sessions", json=body(key, "mine", queue=True))).json()["error"]["queue"]
    stolen = await client.post("/v1/sessions", json=body(key, "thief", ticket=mine["ticket"]))
    assert stolen.status_code == 409 and stolen.json()["error"]["queue"]["ticket"] != mine["ticket"]
    assert stolen.json()["error"]["queue"]["position"] == 2
    bad = await client.post("/v1/sessions", json=body(key, "mine", ticket="not-a-ticket"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_BODY"
    plain = await client.post("/v1/sessions", json=body(key, "other"))
    assert plain.status_code == 409 and "queue" not in plain.json()["error"]
