"""The worker's backlog as Redis holds it, per shard and stream: entries not yet stored, entries delivered
and not acknowledged, and the age of the oldest.  Read by the worker's /metrics and `heartline status`.

The worker trims what every group acknowledged, so a stream's length is the backlog not yet in
PostgreSQL.  Only keyed commands (and TIME), so a cluster client routes each to the shard's node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from heartline.plane import keys


@dataclass(frozen=True, slots=True)
class StreamBacklog:
    stream: str         # the stream's key
    shard: int
    kind: str           # "heartbeats" (group flush) or "events" (group history)
    length: int         # entries not yet stored
    pending: int        # delivered to a consumer, not yet acknowledged
    oldest_age_s: float  # age of the oldest entry still in the stream; 0 when empty


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


async def read_backlog(redis: Any, shards: int) -> list[StreamBacklog]:
    """Both streams of every shard; a stream or group not created yet reads as empty."""
    now_s, now_us = await redis.time()
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    found: list[StreamBacklog] = []
    for shard in keys.all_shards(shards):
        for kind, key, group in (("heartbeats", keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP),
                                 ("events", keys.event_stream(shard), keys.EVENT_GROUP)):
            length, pending, oldest_ms = 0, 0, None
            try:
                info = await redis.xinfo_stream(key)
                length = int(info["length"])
                first = info.get("first-entry")
                if first and first[0]:
                    oldest_ms = _entry_ms(first[0])
                pending = int((await redis.xpending(key, group))["pending"])
            except ResponseError:
                pass  # stream or group not created yet
            age = max(0, now_ms - oldest_ms) / 1000 if oldest_ms else 0.0
            found.append(StreamBacklog(key, shard, kind, length, pending, age))
    return found
