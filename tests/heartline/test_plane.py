"""The session plane's Lua scripts on real Redis: start, resume, limits, heartbeats, ends, reaping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest
import redis.asyncio as aioredis

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import (
    EndReason,
    SessionEventKind,
    heartbeat_from_fields,
    session_event_from_fields,
)
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings

LICENSE_ID = 7


def b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if n == 0:
            return out


def cached(**changes: object) -> CachedLicense:
    fields: dict[str, object] = {"license_id": LICENSE_ID, "version": 1, "status": "active",
                                 "valid_from_ms": 0, "valid_until_ms": None, "device_limit": 10,
                                 "sessions_limit": 3, "interval_s": 1, "timeout_s": 2}
    fields.update(changes)
    return CachedLicense(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def plane(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[SessionPlane]:
    plane = SessionPlane(redis, settings)
    await plane.load_scripts()
    await plane.cache_license(cached(), {f"fp{i}": 100 + i for i in range(10)})
    yield plane


async def events(plane: SessionPlane, license_id: int = LICENSE_ID) -> list:
    shard = keys.shard_of(license_id, plane.shards)
    entries = await plane.redis.xrange(keys.event_stream(shard))
    return [session_event_from_fields(shard, eid, fields) for eid, fields in entries]


async def test_start_creates_session_and_emits_started_event(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1", client_version="1.2", client_ip="10.0.0.1")
    assert out.code is PlaneCode.STARTED and out.token
    assert await plane.live_tokens(LICENSE_ID) == {out.token}
    [ev] = await events(plane)
    assert ev.kind is SessionEventKind.STARTED and ev.session_token == out.token
    assert ev.device_id == 101 and ev.fingerprint == "fp1" and ev.client_version == "1.2"
    assert ev.client_ip == "10.0.0.1" and ev.started_ms == ev.at_ms
    record = await cast("Awaitable[bytes | None]", plane.redis.hget(keys.sessions(LICENSE_ID, plane.shards), out.token))
    assert record == f"101|{b36(ev.started_ms)}||0|10.0.0.1|1.2".encode()


async def test_start_resumes_same_device_with_same_token(plane: SessionPlane) -> None:
    first = await plane.start_session(LICENSE_ID, "fp1")
    again = await plane.start_session(LICENSE_ID, "fp1")
    assert again.code is PlaneCode.RESUMED and again.token == first.token
    assert len(await events(plane)) == 1


async def test_a_session_started_under_the_old_layout_resumes_and_ends_once(plane: SessionPlane) -> None:
    """Upgrade: a session as the scripts wrote it before the fingerprint map went (record, live entry, and
    an `fp` hash the scripts no longer read, left to expire) is resumed by its device and ends with one
    event that still carries the fingerprint."""
    s = plane.shards
    now = await plane.now_ms()
    token = "11111111-1111-4111-8111-111111111111"
    old_fp_map = keys.license_base(LICENSE_ID, s) + "fp"
    await plane.redis.zadd(keys.live_sessions(LICENSE_ID, s), {token: now + 2000})
    await cast("Awaitable[int]", plane.redis.hset(keys.sessions(LICENSE_ID, s), token, f"101|{now}||0|10.0.0.1|1.0"))
    await cast("Awaitable[int]", plane.redis.hset(old_fp_map, "fp1", token))
    await plane.redis.pexpire(old_fp_map, 60_000)
    await plane.redis.incr(keys.live_count(keys.shard_of(LICENSE_ID, s)))
    again = await plane.start_session(LICENSE_ID, "fp1")
    assert again.code is PlaneCode.RESUMED and again.token == token
    assert (await plane.start_session(LICENSE_ID, "fp2")).code is PlaneCode.STARTED
    assert (await plane.heartbeat(LICENSE_ID, token)).code is PlaneCode.OK
    assert await plane.end_session(LICENSE_ID, token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.session_token, ended.device_id, ended.fingerprint, ended.heartbeat_count) == (token, 101, "fp1", 1)
    assert (ended.started_ms, ended.client_ip, ended.client_version) == (now, "10.0.0.1", "1.0")
    assert ended.last_heartbeat_ms is not None and ended.last_heartbeat_ms >= now
    assert 0 < await plane.redis.pttl(old_fp_map) <= 60_000


async def test_a_decimal_record_written_before_base_36_reads_the_same(plane: SessionPlane) -> None:
    """Records written before the times went to base 36 (decimal ms, the last heartbeat absolute) are read
    by the scripts and by seat_holders alike."""
    s = plane.shards
    now = await plane.now_ms()
    token = "22222222-2222-4222-8222-222222222222"
    await plane.redis.zadd(keys.live_sessions(LICENSE_ID, s), {token: now + 2000})
    await cast("Awaitable[int]", plane.redis.hset(keys.sessions(LICENSE_ID, s), token,
                                                  f"102|{now - 5000}|{now - 1000}|41|::1|9|9"))
    _now, [holder] = await plane.seat_holders(LICENSE_ID)
    assert (holder.device_id, holder.started_ms, holder.last_heartbeat_ms) == (102, now - 5000, now - 1000)
    assert await plane.end_session(LICENSE_ID, token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.started_ms, ended.last_heartbeat_ms, ended.heartbeat_count, ended.client_ip,
            ended.client_version) == (now - 5000, now - 1000, 41, "::1", "9|9")


async def test_a_base_36_record_whose_last_heartbeat_an_older_script_wrote_in_ms(plane: SessionPlane) -> None:
    """Old and new scripts side by side during an upgrade: an old heartbeat keeps the base-36 start it
    cannot read and writes the last heartbeat in ms since the epoch; both read back right."""
    s = plane.shards
    now = await plane.now_ms()
    token = "33333333-3333-4333-8333-333333333333"
    await plane.redis.zadd(keys.live_sessions(LICENSE_ID, s), {token: now + 2000})
    await cast("Awaitable[int]", plane.redis.hset(keys.sessions(LICENSE_ID, s), token,
                                                  f"103|{b36(now - 5000)}|{now - 1000}|1|10.0.0.3|1.0"))
    _now, [holder] = await plane.seat_holders(LICENSE_ID)
    assert (holder.device_id, holder.started_ms, holder.last_heartbeat_ms) == (103, now - 5000, now - 1000)
    assert await plane.end_session(LICENSE_ID, token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.started_ms, ended.last_heartbeat_ms, ended.heartbeat_count) == (now - 5000, now - 1000, 1)


def test_an_ended_event_an_older_script_wrote_from_a_base_36_record_reads_in_ms() -> None:
    """An old script ending a session whose record a new one wrote passes the record's base-36 values into
    the event; the worker reads them as ms (not as a malformed event that history would lose)."""
    fields = {"k": "ended", "l": "7", "t": "44444444-4444-4444-8444-444444444444", "r": "timeout",
              "at": "1764537100000", "s": b36(1_764_537_000_000), "lh": b36(69_900), "n": b36(100)}
    event = session_event_from_fields(0, "1764537100000-0", fields)
    assert (event.started_ms, event.last_heartbeat_ms, event.heartbeat_count) == (
        1_764_537_000_000, 1_764_537_069_900, 100)
    event = session_event_from_fields(0, "1764537100000-0", {**fields, "lh": "1764537069900", "n": ""})
    assert (event.started_ms, event.last_heartbeat_ms, event.heartbeat_count) == (
        1_764_537_000_000, 1_764_537_069_900, 0)
    event = session_event_from_fields(0, "1764537100000-0", {**fields, "s": "1764537000000", "lh": "", "n": "12"})
    assert (event.started_ms, event.last_heartbeat_ms, event.heartbeat_count) == (1_764_537_000_000, None, 12)


async def test_seat_holders_and_the_ended_event_read_one_record_alike(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1", client_ip="10.0.0.1")
    assert out.token
    _now, [fresh] = await plane.seat_holders(LICENSE_ID)
    assert fresh.last_heartbeat_ms is None
    assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.OK
    _now, [holder] = await plane.seat_holders(LICENSE_ID)
    assert await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    [started, ended] = await events(plane)
    assert (holder.device_id, holder.started_ms, holder.last_heartbeat_ms) == (
        101, started.started_ms, ended.last_heartbeat_ms)
    assert ended.started_ms == started.started_ms and ended.heartbeat_count == 1
    assert holder.last_heartbeat_ms is not None and holder.last_heartbeat_ms >= holder.started_ms


@pytest.mark.parametrize(("ip", "version"), [
    ("2001:0db8:85a3:1234:5678:8a2e:0370:7334", "1.2.3-rc1"),  # a full IPv6 address
    ("203.0.113.77", "build-2026.11.30-nightly+g3ea257b5f10"),  # a long client version
])
async def test_a_long_record_is_split_and_the_hash_stays_a_listpack(plane: SessionPlane, ip: str,
                                                                   version: str) -> None:
    """A value over hash-max-listpack-value (64 by default) would turn the license's whole session hash
    into a hashtable: the record's ip and version move to field 'x:<token>' instead."""
    ss = keys.sessions(LICENSE_ID, plane.shards)
    tokens = []
    for i in range(3):
        out = await plane.start_session(LICENSE_ID, f"fp{i}", client_version=version, client_ip=ip)
        assert out.token
        tokens.append(out.token)
        assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.OK
        assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.OK
    values = await cast("Awaitable[list[bytes]]", plane.redis.hvals(ss))
    assert max(len(v) for v in values) <= 64
    fields = await cast("Awaitable[list[bytes]]", plane.redis.hkeys(ss))
    assert sorted(f for f in fields if f.startswith(b"x:")) == sorted(b"x:" + t.encode() for t in tokens)
    assert await plane.redis.object("encoding", ss) in (b"listpack", b"ziplist")
    assert (await plane.start_session(LICENSE_ID, "fp0")).token == tokens[0]  # resumes the split record
    _now, holders = await plane.seat_holders(LICENSE_ID)
    assert sorted(h.device_id or 0 for h in holders) == [100, 101, 102]
    assert all(h.last_heartbeat_ms for h in holders)
    assert await plane.end_session(LICENSE_ID, tokens[0], EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.client_ip, ended.client_version, ended.heartbeat_count, ended.fingerprint) == (ip, version, 2, "fp0")
    fields = await cast("Awaitable[list[bytes]]", plane.redis.hkeys(ss))
    assert not [f for f in fields if tokens[0].encode() in f]
    assert await plane.end_license_sessions(LICENSE_ID, EndReason.ADMIN_TERMINATED) == 2
    assert not await plane.redis.exists(ss) or await cast("Awaitable[list[bytes]]", plane.redis.hkeys(ss)) == []


async def test_a_record_whose_tail_alone_is_too_long_stays_whole(plane: SessionPlane) -> None:
    ip, version = "2001:0db8:85a3:1234:5678:8a2e:0370:7334", "v" * 40
    out = await plane.start_session(LICENSE_ID, "fp1", client_version=version, client_ip=ip)
    assert out.token and (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.OK
    assert await cast("Awaitable[list[bytes]]", plane.redis.hkeys(keys.sessions(LICENSE_ID, plane.shards))) == [
        out.token.encode()]
    assert await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.client_ip, ended.client_version, ended.heartbeat_count) == (ip, version, 1)


async def test_end_device_sessions_finds_the_session_by_device_id_once_the_cache_is_gone(
        plane: SessionPlane) -> None:
    """A borrowed session may outlive the cached license and its devices; the caller's device id still
    finds it."""
    gone = await plane.start_session(LICENSE_ID, "fp1")
    kept = await plane.start_session(LICENSE_ID, "fp2")
    await plane.invalidate_license(LICENSE_ID)
    assert await plane.end_device_sessions(LICENSE_ID, "fp1", EndReason.DEVICE_DEACTIVATED, 101) == 1
    assert await plane.live_tokens(LICENSE_ID) == {kept.token}
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.session_token, ended.device_id, ended.fingerprint) == (gone.token, 101, "fp1")


async def test_ended_event_of_a_session_whose_license_cache_is_gone_has_no_fingerprint(
        plane: SessionPlane) -> None:
    """The fingerprint comes from the devices cache; with the cache gone the event has none (history takes
    the live row's, webhooks the device's in PostgreSQL), and everything else is there."""
    out = await plane.start_session(LICENSE_ID, "fp1", client_version="2.0")
    assert out.token
    await plane.invalidate_license(LICENSE_ID)
    assert await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.device_id, ended.fingerprint, ended.client_version, ended.reason) == (
        101, None, "2.0", EndReason.CLIENT_END)


async def test_start_refuses_when_limit_reached_and_ends_nothing(plane: SessionPlane) -> None:
    tokens = [(await plane.start_session(LICENSE_ID, f"fp{i}")).token for i in range(3)]
    out = await plane.start_session(LICENSE_ID, "fp3")
    assert out.code is PlaneCode.SESSION_LIMIT_REACHED
    assert await plane.live_tokens(LICENSE_ID) == set(tokens)


async def test_parallel_starts_never_exceed_limit(plane: SessionPlane) -> None:
    outs = await asyncio.gather(*(plane.start_session(LICENSE_ID, f"fp{i % 10}") for i in range(500)))
    granted = {o.token for o in outs if o.granted}
    assert len(granted) == 3
    assert await plane.redis.zcard(keys.live_sessions(LICENSE_ID, plane.shards)) == 3
    assert sum(o.code is PlaneCode.STARTED for o in outs) == 3


async def test_start_refuses_unknown_device_and_uncached_license(plane: SessionPlane) -> None:
    assert (await plane.start_session(LICENSE_ID, "stranger")).code is PlaneCode.DEVICE_NOT_ACTIVATED
    assert (await plane.start_session(LICENSE_ID + 1, "fp1")).code is PlaneCode.LICENSE_NOT_CACHED


async def test_start_caches_an_offered_device_only_with_the_session_it_grants(plane: SessionPlane) -> None:
    for i in range(3):
        assert (await plane.start_session(LICENSE_ID, f"fp{i}")).granted
    refused = await plane.start_session(LICENSE_ID, "newcomer", device_id=555)
    assert refused.code is PlaneCode.SESSION_LIMIT_REACHED
    assert await plane.cached_device(LICENSE_ID, "newcomer") is None
    assert await plane.end_session(LICENSE_ID, (await plane.start_session(LICENSE_ID, "fp0")).token or "",
                                   EndReason.CLIENT_END)
    granted = await plane.start_session(LICENSE_ID, "newcomer", device_id=555)
    assert granted.code is PlaneCode.STARTED
    assert await plane.cached_device(LICENSE_ID, "newcomer") == 555
    started = [e for e in await events(plane) if e.session_token == granted.token]
    assert [(e.kind, e.device_id) for e in started] == [(SessionEventKind.STARTED, 555)]


async def test_suspend_license_switches_the_cache_and_ends_sessions_with_no_start_in_between(
        plane: SessionPlane) -> None:
    """Starts racing a suspension: once it returns nothing is live, and every session granted was ended
    as license_suspended (ending sessions and switching the cache in two steps lets starts slip in)."""
    devices = {f"fp{i}": 100 + i for i in range(10)}

    async def hammer(fingerprint: str) -> set[PlaneCode]:
        seen = set()
        while True:
            out = await plane.start_session(LICENSE_ID, fingerprint)
            seen.add(out.code)
            if not out.granted:
                return seen

    for version in range(2, 42, 2):
        await plane.cache_license(cached(version=version, sessions_limit=10), devices)
        racers = [asyncio.ensure_future(hammer(fp)) for fp in devices]
        await asyncio.sleep(0.005)
        assert await plane.suspend_license(LICENSE_ID, "suspended", version + 1) >= 0
        codes = set().union(*await asyncio.gather(*racers))
        assert await plane.live_tokens(LICENSE_ID) == set()
        assert codes <= {PlaneCode.STARTED, PlaneCode.RESUMED, PlaneCode.LICENSE_SUSPENDED}
        assert (await plane.cached_license(LICENSE_ID)).status == "suspended"  # type: ignore[union-attr]
    started = {e.session_token for e in await events(plane) if e.kind is SessionEventKind.STARTED}
    ended_events = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert sorted(e.session_token for e in ended_events) == sorted(started)
    assert {e.reason for e in ended_events} <= {EndReason.LICENSE_SUSPENDED}


async def test_suspend_license_leaves_a_newer_cached_version_alone(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=9), {"fp1": 101})
    token = (await plane.start_session(LICENSE_ID, "fp1")).token
    assert await plane.suspend_license(LICENSE_ID, "suspended", 8) == -1
    assert (await plane.cached_license(LICENSE_ID)).status == "active"  # type: ignore[union-attr]
    assert await plane.live_tokens(LICENSE_ID) == {token}
    assert await plane.suspend_license(LICENSE_ID, "revoked", 10) == 1
    lic = await plane.cached_license(LICENSE_ID)
    assert lic is not None and (lic.status, lic.version) == ("revoked", 10)
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.LICENSE_REVOKED


async def test_start_refuses_inactive_licenses(plane: SessionPlane) -> None:
    now = await plane.now_ms()
    cases = {
        PlaneCode.LICENSE_SUSPENDED: cached(version=2, status="suspended"),
        PlaneCode.LICENSE_REVOKED: cached(version=3, status="revoked"),
        PlaneCode.LICENSE_EXPIRED: cached(version=4, valid_from_ms=now - 10_000, valid_until_ms=now - 1),
        PlaneCode.LICENSE_NOT_YET_VALID: cached(version=5, valid_from_ms=now + 60_000),
    }
    for code, lic in cases.items():
        assert await plane.cache_license(lic, {"fp1": 101})
        assert (await plane.start_session(LICENSE_ID, "fp1")).code is code


async def test_cache_license_keeps_newer_version(plane: SessionPlane) -> None:
    assert await plane.cache_license(cached(version=5, sessions_limit=1), {"fp1": 101})
    assert not await plane.cache_license(cached(version=4, sessions_limit=3), {"fp1": 101})
    got = await plane.cached_license(LICENSE_ID)
    assert got is not None and got.version == 5 and got.sessions_limit == 1


async def test_heartbeat_extends_deadline_and_records_event(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp2")
    assert out.token
    hb = await plane.heartbeat(LICENSE_ID, out.token)
    assert hb.code is PlaneCode.OK and hb.deadline_ms >= out.deadline_ms and hb.interval_s == 1
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    [(eid, fields)] = await plane.redis.xrange(keys.heartbeat_stream(shard))
    event = heartbeat_from_fields(shard, eid, fields)
    assert event.license_id == LICENSE_ID and event.session_token == out.token and event.device_id == 102
    record = await cast("Awaitable[bytes | None]", plane.redis.hget(keys.sessions(LICENSE_ID, plane.shards), out.token))
    assert record is not None and record.split(b"|")[3] == b"1"
    deadline = await plane.redis.zscore(keys.deadlines(shard), str(LICENSE_ID))
    assert deadline == hb.deadline_ms, "the license is indexed with its (only) session's deadline"


async def test_heartbeat_too_frequent_is_refused_and_not_recorded(redis: aioredis.Redis,
                                                                  settings: Settings) -> None:
    plane = SessionPlane(redis, settings.replace(heartbeat_min_gap_ms=60_000))
    await plane.cache_license(cached(), {"fp1": 101})
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    hb = await plane.heartbeat(LICENSE_ID, out.token)
    assert hb.code is PlaneCode.HEARTBEAT_TOO_FREQUENT and 0 < hb.retry_after_ms <= 60_000
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    assert await redis.xlen(keys.heartbeat_stream(shard)) == 0


@pytest.mark.parametrize(("interval_s", "mirror_s", "marked"), [
    (1, 3, [1, 3, 6, 9]),            # K = 3: the first and every third heartbeat
    (10, 35, [1, 3, 6, 9]),          # K = floor(35 / 10) = 3
    (30, 0, list(range(1, 11))),     # 0: every heartbeat
    (30, 20, list(range(1, 11))),    # a mirror interval below the license's interval: every heartbeat
])
async def test_heartbeat_marks_the_first_and_every_kth_beat_with_the_plane_count(
        redis: aioredis.Redis, settings: Settings, interval_s: int, mirror_s: int, marked: list[int]) -> None:
    plane = SessionPlane(redis, settings.replace(heartbeat_min_gap_ms=0, heartbeat_mirror_s=mirror_s))
    await plane.load_scripts()
    await plane.cache_license(cached(interval_s=interval_s, timeout_s=interval_s * 2), {"fp1": 101})
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    for _ in range(10):
        assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.OK
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    entries = await redis.xrange(keys.heartbeat_stream(shard))
    # 'h' as a worker of the release before reads it (three parts), the count in a field of its own
    for _, fields in entries:
        assert set(fields) <= {b"h", b"n"} and len(fields[b"h"].split(b"|")) == 3
    beats = [heartbeat_from_fields(shard, eid, fields) for eid, fields in entries]
    assert len(beats) == 10
    assert all((b.license_id, b.session_token, b.device_id, b.legacy) == (LICENSE_ID, out.token, 101, False)
               for b in beats)
    assert [b.mirror_count for b in beats] == [n if n in marked else None for n in range(1, 11)]


async def test_heartbeat_on_suspended_license_ends_session(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    await plane.cache_license(cached(version=2, status="suspended"), {"fp1": 101})
    assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.LICENSE_SUSPENDED
    assert not await plane.is_live(LICENSE_ID, out.token)
    ended = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert [e.reason for e in ended] == [EndReason.LICENSE_SUSPENDED]


async def test_heartbeat_unknown_token_is_not_found(plane: SessionPlane) -> None:
    hb = await plane.heartbeat(LICENSE_ID, "00000000-0000-4000-8000-000000000000")
    assert hb.code is PlaneCode.SESSION_NOT_FOUND


async def test_end_session_emits_exactly_one_ended_event(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    await plane.heartbeat(LICENSE_ID, out.token)
    assert await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    assert not await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    ended = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert len(ended) == 1
    assert ended[0].reason is EndReason.CLIENT_END and ended[0].heartbeat_count == 1
    assert ended[0].device_id == 101 and ended[0].last_heartbeat_ms is not None
    assert ended[0].fingerprint == "fp1"
    assert await cast("Awaitable[bytes | None]", plane.redis.hget(keys.sessions(LICENSE_ID, plane.shards), out.token)) is None


async def test_end_device_sessions_ends_only_that_device_and_uncaches_it(plane: SessionPlane) -> None:
    a = await plane.start_session(LICENSE_ID, "fp1")
    b = await plane.start_session(LICENSE_ID, "fp2")
    assert await plane.end_device_sessions(LICENSE_ID, "fp1", EndReason.DEVICE_DEACTIVATED) == 1
    assert await plane.live_tokens(LICENSE_ID) == {b.token}
    assert a.token is not None and await plane.cached_device(LICENSE_ID, "fp1") is None
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.DEVICE_NOT_ACTIVATED


async def test_end_license_sessions_ends_all(plane: SessionPlane) -> None:
    for i in range(3):
        await plane.start_session(LICENSE_ID, f"fp{i}")
    assert await plane.end_license_sessions(LICENSE_ID, EndReason.ADMIN_TERMINATED) == 3
    assert await plane.live_tokens(LICENSE_ID) == set()
    reasons = [e.reason for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert reasons == [EndReason.ADMIN_TERMINATED] * 3


async def test_expired_session_stops_counting_and_start_purges_it(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=2, sessions_limit=1, timeout_s=2), {"fp1": 101, "fp2": 102})
    old = await plane.start_session(LICENSE_ID, "fp1")
    assert (await plane.start_session(LICENSE_ID, "fp2")).code is PlaneCode.SESSION_LIMIT_REACHED
    await asyncio.sleep(2.1)
    new = await plane.start_session(LICENSE_ID, "fp2")
    assert new.code is PlaneCode.STARTED
    ended = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert [(e.session_token, e.reason) for e in ended] == [(old.token, EndReason.TIMEOUT)]


async def test_reap_ends_expired_sessions_as_timeout_once(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=2, timeout_s=2), {"fp1": 101, "fp2": 102})
    await plane.start_session(LICENSE_ID, "fp1")
    await plane.start_session(LICENSE_ID, "fp2")
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    assert await plane.reap_expired(shard) == 0
    await asyncio.sleep(2.1)
    assert await plane.reap_expired(shard) == 2
    assert await plane.reap_expired(shard) == 0
    assert await plane.redis.zcard(keys.deadlines(shard)) == 0
    reasons = [e.reason for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert reasons == [EndReason.TIMEOUT, EndReason.TIMEOUT]


async def test_end_after_timeout_records_timeout_not_client_end(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=2, timeout_s=2), {"fp1": 101})
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    await asyncio.sleep(2.1)
    assert not await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    reasons = [e.reason for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert reasons == [EndReason.TIMEOUT]


async def test_scripts_reload_after_script_flush(plane: SessionPlane) -> None:
    await plane.redis.script_flush()
    assert (await plane.start_session(LICENSE_ID, "fp1")).code is PlaneCode.STARTED


async def test_invalidate_license_drops_cache_but_keeps_sessions(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1")
    await plane.invalidate_license(LICENSE_ID)
    assert await plane.cached_license(LICENSE_ID) is None
    assert out.token is not None and await plane.is_live(LICENSE_ID, out.token)
    assert (await plane.heartbeat(LICENSE_ID, out.token)).code is PlaneCode.LICENSE_NOT_CACHED


async def test_key_functions_match_the_layout_the_scripts_use(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1")
    assert out.token
    s = plane.shards
    base = keys.license_base(LICENSE_ID, s)
    assert keys.license_hash(LICENSE_ID, s) == base + keys.LICENSE_SUFFIX
    assert keys.devices(LICENSE_ID, s) == base + keys.DEVICES_SUFFIX
    assert keys.live_sessions(LICENSE_ID, s) == base + keys.LIVE_SUFFIX
    assert keys.sessions(LICENSE_ID, s) == base + keys.SESSIONS_SUFFIX
    assert keys.license_keys(LICENSE_ID, s) == [keys.license_hash(LICENSE_ID, s), keys.devices(LICENSE_ID, s),
                                             keys.live_sessions(LICENSE_ID, s), keys.sessions(LICENSE_ID, s)]
    for key in keys.license_keys(LICENSE_ID, s):
        assert await plane.redis.exists(key) == 1, key
    # the four keys are all a session leaves in Redis besides the shard's keys
    found = {k.decode() for k in await plane.redis.keys(base + "*")}
    assert found == set(keys.license_keys(LICENSE_ID, s))


async def test_cache_license_ends_sessions_of_devices_no_longer_active(plane: SessionPlane) -> None:
    gone = await plane.start_session(LICENSE_ID, "fp1")
    kept = await plane.start_session(LICENSE_ID, "fp2")
    assert await plane.cache_license(cached(version=2), {"fp2": 102})
    assert await plane.live_tokens(LICENSE_ID) == {kept.token}
    ended = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert [(e.session_token, e.reason, e.fingerprint) for e in ended] == [
        (gone.token, EndReason.DEVICE_DEACTIVATED, "fp1")]


async def test_client_version_with_separator_survives_the_packed_record(plane: SessionPlane) -> None:
    out = await plane.start_session(LICENSE_ID, "fp1", client_version="7.0|beta", client_ip="::1")
    assert out.token
    await plane.heartbeat(LICENSE_ID, out.token)
    await plane.end_session(LICENSE_ID, out.token, EndReason.CLIENT_END)
    [ended] = [e for e in await events(plane) if e.kind is SessionEventKind.ENDED]
    assert (ended.client_version, ended.client_ip, ended.heartbeat_count, ended.device_id) == (
        "7.0|beta", "::1", 1, 101)
    assert ended.fingerprint == "fp1" and ended.last_heartbeat_ms is not None


async def test_session_keys_expire_after_grace_if_no_reaper_runs(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=2, timeout_s=2), {"fp1": 101})
    await plane.start_session(LICENSE_ID, "fp1")
    s = plane.shards
    for key in (keys.live_sessions(LICENSE_ID, s), keys.sessions(LICENSE_ID, s)):
        ttl = await plane.redis.pttl(key)
        assert 2000 < ttl <= 2000 + keys.SESSION_GRACE_MS, key


async def test_deadline_index_holds_each_license_once_at_its_earliest_deadline(plane: SessionPlane) -> None:
    first = await plane.start_session(LICENSE_ID, "fp1")
    second = await plane.start_session(LICENSE_ID, "fp2")
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    assert await plane.redis.zrange(keys.deadlines(shard), 0, -1, withscores=True) == [
        (str(LICENSE_ID).encode(), float(first.deadline_ms))]
    assert first.token and second.token
    assert await plane.end_session(LICENSE_ID, first.token, EndReason.CLIENT_END)
    assert await plane.redis.zscore(keys.deadlines(shard), str(LICENSE_ID)) == second.deadline_ms
    assert await plane.end_session(LICENSE_ID, second.token, EndReason.CLIENT_END)
    assert await plane.redis.zcard(keys.deadlines(shard)) == 0


async def test_live_count_follows_starts_and_ends(plane: SessionPlane) -> None:
    other = LICENSE_ID + 1
    await plane.cache_license(cached(license_id=other), {"fp1": 201})
    tokens = [(await plane.start_session(LICENSE_ID, f"fp{i}")).token for i in range(3)]
    await plane.start_session(other, "fp1")
    await plane.start_session(LICENSE_ID, "fp0")  # a resume is not a new session
    assert await plane.live_count() == 4
    assert tokens[0] and await plane.end_session(LICENSE_ID, tokens[0], EndReason.CLIENT_END)
    assert await plane.end_license_sessions(other, EndReason.ADMIN_TERMINATED) == 1
    assert await plane.live_count() == 2


async def test_reap_respects_its_limit_and_reports_when_the_shard_is_done(plane: SessionPlane) -> None:
    await plane.cache_license(cached(version=2, timeout_s=2), {f"fp{i}": 100 + i for i in range(3)})
    for i in range(3):
        await plane.start_session(LICENSE_ID, f"fp{i}")
    await asyncio.sleep(2.1)
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    assert await plane.reap_expired(shard, limit=1) == 3  # one license: all its expired sessions at once
    assert await plane.reap_expired(shard, limit=1) == 0
    assert await plane.live_count() == 0
