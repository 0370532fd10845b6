"""Grace after a missed heartbeat (resume_grace_s) on real Redis, single and Cluster: a session past its
deadline holds no seat at once, the same device may revive it (same token) within the grace when a seat
is free, it ends as timeout when the grace runs out, and the ended event says how often it lapsed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

import pytest
from shared_support import found

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import EndReason, SessionEvent, SessionEventKind, session_event_from_fields
from heartline.plane.sessions import HeartbeatOutcome, PlaneCode, SessionPlane, StartOutcome
from heartline.settings import Settings

LICENSE_ID = 13
DEVICES = {f"fp{i}": 100 + i for i in range(60)}

pytestmark = pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)


def cached(**changes: Any) -> CachedLicense:
    fields: dict[str, Any] = {"license_id": LICENSE_ID, "version": 1, "status": "active", "valid_from_ms": 0,
                              "valid_until_ms": None, "device_limit": 10, "sessions_limit": 1,
                              "interval_s": 1, "timeout_s": 2, "resume_grace_s": 3}
    fields.update(changes)
    return CachedLicense(**fields)


async def make_plane(client: Any, settings: Settings, **changes: Any) -> SessionPlane:
    plane = SessionPlane(client, settings)
    await plane.load_scripts()
    await plane.cache_license(cached(**changes), DEVICES)
    return plane


async def ended(plane: SessionPlane) -> dict[str, SessionEvent]:
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    entries = await plane.redis.xrange(keys.event_stream(shard))
    events = [session_event_from_fields(shard, eid, fields) for eid, fields in entries]
    return {e.session_token: e for e in events if e.kind is SessionEventKind.ENDED}


async def past_deadline(plane: SessionPlane, deadline_ms: int, extra_ms: int = 150) -> None:
    """Sleep until the Redis clock is `extra_ms` past `deadline_ms`."""
    await asyncio.sleep(max(0, deadline_ms + extra_ms - await plane.now_ms()) / 1000)


async def test_a_lapsed_session_holds_no_seat_and_its_heartbeat_revives_it_when_one_frees(
        plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings)
    first = await plane.start_session(LICENSE_ID, "fp0")
    assert first.token
    await past_deadline(plane, first.deadline_ms)
    # lapsed: its seat is free at once, and it is not live for anyone who asks
    assert await plane.live_tokens(LICENSE_ID) == set()
    other = await plane.start_session(LICENSE_ID, "fp1")
    assert other.code is PlaneCode.STARTED and other.token
    # no seat to come back to: refused with the numbers, nothing recorded, still revivable
    beat = await plane.heartbeat(LICENSE_ID, first.token)
    assert (beat.code, beat.limit, beat.in_use) == (PlaneCode.SESSION_LIMIT_REACHED, 1, 1)
    again = await plane.start_session(LICENSE_ID, "fp0")
    assert (again.code, again.limit, again.in_use) == (PlaneCode.SESSION_LIMIT_REACHED, 1, 1)
    assert await plane.end_session(LICENSE_ID, other.token, EndReason.CLIENT_END)
    revived = await plane.heartbeat(LICENSE_ID, first.token)
    assert revived.code is PlaneCode.OK and revived.deadline_ms > await plane.now_ms()
    assert await plane.live_tokens(LICENSE_ID) == {first.token}
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.SESSION_LIMIT_REACHED
    assert await plane.end_session(LICENSE_ID, first.token, EndReason.CLIENT_END)
    history = await ended(plane)
    assert (history[first.token].reason, history[first.token].lapses) == (EndReason.CLIENT_END, 1)
    assert (history[other.token].reason, history[other.token].lapses) == (EndReason.CLIENT_END, 0)
    assert len(history) == 2


async def test_a_start_of_the_same_device_revives_its_lapsed_session_with_its_token(
        plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings)
    first = await plane.start_session(LICENSE_ID, "fp0")
    await past_deadline(plane, first.deadline_ms)
    back = await plane.start_session(LICENSE_ID, "fp0")
    assert back.code is PlaneCode.RESUMED and back.token == first.token
    assert back.deadline_ms > await plane.now_ms()
    await past_deadline(plane, back.deadline_ms)
    assert (await plane.heartbeat(LICENSE_ID, first.token or "")).code is PlaneCode.OK   # lapsed twice
    assert await plane.end_session(LICENSE_ID, first.token or "", EndReason.CLIENT_END)
    assert (await ended(plane))[first.token or ""].lapses == 2


async def test_a_lapsed_session_ends_as_timeout_when_the_grace_runs_out(
        plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings, resume_grace_s=1)
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    first = await plane.start_session(LICENSE_ID, "fp0")
    await past_deadline(plane, first.deadline_ms)
    assert await plane.reap_expired(shard) == 0                 # lapsed, within its grace: kept
    assert await plane.redis.zscore(keys.live_sessions(LICENSE_ID, plane.shards), found(first.token)) is not None
    await past_deadline(plane, first.deadline_ms + 1000)
    assert await plane.reap_expired(shard) == 1
    event = (await ended(plane))[first.token or ""]
    assert (event.reason, event.lapses) == (EndReason.TIMEOUT, 1)
    assert (await plane.heartbeat(LICENSE_ID, first.token or "")).code is PlaneCode.SESSION_NOT_FOUND
    again = await plane.start_session(LICENSE_ID, "fp0")
    assert again.code is PlaneCode.STARTED and again.token != first.token


async def test_without_grace_a_session_past_its_deadline_is_over(plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings, resume_grace_s=0)
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    first = await plane.start_session(LICENSE_ID, "fp0")
    await past_deadline(plane, first.deadline_ms)
    assert (await plane.heartbeat(LICENSE_ID, first.token or "")).code is PlaneCode.SESSION_NOT_FOUND
    assert await plane.reap_expired(shard) == 0                  # the heartbeat ended it already
    event = (await ended(plane))[first.token or ""]
    assert (event.reason, event.lapses) == (EndReason.TIMEOUT, 1)
    second = await plane.start_session(LICENSE_ID, "fp0")
    await past_deadline(plane, second.deadline_ms)
    assert await plane.reap_expired(shard) == 1                  # the reaper at the deadline, as before
    third = await plane.start_session(LICENSE_ID, "fp0")
    assert third.code is PlaneCode.STARTED and third.token not in (first.token, second.token)
    # no grace copy is kept beside the sessions of a license without grace
    assert not await cast("Awaitable[bool]", plane.redis.hexists(keys.sessions(LICENSE_ID, plane.shards), "!g"))


async def test_revivals_racing_new_starts_never_exceed_the_limit(plane_client: Any, settings: Settings) -> None:
    plane = await make_plane(plane_client, settings, sessions_limit=3, timeout_s=2, resume_grace_s=30)
    lapsed = [await plane.start_session(LICENSE_ID, f"fp{i}") for i in range(3)]
    await past_deadline(plane, max(s.deadline_ms for s in lapsed))
    calls: list[Awaitable[HeartbeatOutcome | StartOutcome]] = [plane.heartbeat(LICENSE_ID, s.token or "") for s in lapsed]
    calls += [plane.start_session(LICENSE_ID, f"fp{i}") for i in range(3, 60)]
    outcomes = await asyncio.gather(*calls)
    granted = [o for o in outcomes if o.code in (PlaneCode.OK, PlaneCode.STARTED)]
    assert len(granted) == 3
    assert len(await plane.live_tokens(LICENSE_ID)) == 3
    assert all(o.code is PlaneCode.SESSION_LIMIT_REACHED for o in outcomes if o not in granted)


async def test_a_license_edit_reindexes_its_sessions_with_the_new_grace(plane_client: Any,
                                                                        settings: Settings) -> None:
    plane = await make_plane(plane_client, settings, resume_grace_s=0)
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    first = await plane.start_session(LICENSE_ID, "fp0")
    assert await plane.cache_license(cached(version=2, resume_grace_s=60), DEVICES)
    await past_deadline(plane, first.deadline_ms)
    assert await plane.reap_expired(shard) == 0                  # the grace given after the start counts
    assert (await plane.start_session(LICENSE_ID, "fp0")).token == first.token
