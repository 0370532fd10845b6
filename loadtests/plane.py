"""A session plane filled for a benchmark: licenses cached and sessions started through the plane's own
API, and what they cost in Redis memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from heartline import db
from heartline.license_cache import LICENSE_COLUMNS, to_cached
from heartline.plane import keys
from heartline.plane.redis.single import MultiplexedRedis
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings
from loadtests.seed import Seed

# Sessions started per batch: big enough to fill a socket write, small enough to keep memory flat.
START_BATCH = 4000


@dataclass
class Plane:
    """One Redis filled with live sessions for one set of seeded licenses."""

    label: str
    redis_url: str
    seed: Seed
    tokens: list[tuple[int, str, str]] = field(default_factory=list)  # (license id, key, session token)
    breakdown: dict[str, float] = field(default_factory=dict)  # bytes per session by kind of key
    memory_before: int = 0
    memory_after: int = 0
    stream_bytes: int = 0
    fill_s: float = 0.0

    @property
    def sessions(self) -> int:
        return len(self.tokens)

    @property
    def bytes_per_session(self) -> float:
        """used_memory growth per session, the `started` events in the streams left out."""
        return (self.memory_after - self.memory_before - self.stream_bytes) / max(1, self.sessions)

    @property
    def bytes_per_session_with_streams(self) -> float:
        return (self.memory_after - self.memory_before) / max(1, self.sessions)


async def _used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def _stream_bytes(client: aioredis.Redis, shards: int) -> int:
    total = 0
    for shard in keys.all_shards(shards):
        for key in (keys.event_stream(shard), keys.heartbeat_stream(shard)):
            total += int(await client.memory_usage(key, samples=0) or 0)
    return total


def _key_functions(*params: str) -> dict[str, Any]:
    """keys.py's key builders taking exactly these parameters, by name (the layout may change; the
    breakdown follows it without naming a key itself)."""
    found = {}
    for name, fn in vars(keys).items():
        if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == keys.__name__:
            with contextlib.suppress(TypeError, ValueError):
                if tuple(inspect.signature(fn).parameters) == params:
                    found[name] = fn
    return found


async def _usage(client: aioredis.Redis, key: str) -> int:
    return int(await client.memory_usage(key, samples=0) or 0)


async def key_usage(client: aioredis.Redis, license_ids: list[int], shards: int) -> dict[str, int]:
    """MEMORY USAGE summed per key builder: the given licenses' keys, and every shard's keys but streams."""
    totals: dict[str, int] = {}
    for name, fn in _key_functions("license_id", "shards").items():
        for license_id in license_ids:
            key = fn(license_id, shards)
            if isinstance(key, str):
                totals[name] = totals.get(name, 0) + await _usage(client, key)
    for name, fn in _key_functions("shard").items():
        if "stream" not in name:
            for shard in keys.all_shards(shards):
                key = fn(shard)
                if isinstance(key, str):
                    totals[name] = totals.get(name, 0) + await _usage(client, key)
    return totals


async def memory_breakdown(client: aioredis.Redis, plane: Plane, sample: list[int], before: dict[str, int],
                           shards: int) -> dict[str, float]:
    """Bytes per live session by key builder, from MEMORY USAGE before and after the sessions started:
    per-license keys over a sample of licenses, per-shard keys in full, per-session keys over a sample.

    What MEMORY USAGE does not see — the keyspace's and the expiry table's entries, allocator rounding —
    is the rest up to the used_memory growth.
    """
    sessions_of: dict[int, int] = {}
    for license_id, _key, _token in plane.tokens:
        sessions_of[license_id] = sessions_of.get(license_id, 0) + 1
    sampled_sessions = sum(sessions_of.get(lid, 0) for lid in sample) or 1
    after = await key_usage(client, sample, shards)
    per_shard = set(_key_functions("shard"))
    parts: dict[str, float] = {}
    for name, size in after.items():
        grown = size - before.get(name, 0)
        if grown:
            parts[name] = grown / (plane.sessions if name in per_shard else sampled_sessions)
    per_session = _key_functions("license_id", "shards", "token")
    if per_session:
        picked = random.Random(1).sample(plane.tokens, min(200, len(plane.tokens)))
        for name, fn in per_session.items():
            parts[name] = sum([await _usage(client, fn(lid, shards, tok)) for lid, _k, tok in picked]) / len(picked)
    parts["rest (keyspace, expiry, allocator)"] = plane.bytes_per_session - sum(parts.values())
    return parts


async def fill_plane(plane: Plane, database_url: str, settings: Settings, sessions: int) -> None:
    """Cache the seeded licenses in the plane as the edge would, then start `sessions` live sessions."""
    conn = await db.connect(database_url, actor="loadtest")
    try:
        rows = await conn.fetch(f"SELECT {LICENSE_COLUMNS} FROM licenses WHERE customer_id = $1 ORDER BY id",
                                plane.seed.customer_id)
    finally:
        await conn.close()
    by_id = {lic.id: lic for lic in plane.seed.licenses}
    client = aioredis.Redis.from_url(plane.redis_url)
    mux = MultiplexedRedis.from_url(plane.redis_url)
    # The plane's own API on the multiplexing client: each start is the real start.lua, and a batch of
    # them leaves in one socket write.
    session_plane = SessionPlane(mux, settings)  # type: ignore[arg-type]
    try:
        await session_plane.load_scripts()
        for i in range(0, len(rows), 1000):
            await asyncio.gather(*(session_plane.cache_license(to_cached(r, settings), by_id[r["id"]].devices)
                                   for r in rows[i:i + 1000]))
        sample = [lic.id for lic in random.Random(2).sample(plane.seed.licenses, min(200, len(plane.seed.licenses)))]
        usage_before = await key_usage(client, sample, settings.stream_shards)
        # the filling connection's query buffer is Redis memory too: measure without it (the client
        # reconnects by itself on its next command)
        await mux.aclose()
        await asyncio.sleep(0.2)
        plane.memory_before = await _used_memory(client)
        started = time.perf_counter()
        wanted = [(lic, fp) for lic in plane.seed.licenses for fp in lic.devices][:sessions]
        for i in range(0, len(wanted), START_BATCH):
            batch = wanted[i:i + START_BATCH]
            outcomes = await asyncio.gather(*(session_plane.start_session(lic.id, fp, client_version="bench")
                                              for lic, fp in batch))
            for (lic, _fp), outcome in zip(batch, outcomes, strict=True):
                if outcome.code is not PlaneCode.STARTED or outcome.token is None:
                    raise RuntimeError(f"start refused for license {lic.id}: {outcome.code}")
                plane.tokens.append((lic.id, lic.key, outcome.token))
        plane.fill_s = time.perf_counter() - started
        await mux.aclose()
        await asyncio.sleep(0.2)
        plane.memory_after = await _used_memory(client)
        plane.stream_bytes = await _stream_bytes(client, settings.stream_shards)
        plane.breakdown = await memory_breakdown(client, plane, sample, usage_before, settings.stream_shards)
    finally:
        await mux.aclose()
        await client.aclose()


def heartbeat_requests(plane: Plane, hot_set: int, rng: random.Random) -> list[tuple[str, bytes]]:
    chosen = rng.sample(plane.tokens, min(hot_set, len(plane.tokens)))
    return [(f"/v1/sessions/{token}/heartbeat", json.dumps({"license_key": key}).encode())
            for _license_id, key, token in chosen]
