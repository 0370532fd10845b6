"""Consumer-group reading of the sharded plane streams, shared by the heartbeat flush and the history.

An entry is acknowledged only after PostgreSQL committed what it carried, so it is delivered at least
once; the writers make a second delivery harmless (heartbeats by their (received_at, event_id) key,
history by the session token).  Entries are read in this order of preference:

1. this consumer's own pending entries, after a batch failed (PostgreSQL down, deadlock): retried first
   so nothing is skipped and the idle time of what we hold stays low;
2. entries another consumer left pending for longer than `claim_idle_ms` (it crashed): XAUTOCLAIM;
3. new entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger("worker.streams")


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: the shard whose stream it came from, its id and its raw fields."""

    shard: int
    entry_id: str
    fields: dict[bytes, bytes]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_stream_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def next_stream_id(value: bytes | str) -> str:
    """The smallest id greater than `value` (XTRIM MINID keeps ids >= its argument)."""
    ms, seq = parse_stream_id(value)
    return f"{ms}-{seq + 1}"


class StreamConsumer:
    """One consumer of one group over the streams of every shard.

    redis: client with bytes replies; group: consumer group name; stream_key: shard -> stream key
    (from heartline.plane.keys); consumer: this process's consumer name, unique per process;
    batch_size: most entries returned by one read_batch(); claim_idle_ms: how long an entry must sit
    unacknowledged with another consumer before this one takes it over.
    """

    def __init__(self, redis: aioredis.Redis, *, group: str, stream_key: Callable[[int], str],
                 shards: int, consumer: str, batch_size: int, claim_idle_ms: int) -> None:
        self.redis = redis
        self.group = group
        self.stream_key = stream_key
        self.shards = shards
        self.consumer = consumer
        self.batch_size = max(1, batch_size)
        self.claim_idle_ms = max(1, claim_idle_ms)
        # A fresh process may reuse nothing, but checking its own pending list once costs one read.
        self._retry_own = set(range(shards))
        self._claim_cursor = {shard: "0-0" for shard in range(shards)}
        self._next_claim = 0.0
        self._start_shard = 0

    def streams(self) -> list[str]:
        return [self.stream_key(shard) for shard in range(self.shards)]

    async def ensure_groups(self) -> None:
        """Create the group on every shard's stream (and the stream itself), from the first entry."""
        for key in self.streams():
            try:
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_batch(self) -> list[Entry]:
        """Up to batch_size entries: own pending ones first, then claimed, then new."""
        try:
            return await self._read_batch()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted empty, or a stream was deleted): recreate and go on.
            log.warning("worker.streams.group_recreated group=%s", self.group)
            await self.ensure_groups()
            return await self._read_batch()

    def retry_pending(self, entries: list[Entry]) -> None:
        """The batch holding `entries` failed: read them again from this consumer's pending list."""
        self._retry_own.update(entry.shard for entry in entries)
        if not entries:
            self._retry_own.update(range(self.shards))

    async def _read_batch(self) -> list[Entry]:
        batch: list[Entry] = []
        for shard in sorted(self._retry_own):
            got = await self._xreadgroup(shard, "0", self.batch_size - len(batch))
            if len(got) < self.batch_size - len(batch):
                self._retry_own.discard(shard)  # read to the end of our pending list
            batch.extend(got)
            if len(batch) >= self.batch_size:
                return batch
        if time.monotonic() >= self._next_claim:
            batch.extend(await self._claim(self.batch_size - len(batch)))
            self._next_claim = time.monotonic() + max(0.5, self.claim_idle_ms / 2000)
        # Start at a rotating shard so a busy shard cannot starve the others.
        order = [(self._start_shard + i) % self.shards for i in range(self.shards)]
        self._start_shard = (self._start_shard + 1) % self.shards
        for shard in order:
            if len(batch) >= self.batch_size:
                break
            batch.extend(await self._xreadgroup(shard, ">", self.batch_size - len(batch)))
        return batch

    async def _xreadgroup(self, shard: int, start: str, count: int) -> list[Entry]:
        if count <= 0:
            return []
        reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream_key(shard): start},
                                            count=count)
        entries: list[Entry] = []
        for _key, items in reply or []:
            entries.extend(Entry(shard, _text(entry_id), fields or {}) for entry_id, fields in items)
        return entries

    async def _claim(self, count: int) -> list[Entry]:
        claimed: list[Entry] = []
        for shard in range(self.shards):
            if count - len(claimed) <= 0:
                break
            reply: Any = await self.redis.xautoclaim(
                self.stream_key(shard), self.group, self.consumer, self.claim_idle_ms,
                start_id=self._claim_cursor[shard], count=count - len(claimed))
            cursor, items = reply[0], reply[1]
            self._claim_cursor[shard] = _text(cursor)
            got = [Entry(shard, _text(entry_id), fields or {}) for entry_id, fields in items]
            if got:
                log.info("worker.streams.claimed group=%s shard=%s entries=%s", self.group, shard, len(got))
            claimed.extend(got)
        return claimed

    async def ack(self, entries: list[Entry]) -> None:
        by_shard: dict[int, list[str]] = {}
        for entry in entries:
            by_shard.setdefault(entry.shard, []).append(entry.entry_id)
        if not by_shard:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, ids in by_shard.items():
                pipe.xack(self.stream_key(shard), self.group, *ids)
            await pipe.execute()

    async def trim(self) -> int:
        """Drop entries every group of the stream has acknowledged; returns how many were removed.

        After trimming, a stream's length is its backlog (entries not yet stored), which is what
        /metrics reports.  Nothing unacknowledged is ever trimmed.
        """
        removed = 0
        for key in self.streams():
            try:
                groups = await self.redis.xinfo_groups(key)
            except ResponseError:
                continue  # no such stream
            if not groups:
                continue
            floor: tuple[int, int] | None = None
            for group in groups:
                last = group.get("last-delivered-id") or b"0-0"
                candidate = parse_stream_id(next_stream_id(last))
                if int(group.get("pending") or 0):
                    pending = await self.redis.xpending(key, _text(group["name"]))
                    if pending.get("min"):
                        candidate = min(candidate, parse_stream_id(pending["min"]))
                floor = candidate if floor is None else min(floor, candidate)
            if floor is not None and floor > (0, 1):
                removed += int(await self.redis.xtrim(key, minid=f"{floor[0]}-{floor[1]}",
                                                      approximate=False))
        return removed

    async def forget_idle_consumers(self, idle_ms: int) -> None:
        """Delete consumers of dead processes: nothing pending and idle for longer than `idle_ms`."""
        for key in self.streams():
            try:
                consumers = await self.redis.xinfo_consumers(key, self.group)
            except ResponseError:
                continue
            for info in consumers:
                name = _text(info["name"])
                if name != self.consumer and not int(info.get("pending") or 0) \
                        and int(info.get("idle") or 0) > idle_ms:
                    await self.redis.xgroup_delconsumer(key, self.group, name)
