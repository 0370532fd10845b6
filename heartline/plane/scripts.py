"""The plane's Lua scripts: loaded once, each called through one typed wrapper.

Each `lua/<name>.lua` is one atomic operation; `_prelude.lua` (server time, ending a session, license
checks) is prepended to every script.  The wrappers in `PlaneScripts` are the only place where the
KEYS/ARGV order of a script is written.  Scripts are run by EVALSHA; a server that lost its script
cache (restart, SCRIPT FLUSH) gets the script loaded again transparently.

Some per-license keys (the session records `…:ss`, and in the reaper every due license's keys) are
reached from the license base inside the scripts rather than declared in KEYS: they share the shard's
hash tag, so the script still runs on one cluster slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from heartline.plane import keys

LUA_DIR = Path(__file__).with_name("lua")
PRELUDE = "_prelude.lua"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    @classmethod
    def read(cls, name: str) -> Script:
        source = (LUA_DIR / PRELUDE).read_text() + (LUA_DIR / f"{name}.lua").read_text()
        return cls(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())

    async def __call__(self, redis: aioredis.Redis, script_keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(script_keys), *script_keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(script_keys), *script_keys, *args)


# Bound on the heartbeat key sets kept (one per license seen); beyond it the cache starts over.
MAX_CACHED_KEY_SETS = 200_000

SCRIPT_NAMES = ("start", "heartbeat", "end", "end_license", "reap", "cache_license", "forget_license",
                "suspend_license")
# Read once per process: the files do not change while it runs.
SCRIPTS = {name: Script.read(name) for name in SCRIPT_NAMES}


class PlaneScripts:
    """Typed calls of the scripts for one Redis connection pool and one shard count.

    `shards` fixes the key layout, `max_len` trims the streams approximately, `grace_ms` is how long a
    session hash outlives its deadline if no reaper ends it.
    """

    def __init__(self, redis: aioredis.Redis, *, shards: int, max_len: int,
                 grace_ms: int = keys.SESSION_GRACE_MS) -> None:
        self.redis = redis
        self.shards = shards
        self.max_len = max_len
        self.grace_ms = grace_ms
        # license id -> (KEYS, license base) of its heartbeat: built once, not on every heartbeat.
        self._heartbeat_keys: dict[int, tuple[list[str], str]] = {}

    async def load(self) -> None:
        for script in SCRIPTS.values():
            await self.redis.script_load(script.source)

    async def start(self, license_id: int, fingerprint: str, token: str, client_version: str,
                    client_ip: str, device_id: int | None = None) -> list[Any]:
        s = self.shards
        shard = keys.shard_of(license_id, s)
        return await SCRIPTS["start"](  # type: ignore[no-any-return]
            self.redis,
            [keys.license_hash(license_id, s), keys.devices(license_id, s), keys.live_sessions(license_id, s),
             keys.fingerprints(license_id, s), keys.deadlines(shard), keys.event_stream(shard),
             keys.live_count(shard)],
            [license_id, keys.license_base(license_id, s), fingerprint, token, client_version, client_ip,
             self.max_len, self.grace_ms, "" if device_id is None else device_id])

    async def heartbeat(self, license_id: int, token: str, min_gap_ms: int) -> list[Any]:
        found = self._heartbeat_keys.get(license_id)
        if found is None:
            if len(self._heartbeat_keys) >= MAX_CACHED_KEY_SETS:
                self._heartbeat_keys.clear()
            s = self.shards
            shard = keys.shard_of(license_id, s)
            found = self._heartbeat_keys[license_id] = (
                [keys.license_hash(license_id, s), keys.live_sessions(license_id, s), keys.deadlines(shard),
                 keys.heartbeat_stream(shard), keys.event_stream(shard), keys.live_count(shard)],
                keys.license_base(license_id, s))
        script_keys, base = found
        return await SCRIPTS["heartbeat"](  # type: ignore[no-any-return]
            self.redis, script_keys, [license_id, base, token, min_gap_ms, self.max_len, self.grace_ms])

    async def end(self, license_id: int, token: str, reason: str) -> int:
        shard = keys.shard_of(license_id, self.shards)
        return int(await SCRIPTS["end"](
            self.redis, [keys.deadlines(shard), keys.event_stream(shard), keys.live_count(shard)],
            [license_id, keys.license_base(license_id, self.shards), token, reason, self.max_len]))

    async def end_license(self, license_id: int, reason: str, fingerprint: str = "") -> int:
        s = self.shards
        shard = keys.shard_of(license_id, s)
        return int(await SCRIPTS["end_license"](
            self.redis,
            [keys.live_sessions(license_id, s), keys.devices(license_id, s), keys.fingerprints(license_id, s),
             keys.deadlines(shard), keys.event_stream(shard), keys.live_count(shard)],
            [license_id, keys.license_base(license_id, s), reason, self.max_len, fingerprint]))

    async def reap(self, shard: int, limit: int) -> int:
        return int(await SCRIPTS["reap"](
            self.redis, [keys.deadlines(shard), keys.event_stream(shard), keys.live_count(shard)],
            [keys.shard_base(shard), limit, self.max_len]))

    async def cache_license(self, license_id: int, version: int, fields: dict[str, str | int],
                            devices: dict[str, int], ttl_s: int = keys.LICENSE_CACHE_TTL_S) -> int:
        s = self.shards
        shard = keys.shard_of(license_id, s)
        args: list[Any] = [license_id, keys.license_base(license_id, s), version, ttl_s, self.max_len,
                           len(fields)]
        for name, value in fields.items():
            args += [name, value]
        for fingerprint, device_id in devices.items():
            args += [fingerprint, device_id]
        return int(await SCRIPTS["cache_license"](
            self.redis,
            [keys.license_hash(license_id, s), keys.devices(license_id, s), keys.live_sessions(license_id, s),
             keys.deadlines(shard), keys.event_stream(shard), keys.live_count(shard)],
            args))

    async def forget_license(self, license_id: int) -> int:
        return int(await SCRIPTS["forget_license"](
            self.redis, [keys.license_hash(license_id, self.shards), keys.devices(license_id, self.shards)],
            []))

    async def suspend_license(self, license_id: int, status: str, version: int, reason: str) -> int:
        s = self.shards
        shard = keys.shard_of(license_id, s)
        return int(await SCRIPTS["suspend_license"](
            self.redis,
            [keys.license_hash(license_id, s), keys.live_sessions(license_id, s), keys.fingerprints(license_id, s),
             keys.sessions(license_id, s), keys.deadlines(shard), keys.event_stream(shard),
             keys.live_count(shard)],
            [license_id, keys.license_base(license_id, s), status, version, reason, self.max_len]))
