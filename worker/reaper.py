"""Reaper: ends sessions whose deadline passed, so they stop counting and reach history in seconds.

The plane's per-license script does the ending (one `ended(timeout)` event per session, whichever worker
gets there first); this loop only walks each shard's deadline index every `reap_interval_s`.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("worker.reaper")

# Sessions ended per script call; a shard with more expired sessions is called again at once.
REAP_LIMIT = 1000


async def reap_expired_sessions(ctx: dict[str, Any]) -> int:
    """End every session past its deadline, on every shard, with reason timeout; returns how many."""
    plane = ctx["plane"]
    total = 0
    for shard in range(ctx["settings"].stream_shards):
        while True:
            ended = int(await plane.reap_expired(shard, limit=REAP_LIMIT))
            total += ended
            if ended < REAP_LIMIT:
                break
    if total:
        log.info("worker.reaper.reaped sessions=%s", total)
        ctx["metrics"].sessions_reaped(total)
    return total
