"""Which workers are running and when each of their loops last succeeded, kept in Redis for
`heartline status` (the metrics of a worker only reach whoever scrapes that one process).

Each worker writes one field of one hash every few seconds (`keys.workers()`: consumer name -> JSON) and
deletes it when it stops; a worker killed without stopping leaves a field that ages, which is exactly
what status reports.  Times are the writer's wall clock in seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from heartline.plane import keys

# Fields not rewritten for this long are dropped by the next writer: a worker gone for a day is history.
FORGET_AFTER_S = 86_400


@dataclass(frozen=True)
class WorkerPresence:
    name: str                  # the worker's stream consumer name (host-pid)
    seen: float                # when it last wrote its record
    loops: dict[str, float]    # loop name -> when its last step succeeded


async def announce(redis: Any, name: str, loops: dict[str, float], *, now: float | None = None) -> None:
    """Write this worker's record and drop records nobody has written for FORGET_AFTER_S."""
    now = time.time() if now is None else now
    await redis.hset(keys.workers(), name, json.dumps({"seen": now, "loops": loops}))
    stale = [p.name for p in await read_presence(redis) if now - p.seen > FORGET_AFTER_S]
    if stale:
        await redis.hdel(keys.workers(), *stale)


async def forget(redis: Any, name: str) -> None:
    await redis.hdel(keys.workers(), name)


async def read_presence(redis: Any) -> list[WorkerPresence]:
    """Every worker record, newest first."""
    found: list[WorkerPresence] = []
    for raw_name, raw in (await redis.hgetall(keys.workers())).items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        try:
            body = json.loads(raw)
            found.append(WorkerPresence(name, float(body["seen"]),
                                        {str(k): float(v) for k, v in body.get("loops", {}).items()}))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a record from another version: ignored, and forgotten when it ages
    return sorted(found, key=lambda p: p.seen, reverse=True)
