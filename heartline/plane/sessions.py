"""`SessionPlane`: the Python face of the Redis session plane, shared by edge, worker and admin.

Every change goes through one Lua script (see scripts.py), so each decision is atomic and time comes
from the Redis server.  Outcomes are returned as `PlaneCode`s; turning them into HTTP answers is the
edge's business.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import EndReason, RefusalOperation
from heartline.plane.scripts import REAP_BATCH, PlaneScripts
from heartline.settings import Settings


class PlaneCode(StrEnum):
    STARTED = "STARTED"
    RESUMED = "RESUMED"
    OK = "OK"
    LICENSE_NOT_CACHED = "LICENSE_NOT_CACHED"
    LICENSE_SUSPENDED = "LICENSE_SUSPENDED"
    LICENSE_REVOKED = "LICENSE_REVOKED"
    LICENSE_EXPIRED = "LICENSE_EXPIRED"
    LICENSE_NOT_YET_VALID = "LICENSE_NOT_YET_VALID"
    DEVICE_NOT_ACTIVATED = "DEVICE_NOT_ACTIVATED"
    SESSION_LIMIT_REACHED = "SESSION_LIMIT_REACHED"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    HEARTBEAT_TOO_FREQUENT = "HEARTBEAT_TOO_FREQUENT"
    BORROWED = "BORROWED"
    BORROW_NOT_ALLOWED = "BORROW_NOT_ALLOWED"
    BORROW_TOO_LONG = "BORROW_TOO_LONG"
    BORROW_IN_PAST = "BORROW_IN_PAST"


# a script's reply code, as bytes or str (decode_responses), -> its PlaneCode without an enum lookup
_CODES: dict[bytes | str, PlaneCode] = {**{code.value.encode(): code for code in PlaneCode},
                                        **{code.value: code for code in PlaneCode}}


@dataclass(frozen=True, slots=True)
class StartOutcome:
    code: PlaneCode
    token: str | None = None
    deadline_ms: int = 0
    interval_s: int = 0
    timeout_s: int = 0
    offline_grace_s: int = 0
    # SESSION_LIMIT_REACHED: the license's limit and the seats in use when the plane refused, the live
    # queue tickets waiting, and the caller's ticket ('' unless queued) with its 1-based position
    limit: int = 0
    in_use: int = 0
    waiting: int = 0
    ticket: str = ""
    position: int = 0

    @property
    def granted(self) -> bool:
        return self.code in (PlaneCode.STARTED, PlaneCode.RESUMED)


class HeartbeatOutcome(msgspec.Struct, frozen=True):
    """What a heartbeat got (a msgspec struct, not a dataclass: a frozen dataclass takes ~1 µs to build,
    once per heartbeat)."""

    code: PlaneCode
    deadline_ms: int = 0
    interval_s: int = 0
    retry_after_ms: int = 0
    offline_grace_s: int = 0
    # SESSION_LIMIT_REACHED (a lapsed session no seat is free to revive): the limit and the seats in use
    limit: int = 0
    in_use: int = 0


@dataclass(frozen=True, slots=True)
class BorrowOutcome:
    code: PlaneCode
    until_ms: int = 0           # BORROWED: the seat is held until then; BORROW_TOO_LONG: the latest allowed
    offline_grace_s: int = 0
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class SeatHolder:
    """A live session as a full license shows it: no token, no fingerprint."""

    device_id: int | None
    started_ms: int
    last_heartbeat_ms: int | None
    deadline_ms: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def session_record_times(record: str) -> tuple[int | None, int, int | None]:
    """Device id, started ms and last heartbeat ms (None before the first) of a session record
    (keys.sessions): 'device id|started|last heartbeat|count|...', times in base 36, the last heartbeat
    in ms after started; a record written before that layout is decimal ms (a started of 12 characters
    or more).  Missing parts read as None / 0."""
    device, started, last = ([*record.split("|", 3), "", "", ""])[:3]
    if len(started) >= 12:
        return int(device) if device else None, int(started), int(last) if last else None
    started_ms = _signed_b36(started) if started else 0
    if len(last) >= 12:  # written in ms since the epoch by a heartbeat script older than the record
        return int(device) if device else None, started_ms, int(last)
    return (int(device) if device else None, started_ms,
            started_ms + _signed_b36(last) if last else None)


def _signed_b36(text: str) -> int:
    return -int(text[1:], 36) if text.startswith("-") else int(text, 36)


def new_session_token() -> str:
    """Session tokens are UUID v4: unguessable, and the worker stores them in uuid columns."""
    return str(uuid.uuid4())


class SessionPlane:
    """The session plane on one Redis client (decode_responses either way)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, scripts_client: Any = None) -> None:
        """`scripts_client`, when given, runs the Lua scripts instead of `redis` — the edge's
        `heartline.plane.redis.single.MultiplexedRedis`, so the scripts of all requests in flight share one
        socket write (docs/performance.md); every other call stays on `redis`."""
        self.redis = redis
        self.settings = settings
        self.shards = settings.stream_shards
        self.scripts = PlaneScripts(redis if scripts_client is None else scripts_client,
                                    shards=settings.stream_shards, max_len=settings.stream_max_len,
                                    mirror_s=settings.heartbeat_mirror_s)

    async def load_scripts(self) -> None:
        await self.scripts.load()

    # -- sessions -------------------------------------------------------------------------------------

    async def start_session(self, license_id: int, fingerprint: str, *, client_version: str = "",
                            client_ip: str = "", token: str | None = None,
                            device_id: int | None = None, queue: bool = False,
                            ticket: str | None = None) -> StartOutcome:
        """Start a session for an activated device, or resume the device's live one (same token).

        `device_id`: an activation of `fingerprint` not yet committed in PostgreSQL; the device enters
        the plane's devices cache only if the session is granted (the caller commits then, and rolls
        back otherwise).  `queue`: refused for the limit, the device takes a ticket in the license's
        seat queue (or renews `ticket`, the one it holds); seats go to live tickets in their order."""
        reply = await self.scripts.start(license_id, fingerprint, token or new_session_token(),
                                         client_version, client_ip, device_id, queue=queue or bool(ticket),
                                         ticket=ticket or "", new_ticket=new_session_token(),
                                         ticket_ms=self.settings.queue_ticket_s * 1000)
        code = PlaneCode(_text(reply[0]))
        if code in (PlaneCode.STARTED, PlaneCode.RESUMED):
            return StartOutcome(code=code, token=_text(reply[1]), deadline_ms=int(reply[2]),
                                interval_s=int(reply[3]), timeout_s=int(reply[4]),
                                offline_grace_s=int(reply[5]))
        if code is PlaneCode.SESSION_LIMIT_REACHED:
            return StartOutcome(code=code, limit=int(reply[1]), in_use=int(reply[2]), waiting=int(reply[3]),
                                ticket=_text(reply[4]), position=int(reply[5]))
        return StartOutcome(code=code)

    async def record_refusal(self, license_id: int, code: str, fingerprint: str, device_id: int | None,
                             operation: RefusalOperation) -> str:
        """Record a refusal that PostgreSQL decided (start.lua records its own): one `refused` event in
        the license's shard stream, for denial analytics and session.refused.  Returns its entry id."""
        return await self.scripts.refuse(license_id, code, fingerprint, device_id, str(operation))

    async def heartbeat(self, license_id: int, token: str) -> HeartbeatOutcome:
        """Extend a live session and record the heartbeat: one EVALSHA, one round trip."""
        reply = await self.scripts.heartbeat(license_id, token, self.settings.heartbeat_min_gap_ms)
        code = _CODES.get(reply[0]) or PlaneCode(_text(reply[0]))
        if code is PlaneCode.OK:
            return HeartbeatOutcome(code=code, deadline_ms=int(reply[1]), interval_s=int(reply[2]),
                                    offline_grace_s=int(reply[3]))
        if code is PlaneCode.HEARTBEAT_TOO_FREQUENT:
            return HeartbeatOutcome(code=code, retry_after_ms=int(reply[1]))
        if code is PlaneCode.SESSION_LIMIT_REACHED:
            return HeartbeatOutcome(code=code, limit=int(reply[1]), in_use=int(reply[2]))
        return HeartbeatOutcome(code=code)

    async def borrow(self, license_id: int, token: str, until_ms: int) -> BorrowOutcome:
        """Hold a live session's seat until `until_ms` (Redis server clock) whether or not it beats, within
        the license's max_borrow_s; the reaper ends it then as borrow_expired."""
        reply = await self.scripts.borrow(license_id, token, until_ms)
        code = PlaneCode(_text(reply[0]))
        if code is PlaneCode.BORROWED:
            return BorrowOutcome(code=code, until_ms=int(reply[1]), offline_grace_s=int(reply[2]),
                                 fingerprint=_text(reply[3]))
        if code is PlaneCode.BORROW_TOO_LONG:
            return BorrowOutcome(code=code, until_ms=int(reply[1]))
        return BorrowOutcome(code=code)

    async def end_session(self, license_id: int, token: str, reason: EndReason) -> bool:
        """End one session; False when it was not live (or had already timed out)."""
        return await self.scripts.end(license_id, token, str(reason)) == 1

    async def end_license_sessions(self, license_id: int, reason: EndReason) -> int:
        return await self.scripts.end_license(license_id, str(reason))

    async def suspend_license(self, license_id: int, status: str, version: int,
                              reason: EndReason = EndReason.LICENSE_SUSPENDED) -> int:
        """Switch the cached license to `status` (suspended, revoked) and end its live sessions with
        `reason`, in one atomic step; `version` is the licenses row's version carrying the status.
        Returns the sessions ended, or -1 when a newer version is already cached (nothing changed)."""
        return await self.scripts.suspend_license(license_id, status, version, str(reason))

    async def end_device_sessions(self, license_id: int, fingerprint: str, reason: EndReason,
                                  device_id: int | None = None) -> int:
        """End the device's sessions and drop it from the devices cache (PostgreSQL decides again).

        `device_id`, the device's id in PostgreSQL, finds its session when the devices cache no longer
        has the fingerprint (it expires with the cached license, a borrowed session may outlive it);
        without it the cache's mapping is used."""
        if not fingerprint:
            return 0
        return await self.scripts.end_license(license_id, str(reason), fingerprint, device_id)

    async def reap_expired(self, shard: int, limit: int = 1000) -> int:
        """End the sessions of one shard past their deadline, as timeout; returns how many.

        Stops once `limit` are ended (the licenses being visited are finished, so a few more may end):
        less than `limit` means the shard has no expired session left."""
        ended = 0
        while ended < limit:
            due = await self.scripts.due(shard, REAP_BATCH)
            if not due:
                break
            ended += await self.scripts.reap(shard, due)
        return ended

    async def recount_live(self, shard: int) -> int:
        """Set the shard's live counter to the sessions its licenses hold (it drifts when session keys
        expire with no reaper running); returns the drift repaired (counted minus held)."""
        while True:
            members = await self.redis.zrange(keys.deadlines(shard), 0, -1)
            drift, retry = await self.scripts.recount(shard, [int(m) for m in members])
            if not retry:
                return drift

    async def live_tokens(self, license_id: int) -> set[str]:
        """Tokens of the license's live sessions (those past their deadline excluded)."""
        now = await self.now_ms()
        members = await self.redis.zrangebyscore(keys.live_sessions(license_id, self.shards),
                                                 f"({now}", "+inf")
        return {_text(m) for m in members}

    async def seat_holders(self, license_id: int) -> tuple[int, list[SeatHolder]]:
        """Redis time and the license's live sessions, earliest deadline first (for a refused start).

        Two reads on the refusal path only: the live zset with deadlines, then the sessions' records."""
        now = await self.now_ms()
        live = await self.redis.zrangebyscore(keys.live_sessions(license_id, self.shards), f"({now}", "+inf",
                                              withscores=True)
        if not live:
            return now, []
        tokens = [_text(token) for token, _ in live]
        # redis-py types its hash commands for both clients (Awaitable[T] | T); this one is asyncio's
        records = await cast("Awaitable[list[bytes | str | None]]",
                             self.redis.hmget(keys.sessions(license_id, self.shards), tokens))
        holders = []
        for (_token, deadline), record in zip(live, records, strict=True):
            device, started, last = session_record_times(_text(record) if record is not None else "")
            holders.append(SeatHolder(device_id=device, started_ms=started, last_heartbeat_ms=last,
                                      deadline_ms=int(deadline)))
        return now, holders

    async def is_live(self, license_id: int, token: str) -> bool:
        score = await self.redis.zscore(keys.live_sessions(license_id, self.shards), token)
        return score is not None and score > await self.now_ms()

    async def live_count(self) -> int:
        """Sessions live across all shards, for metrics (expired ones count until reaped, a second or two)."""
        # GETs in a pipeline, not one MGET: the counters live on different cluster slots.
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in keys.all_shards(self.shards):
                pipe.get(keys.live_count(shard))
            counts = await pipe.execute()
        return sum(int(c) for c in counts if c is not None)

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- license cache --------------------------------------------------------------------------------

    async def cache_license(self, license: CachedLicense, devices: dict[str, int]) -> bool:
        """Write license and active devices as read from PostgreSQL; False if a newer version is cached.

        Live sessions of devices missing from `devices` are ended (device_deactivated): PostgreSQL is the
        record of which devices are active."""
        return await self.scripts.cache_license(license.license_id, license.version, license.fields(),
                                                devices) >= 0

    async def invalidate_license(self, license_id: int) -> None:
        """Drop the cached license and devices so the next request reloads them from PostgreSQL."""
        await self.scripts.forget_license(license_id)

    async def cached_license(self, license_id: int) -> CachedLicense | None:
        raw = await cast("Awaitable[dict[bytes, bytes] | dict[str, str]]",
                         self.redis.hgetall(keys.license_hash(license_id, self.shards)))
        return CachedLicense.from_hash(raw)

    async def cached_entitlements(self, license_id: int) -> list[str]:
        """The entitlement codes of the cached license (empty when it has none or is not cached)."""
        raw = await cast("Awaitable[bytes | str | None]",
                         self.redis.hget(keys.license_hash(license_id, self.shards), "entitlements"))
        text = _text(raw) if raw is not None else ""
        return [code for code in text.split(",") if code]

    async def cached_device(self, license_id: int, fingerprint: str) -> int | None:
        raw = await cast("Awaitable[bytes | str | None]", self.redis.hget(keys.devices(license_id, self.shards),
                                                                  fingerprint))
        return int(raw) if raw is not None else None
