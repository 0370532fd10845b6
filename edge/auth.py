"""X-API-Key authentication with an in-process cache, so the hot path does no I/O for it.

A key is looked up in PostgreSQL by its sha256 at most once per `api_key_cache_s` per process: a
revoked key therefore stops working within that time (30 s by default).  While PostgreSQL is
unreachable, keys already known to be valid keep working (the edge keeps serving heartbeats).  Unknown keys are remembered
briefly too, so a client retrying a bad key costs no query each time.  `last_used_at` is written in
batches by a background task, never per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from starlette.requests import Request

from edge.errors import ApiKeyInvalid, ApiKeyMissing
from heartline.apikeys import hash_key, is_well_formed
from heartline.settings import Settings

log = logging.getLogger("heartline.edge.auth")

HEADER = "x-api-key"
ACTIVE_KEY = "SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
TOUCH_KEYS = "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::bigint[])"
# Unknown keys are remembered for at most this long, so a key created a moment ago works soon.
UNKNOWN_KEY_TTL_S = 5.0
# Bound on remembered unknown keys: random garbage keys must not grow memory without limit.  They are
# kept apart from the valid keys (whose number is that of the keys in PostgreSQL), so a flood of garbage
# evicts the oldest garbage, never a valid key (which keeps working while PostgreSQL is down).
MAX_UNKNOWN_KEYS = 10_000
LAST_USED_FLUSH_S = 30.0


class ApiKeyGuard:
    """Checks X-API-Key headers; one per edge process, created in the lifespan."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.ttl_s = settings.api_key_cache_s
        self.max_unknown = MAX_UNKNOWN_KEYS
        # sha256 of the key -> (key id or None when unknown/revoked, monotonic time the entry expires).
        # Looking up the digest of the presented key leaks nothing about other keys' digests.
        self._cache: dict[bytes, tuple[int | None, float]] = {}
        # the digests of _cache's unknown entries, oldest first (insertion order), for eviction
        self._unknown: dict[bytes, None] = {}
        self._pending: dict[bytes, asyncio.Task[int | None]] = {}
        self._used: set[int] = set()

    async def authenticate(self, request: Request) -> int:
        """The id of the request's API key; raises ApiKeyMissing / ApiKeyInvalid."""
        return await self.check(request.headers.getlist(HEADER))

    async def check(self, headers: list[str]) -> int:
        """The id of the key presented in the X-API-Key header(s); raises ApiKeyMissing / ApiKeyInvalid.

        Two headers are refused: which one a server reads differs (Starlette's first, a loop's last), so
        accepting either would let the router and the heartbeat's fast path disagree."""
        if len(headers) > 1:
            raise ApiKeyInvalid("Send exactly one X-API-Key header.")
        presented = headers[0] if headers else None
        if not presented:
            raise ApiKeyMissing()
        if not is_well_formed(presented):
            raise ApiKeyInvalid()
        digest = hash_key(presented)
        entry = self._cache.get(digest)
        if entry is not None and entry[1] > time.monotonic():
            key_id = entry[0]
        else:
            try:
                key_id = await self._lookup(digest)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                if entry is None or entry[0] is None:
                    raise
                # PostgreSQL is down: heartbeats must go on, so a key known to be valid stays valid
                # until the database answers again (nobody can revoke it meanwhile either).
                key_id = entry[0]
        if key_id is None:
            raise ApiKeyInvalid()
        self._used.add(key_id)
        return key_id

    def known(self, presented: str) -> int | None:
        """The id of a key already known to be valid and not due for a re-check, else None (then `check`
        decides).  No I/O, for the heartbeat's hot path.  A valid entry was only ever cached for a
        well-formed key, so the same digest needs no second look at the key's format."""
        entry = self._cache.get(hash_key(presented))
        if entry is None or entry[0] is None or entry[1] <= time.monotonic():
            return None
        self._used.add(entry[0])
        return entry[0]

    async def _lookup(self, digest: bytes) -> int | None:
        """One query per key however many requests wait for it; a task of its own, so a caller that goes
        away cancels nobody else's wait."""
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.create_task(self._query(digest))
            self._pending[digest] = task
            task.add_done_callback(lambda t: self._pending.pop(digest, None))
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _query(self, digest: bytes) -> int | None:
        key_id = await self.pool.fetchval(ACTIVE_KEY, digest)
        if key_id is None:
            self._unknown.pop(digest, None)
            while len(self._unknown) >= self.max_unknown:
                oldest = next(iter(self._unknown))
                del self._unknown[oldest]
                self._cache.pop(oldest, None)
            self._unknown[digest] = None
            self._cache[digest] = (None, time.monotonic() + min(self.ttl_s, UNKNOWN_KEY_TTL_S))
            return None
        self._unknown.pop(digest, None)
        self._cache[digest] = (key_id, time.monotonic() + self.ttl_s)
        return int(key_id)

    async def flush_last_used(self) -> int:
        """Write last_used_at for the keys used since the previous flush."""
        if not self._used:
            return 0
        used, self._used = self._used, set()
        try:
            await self.pool.execute(TOUCH_KEYS, list(used))
        except Exception:
            self._used |= used
            raise
        return len(used)

    async def run_flusher(self) -> None:
        """Background task: flush last_used_at every LAST_USED_FLUSH_S until cancelled."""
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_S)
            try:
                await self.flush_last_used()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: keep the ids, retry next round
                log.warning("edge.api_key.touch_failed error=%s", type(exc).__name__)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's exception as seen: every waiter re-raises it, even if none is left."""
    if not task.cancelled():
        task.exception()
