"""Borrowed seats on real Redis: held without heartbeats, counted against the limit under concurrency,
freed by return or expiry with their own end reasons, never shortened by heartbeats or resumes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest
import redis.asyncio as aioredis

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import EndReason, SessionEventKind, session_event_from_fields
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings

LICENSE_ID = 11


def cached(**changes: object) -> CachedLicense:
    fields: dict[str, object] = {"license_id": LICENSE_ID, "version": 1, "status": "active",
                                 "valid_from_ms": 0, "valid_until_ms": None, "device_limit": 10,
                                 "sessions_limit": 3, "interval_s": 1, "timeout_s": 2,
                                 "offline_grace_s": 600, "max_borrow_s": 3600}
    fields.update(changes)
    return CachedLicense(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def plane(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[SessionPlane]:
    plane = SessionPlane(redis, settings)
    await plane.load_scripts()
    await plane.cache_license(cached(), {f"fp{i}": 100 + i for i in range(10)})
    yield plane


async def ended_reasons(plane: SessionPlane) -> dict[str, str]:
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    entries = await plane.redis.xrange(keys.event_stream(shard))
    events = [session_event_from_fields(shard, eid, fields) for eid, fields in entries]
    return {e.session_token: str(e.reason) for e in events if e.kind is SessionEventKind.ENDED}


async def test_answers_carry_the_licenses_offline_grace(plane: SessionPlane) -> None:
    started = await plane.start_session(LICENSE_ID, "fp0")
    assert started.offline_grace_s == 600
    assert (await plane.heartbeat(LICENSE_ID, started.token or "")).offline_grace_s == 600


async def test_a_borrowed_seat_is_held_without_heartbeats_and_counts_against_the_limit(
        plane: SessionPlane) -> None:
    await plane.cache_license(cached(sessions_limit=1, version=2), {"fp0": 100, "fp1": 101})
    session = await plane.start_session(LICENSE_ID, "fp0")
    until = await plane.now_ms() + 60_000
    lent = await plane.borrow(LICENSE_ID, session.token or "", until)
    assert (lent.code, lent.until_ms, lent.fingerprint, lent.offline_grace_s) == (PlaneCode.BORROWED, until,
                                                                                  "fp0", 600)
    await asyncio.sleep(2.3)                          # the 2 s heartbeat timeout passes without a beat
    assert await plane.reap_expired(keys.shard_of(LICENSE_ID, plane.shards)) == 0
    assert await plane.is_live(LICENSE_ID, session.token or "")
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.SESSION_LIMIT_REACHED
    # Coming back online: a heartbeat or a resume never shortens the borrow.
    beat = await plane.heartbeat(LICENSE_ID, session.token or "")
    assert beat.code is PlaneCode.OK and beat.deadline_ms == until
    resumed = await plane.start_session(LICENSE_ID, "fp0")
    assert resumed.code is PlaneCode.RESUMED and resumed.deadline_ms == until


async def test_return_frees_the_seat_with_reason_borrow_returned(plane: SessionPlane) -> None:
    await plane.cache_license(cached(sessions_limit=1, version=2), {"fp0": 100, "fp1": 101})
    session = await plane.start_session(LICENSE_ID, "fp0")
    await plane.borrow(LICENSE_ID, session.token or "", await plane.now_ms() + 60_000)
    assert await plane.end_session(LICENSE_ID, session.token or "", EndReason.BORROW_RETURNED)
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.STARTED
    assert (await ended_reasons(plane))[session.token or ""] == "borrow_returned"


async def test_the_reaper_ends_an_expired_borrow_as_borrow_expired(plane: SessionPlane) -> None:
    await plane.cache_license(cached(sessions_limit=1, version=2, timeout_s=60, interval_s=30),
                              {"fp0": 100, "fp1": 101})
    session = await plane.start_session(LICENSE_ID, "fp0")
    await plane.borrow(LICENSE_ID, session.token or "", await plane.now_ms() + 1000)
    await asyncio.sleep(1.2)
    assert await plane.reap_expired(keys.shard_of(LICENSE_ID, plane.shards)) == 1
    assert (await ended_reasons(plane))[session.token or ""] == "borrow_expired"
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.STARTED
    # The marker went with the session: an ordinary later session of that token's kind times out as such.
    assert not await cast("Awaitable[list[bytes]]", plane.redis.hkeys(keys.sessions(LICENSE_ID, plane.shards))) or all(
        not k.startswith(b"b:") for k in await cast("Awaitable[list[bytes]]",
                                                   plane.redis.hkeys(keys.sessions(LICENSE_ID, plane.shards))))


async def test_borrow_refusals(plane: SessionPlane) -> None:
    session = await plane.start_session(LICENSE_ID, "fp0")
    token = session.token or ""
    now = await plane.now_ms()
    too_long = await plane.borrow(LICENSE_ID, token, now + 3_700_000)
    assert too_long.code is PlaneCode.BORROW_TOO_LONG and now + 3_600_000 <= too_long.until_ms < now + 3_700_000
    assert (await plane.borrow(LICENSE_ID, token, now - 1)).code is PlaneCode.BORROW_IN_PAST
    assert (await plane.borrow(LICENSE_ID, "no-such-token", now + 1000)).code is PlaneCode.SESSION_NOT_FOUND
    await plane.cache_license(cached(max_borrow_s=0, version=2), {"fp0": 100})
    assert (await plane.borrow(LICENSE_ID, token, now + 1000)).code is PlaneCode.BORROW_NOT_ALLOWED
    await plane.cache_license(cached(status="suspended", version=3), {"fp0": 100})
    assert (await plane.borrow(LICENSE_ID, token, now + 1000)).code is PlaneCode.LICENSE_SUSPENDED


async def test_concurrent_starts_never_exceed_the_limit_with_borrows_in_play(plane: SessionPlane) -> None:
    await plane.cache_license(cached(sessions_limit=3, version=2), {f"fp{i}": 100 + i for i in range(300)})
    held = [await plane.start_session(LICENSE_ID, f"fp{i}") for i in range(2)]
    until = await plane.now_ms() + 60_000
    for session in held:
        assert (await plane.borrow(LICENSE_ID, session.token or "", until)).code is PlaneCode.BORROWED

    async def race(first: int) -> list[PlaneCode]:
        outcomes = await asyncio.gather(*(plane.start_session(LICENSE_ID, f"fp{i}")
                                          for i in range(first, first + 100)))
        return [o.code for o in outcomes]

    codes = await race(10)
    assert codes.count(PlaneCode.STARTED) == 1 and codes.count(PlaneCode.SESSION_LIMIT_REACHED) == 99
    assert (await race(110)).count(PlaneCode.STARTED) == 0          # full: two borrowed, one live
    assert await plane.end_session(LICENSE_ID, held[0].token or "", EndReason.BORROW_RETURNED)
    codes = await race(210)
    assert codes.count(PlaneCode.STARTED) == 1
    assert len(await plane.live_tokens(LICENSE_ID)) == 3
