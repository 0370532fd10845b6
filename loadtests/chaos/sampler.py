"""Continuous samples taken beside the population, straight from Redis and PostgreSQL (not through the
proxies the faults cut): the limits of every license, and whether the worker's backlog is drained.

- Redis, every half second: per license, sessions whose deadline is still ahead (what start.lua counts
  against the limit) and the cached active devices, read together by one small script on the license's
  slot, so the count is taken at one instant of the Redis clock.
- PostgreSQL, every second: active devices per license (never over, whatever the lag), and open
  `license_sessions` rows.  The latter is a mirror that lags the plane (two workers may store a session's
  start before another's end; a killed worker's entries wait to be claimed; lost sessions are closed by
  reconciliation), so only a license over its limit for longer than `mirror_grace_s` is a violation.
- The backlog, every half second: drained when every shard's consumer group has been handed every entry
  of its stream and holds none unacknowledged, i.e. everything accepted before the sample is committed.
  A Redis crash can lose only what was accepted after the last drained sample before it: that is how
  the checks tell the documented loss window from a real loss.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from heartline.plane import keys
from loadtests.chaos.ledger import BacklogSample, Ledger
from loadtests.seed import SeededLicense

# KEYS: 1 the license's live zset, 2 its devices hash.  Reply: {sessions with a deadline ahead, devices}.
LIVE_AND_DEVICES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), redis.call('HLEN', KEYS[2])}
"""

PG_LIMITS = """
SELECT l.id, l.device_limit, l.concurrent_sessions_limit,
       (SELECT count(*) FROM device_registrations d WHERE d.license_id = l.id AND d.is_active) AS devices,
       (SELECT count(*) FROM license_sessions s WHERE s.license_id = l.id) AS sessions
  FROM licenses l WHERE l.id = ANY($1::bigint[])
"""


def _stream_id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def backlog_drained(redis: aioredis.Redis, shards: int) -> tuple[bool, bool]:
    """(heartbeats drained, session events drained) across all shards."""
    results = []
    for stream_key, group in ((keys.heartbeat_stream, keys.HEARTBEAT_GROUP),
                              (keys.event_stream, keys.EVENT_GROUP)):
        async with redis.pipeline(transaction=False) as pipe:
            for shard in keys.all_shards(shards):
                pipe.xinfo_stream(stream_key(shard))
                pipe.xinfo_groups(stream_key(shard))
            replies = await pipe.execute(raise_on_error=False)
        drained = True
        for stream, groups in zip(replies[0::2], replies[1::2], strict=True):
            if isinstance(stream, Exception):
                if "no such key" in str(stream).lower():
                    continue   # nothing was ever written (or Redis came back empty): nothing waits
                raise stream
            if isinstance(groups, Exception):
                raise groups
            found = [g for g in groups if _text(g["name"]) == group]
            if not found or found[0]["pending"] or (
                    _stream_id(found[0]["last-delivered-id"]) < _stream_id(stream["last-generated-id"])):
                drained = False
        results.append(drained)
    return results[0], results[1]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Sampler:
    def __init__(self, ledger: Ledger, redis_url: str, database_url: str, licenses: list[SeededLicense],
                 shards: int, mirror_grace_s: float) -> None:
        self.ledger = ledger
        self.redis_url = redis_url
        self.database_url = database_url
        self.licenses = licenses
        self.shards = shards
        self.mirror_grace_s = mirror_grace_s
        self._mirror_over_since: dict[int, float] = {}
        self._mirror_reported: set[tuple[int, float]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=3, socket_connect_timeout=3)
        try:
            await asyncio.gather(self._every(stop, 0.5, lambda: self._redis_limits(redis)),
                                 self._every(stop, 0.5, lambda: self._backlog(redis)),
                                 self._every(stop, 1.0, self._postgres_limits))
        finally:
            await redis.aclose()

    @staticmethod
    async def _every(stop: asyncio.Event, seconds: float, sample: Any) -> None:
        while not stop.is_set():
            try:
                await sample()
            except (RedisError, OSError, asyncpg.PostgresError, TimeoutError):
                pass   # Redis being restarted: no sample this time
            try:
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            except TimeoutError:
                pass

    async def _redis_limits(self, redis: aioredis.Redis) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for lic in self.licenses:
                pipe.eval(LIVE_AND_DEVICES, 2, keys.live_sessions(lic.id, self.shards),
                          keys.devices(lic.id, self.shards))
            replies = await pipe.execute()
        now = time.time()
        for lic, (live, devices) in zip(self.licenses, replies, strict=True):
            if int(live) > lic.sessions_limit:
                self.ledger.over_limit.append(f"{now:.3f} redis: license {lic.id} has {live} live sessions, "
                                              f"limit {lic.sessions_limit}")
            if int(devices) > lic.device_limit:
                self.ledger.over_limit.append(f"{now:.3f} redis: license {lic.id} has {devices} cached "
                                              f"active devices, limit {lic.device_limit}")
        self.ledger.samples["redis limits"] += 1

    async def _backlog(self, redis: aioredis.Redis) -> None:
        taken = time.time()
        heartbeats, events = await backlog_drained(redis, self.shards)
        self.ledger.backlog.append(BacklogSample(taken, heartbeats, events))
        self.ledger.samples["backlog"] += 1

    async def _postgres_limits(self) -> None:
        conn = await asyncpg.connect(self.database_url, timeout=5, command_timeout=5)
        try:
            rows = await conn.fetch(PG_LIMITS, [lic.id for lic in self.licenses])
        finally:
            await conn.close()
        now = time.time()
        for row in rows:
            if row["devices"] > row["device_limit"]:
                self.ledger.over_limit.append(f"{now:.3f} postgres: license {row['id']} has {row['devices']} "
                                              f"active devices, limit {row['device_limit']}")
            if row["sessions"] > row["concurrent_sessions_limit"]:
                since = self._mirror_over_since.setdefault(row["id"], now)
                if now - since > self.mirror_grace_s and (row["id"], since) not in self._mirror_reported:
                    self._mirror_reported.add((row["id"], since))
                    self.ledger.over_limit.append(
                        f"{now:.3f} postgres: license {row['id']} has had more open license_sessions rows "
                        f"than its limit {row['concurrent_sessions_limit']} for {now - since:.0f} s "
                        f"({row['sessions']} now)")
            else:
                self._mirror_over_since.pop(row["id"], None)
        self.ledger.samples["postgres limits"] += 1
