"""The seat queue in the plane, single Redis and Cluster: tickets in FIFO order, a seat that frees held
for the head, and neither a newcomer nor a lapsed session's revival (heartbeat or start) taking a seat a
live ticket waits for; tickets expire when not renewed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import EndReason
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings

LICENSE_ID = 17
DEVICES = {f"fp{i}": 100 + i for i in range(10)}

pytestmark = pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)


async def make_plane(client: Any, settings: Settings, **changes: Any) -> SessionPlane:
    fields: dict[str, Any] = {"license_id": LICENSE_ID, "version": 1, "status": "active", "valid_from_ms": 0,
                              "valid_until_ms": None, "device_limit": 10, "sessions_limit": 1,
                              "interval_s": 1, "timeout_s": 2, **changes}
    plane = SessionPlane(client, settings)
    await plane.load_scripts()
    await plane.cache_license(CachedLicense(**fields), DEVICES)
    return plane


async def test_tickets_are_served_in_order_and_a_freed_seat_waits_for_the_head(
        plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings)
    holder = await plane.start_session(LICENSE_ID, "fp0")
    first = await plane.start_session(LICENSE_ID, "fp1", queue=True)
    second = await plane.start_session(LICENSE_ID, "fp2", queue=True)
    assert (first.code, first.position, second.position, second.waiting) == (
        PlaneCode.SESSION_LIMIT_REACHED, 1, 2, 2)
    assert await plane.end_session(LICENSE_ID, holder.token or "", EndReason.CLIENT_END)
    # a free seat, held for the head: the second ticket and starts without one are refused
    later = await plane.start_session(LICENSE_ID, "fp2", ticket=second.ticket)
    assert (later.code, later.ticket, later.position, later.in_use) == (
        PlaneCode.SESSION_LIMIT_REACHED, second.ticket, 2, 0)
    assert (await plane.start_session(LICENSE_ID, "fp3")).code is PlaneCode.SESSION_LIMIT_REACHED
    # a ticket is its device's: another fingerprint sending it is a newcomer, queued at the end
    thief = await plane.start_session(LICENSE_ID, "fp3", ticket=first.ticket)
    assert (thief.code, thief.position) == (PlaneCode.SESSION_LIMIT_REACHED, 3)
    assert thief.ticket not in ("", first.ticket)
    got = await plane.start_session(LICENSE_ID, "fp1", ticket=first.ticket)
    assert got.code is PlaneCode.STARTED
    # the ticket is used up; the second is now the head
    again = await plane.start_session(LICENSE_ID, "fp2", ticket=second.ticket)
    assert (again.position, again.waiting) == (1, 2)
    assert await plane.redis.zcard(keys.queue(LICENSE_ID, plane.shards)) == 2


async def test_a_revival_does_not_take_a_seat_a_live_ticket_waits_for(plane_client: Any,
                                                                     settings: Settings) -> None:
    plane = await make_plane(plane_client, settings, resume_grace_s=60)
    lapsing = await plane.start_session(LICENSE_ID, "fp0")
    await asyncio.sleep(max(0, lapsing.deadline_ms + 150 - await plane.now_ms()) / 1000)
    # lapsed: its seat is free, and a queued start finding a free seat gets it at once
    taker = await plane.start_session(LICENSE_ID, "fp1", queue=True)
    assert taker.code is PlaneCode.STARTED
    waiting = await plane.start_session(LICENSE_ID, "fp2", queue=True)
    assert waiting.position == 1
    assert await plane.end_session(LICENSE_ID, taker.token or "", EndReason.CLIENT_END)
    # the freed seat is held for the ticket: the lapsed session may not come back through it
    beat = await plane.heartbeat(LICENSE_ID, lapsing.token or "")
    assert (beat.code, beat.in_use) == (PlaneCode.SESSION_LIMIT_REACHED, 0)
    assert (await plane.start_session(LICENSE_ID, "fp0")).code is PlaneCode.SESSION_LIMIT_REACHED
    assert (await plane.start_session(LICENSE_ID, "fp2", ticket=waiting.ticket)).code is PlaneCode.STARTED


async def test_an_unrenewed_ticket_expires(plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings.replace(queue_ticket_s=1))
    holder = await plane.start_session(LICENSE_ID, "fp0")
    stale = await plane.start_session(LICENSE_ID, "fp1", queue=True)
    assert stale.position == 1
    assert await plane.end_session(LICENSE_ID, holder.token or "", EndReason.CLIENT_END)
    assert (await plane.start_session(LICENSE_ID, "fp2")).code is PlaneCode.SESSION_LIMIT_REACHED
    await asyncio.sleep(1.2)
    assert (await plane.start_session(LICENSE_ID, "fp2")).code is PlaneCode.STARTED
    renewed = await plane.start_session(LICENSE_ID, "fp1", ticket=stale.ticket)
    assert renewed.code is PlaneCode.SESSION_LIMIT_REACHED and renewed.ticket not in ("", stale.ticket)
