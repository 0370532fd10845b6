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

import asyncio
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


# One entry as Redis sends it: [entry id, [field, value, field, value, ...]] (bytes).  Read through
# redis-py instead of the multiplexing client, the fields come as a dict; decoders take either.
RawEntry = Any


class Batch:
    """What one read took from the streams, per shard, in Redis's own reply shapes (no copy per entry).

    The heartbeat flush decodes `by_shard` in one pass; `entries()` gives the same as `Entry` objects.
    """

    __slots__ = ("by_shard", "size")

    def __init__(self) -> None:
        self.by_shard: dict[int, list[RawEntry]] = {}
        self.size = 0

    def add(self, shard: int, items: list[RawEntry]) -> None:
        if items:
            self.by_shard.setdefault(shard, []).extend(items)
            self.size += len(items)

    def __len__(self) -> int:
        return self.size

    def shards(self) -> list[int]:
        return sorted(self.by_shard)

    def entries(self) -> list[Entry]:
        return [Entry(shard, _text(item[0]), field_dict(item[1]))
                for shard, items in self.by_shard.items() for item in items]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def field_dict(fields: Any) -> dict[bytes, bytes]:
    if fields is None:
        return {}  # an entry deleted while pending (XAUTOCLAIM of Redis 6.2 says so this way)
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


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
    fast: optional multiplexing client (heartline.plane.redis.multiplexed(), bytes replies) for the
    reads and acknowledgements: its replies are kept as Redis sent them (no dict per entry, no
    redis-py connection checkout per command); redis-py serves everything else.
    """

    def __init__(self, redis: aioredis.Redis, *, group: str, stream_key: Callable[[int], str],
                 shards: int, consumer: str, batch_size: int, claim_idle_ms: int,
                 fast: Any = None) -> None:
        self.redis = redis
        self.fast = fast
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
        return (await self.read()).entries()

    async def read(self) -> Batch:
        """read_batch() without turning the entries into `Entry` objects."""
        try:
            return await self._read()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted empty, or a stream was deleted): recreate and go on.
            log.warning("worker.streams.group_recreated group=%s", self.group)
            await self.ensure_groups()
            return await self._read()

    def retry_pending(self, entries: list[Entry] | Batch) -> None:
        """The batch holding `entries` failed: read them again from this consumer's pending list."""
        shards = entries.by_shard if isinstance(entries, Batch) else {entry.shard for entry in entries}
        self._retry_own.update(shards)
        if not entries:
            self._retry_own.update(range(self.shards))

    async def _read(self) -> Batch:
        batch = Batch()
        for shard in sorted(self._retry_own):
            want = self.batch_size - len(batch)
            got = await self._xreadgroup(shard, "0", want)
            if len(got) < want:
                self._retry_own.discard(shard)  # read to the end of our pending list
            batch.add(shard, got)
            if len(batch) >= self.batch_size:
                return batch
        if time.monotonic() >= self._next_claim:
            await self._claim(batch)
            self._next_claim = time.monotonic() + max(0.5, self.claim_idle_ms / 2000)
        # New entries, one shard after the other, each as deep as the batch allows: a session's entries
        # are all in its shard's stream, so through a backlog a deep read brings several heartbeats of
        # each session and the flush updates its row once for all of them (wide reads, a few entries
        # of every shard, would bring one each).  Start at a rotating shard so a busy shard cannot
        # starve the others.
        order = [(self._start_shard + i) % self.shards for i in range(self.shards)]
        self._start_shard = (self._start_shard + 1) % self.shards
        for shard in order:
            if len(batch) >= self.batch_size:
                break
            batch.add(shard, await self._xreadgroup(shard, ">", self.batch_size - len(batch)))
        return batch

    async def _xreadgroup(self, shard: int, start: str, count: int) -> list[RawEntry]:
        if count <= 0:
            return []
        key = self.stream_key(shard)
        if self.fast is not None:
            reply = await self.fast.execute("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
                                            "STREAMS", key, start)
        else:
            reply = await self.redis.xreadgroup(self.group, self.consumer, {key: start}, count=count)
        # one stream asked: the reply is [[stream key, entries]], or nil when it has nothing new
        return reply[0][1] if reply else []

    async def _claim(self, batch: Batch) -> None:
        for shard in range(self.shards):
            count = self.batch_size - len(batch)
            if count <= 0:
                break
            key = self.stream_key(shard)
            if self.fast is not None:
                reply: Any = await self.fast.execute("XAUTOCLAIM", key, self.group, self.consumer,
                                                     self.claim_idle_ms, self._claim_cursor[shard],
                                                     "COUNT", count)
            else:
                reply = await self.redis.xautoclaim(key, self.group, self.consumer, self.claim_idle_ms,
                                                    start_id=self._claim_cursor[shard], count=count)
            cursor, items = reply[0], reply[1]
            self._claim_cursor[shard] = _text(cursor)
            if items:
                log.info("worker.streams.claimed group=%s shard=%s entries=%s", self.group, shard, len(items))
            batch.add(shard, items)

    async def ack(self, entries: list[Entry] | Batch) -> None:
        by_shard: dict[int, list[Any]] = {}
        if isinstance(entries, Batch):
            for shard, items in entries.by_shard.items():
                by_shard[shard] = [item[0] for item in items]
        else:
            for entry in entries:
                by_shard.setdefault(entry.shard, []).append(entry.entry_id)
        if not by_shard:
            return
        if self.fast is not None:
            await asyncio.gather(*(self.fast.execute("XACK", self.stream_key(shard), self.group, *ids)
                                   for shard, ids in by_shard.items()))
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
