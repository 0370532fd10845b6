"""Reconciliation: `license_sessions` rows the plane no longer knows (Redis restarted empty, keys lost)
are closed as `plane_lost`.

A row whose token is missing from its license's live set is not closed at once: its session may have
just ended, with the `ended` event (and its true reason) still waiting in the shard's event stream.  So a
round notes such tokens with the event stream's last id at that moment (the watermark), and a later
round closes those still open only once the history consumer has stored every event up to the watermark.
An event ending the session was written before the token left the live set, so by then it has been
recorded and removed the row, and only sessions that really vanished are left.

What a round reads: Redis loses many sessions at once only when it restarts, and a restart changes its
run id.  So a round sweeps every row only when the run id differs from the one the last full sweep saw
(and at the worker's first round); otherwise it checks the next page of `page` rows (in session-token
order, wrapping around), which still finds the odd session lost otherwise (keys expired while no reaper
ran, a FLUSHDB) within rows / page rounds.  At a million open sessions a round then reads 10 000 rows,
not a million (docs: operations, reconciliation).

Each round also recounts one shard's live counter (every shard after a restart), which drifts when
session keys expire with no reaper to end them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from heartline.plane import keys
from heartline.plane.sessions import SessionPlane
from worker.streams import parse_stream_id

log = logging.getLogger("worker.reconcile")

# One page of open sessions after a token (keyset pagination on the primary key).
OPEN_SESSIONS_AFTER = """
SELECT session_token::text AS token, license_id FROM license_sessions
 WHERE session_token > $1::uuid ORDER BY session_token LIMIT $2
"""
FIRST_TOKEN = "00000000-0000-0000-0000-000000000000"
# Rows an incremental round checks (and rows per query of a full sweep).
RECONCILE_PAGE = 10_000

# ended_at is the session's last sign of life: when it vanished after that is unknown.  The mirror row
# is brought up to date only every HEARTLINE_HEARTBEAT_MIRROR_S (worker/flush.py), so the count and the
# last heartbeat come from the heartbeats stored for the session (the same lookup that records a
# `started` event), the row's own where it knows more.
CLOSE_LOST = """
WITH lost AS (
    DELETE FROM license_sessions WHERE session_token = ANY($1::uuid[]) RETURNING *
)
INSERT INTO session_history (session_token, license_id, device_id, hardware_fingerprint, started_at,
                             ended_at, end_reason, heartbeat_count, client_version, client_ip)
SELECT l.session_token, l.license_id, l.device_id, l.hardware_fingerprint, l.started_at,
       greatest(l.last_heartbeat_at, hb.last_at, l.started_at), 'plane_lost',
       greatest(l.heartbeat_count, hb.n), l.client_version, l.client_ip
  FROM lost l
  LEFT JOIN LATERAL (
       SELECT count(*) AS n, max(h.received_at) AS last_at FROM license_heartbeats h
        WHERE h.license_id = l.license_id AND h.received_at >= l.started_at
          AND h.session_token = l.session_token) hb ON true
ON CONFLICT (session_token) DO NOTHING
"""

PIPELINE_CHUNK = 1000


@dataclass
class Suspects:
    """Tokens of one shard not live in the plane, and the event stream's last id when that was seen."""

    watermark: tuple[int, int]
    tokens: set[str] = field(default_factory=set)


@dataclass
class LostSessions:
    """State kept between rounds: shard -> suspects awaiting the history consumer; the Redis run id the
    last full sweep saw; where the incremental rounds are in the rows; the next shard to recount."""

    pending: dict[int, Suspects] = field(default_factory=dict)
    run_id: str | None = None
    cursor: str = FIRST_TOKEN
    next_shard: int = 0
    page: int = RECONCILE_PAGE
    checked: int = 0          # rows the last round checked
    full_sweeps: int = 0


async def _not_live(redis: aioredis.Redis, rows: list[asyncpg.Record], shards: int) -> list[asyncpg.Record]:
    # Membership in the live set, not "deadline in the future": an expired session not yet reaped is
    # still the plane's, and the reaper will end it with reason timeout.
    missing: list[asyncpg.Record] = []
    for start in range(0, len(rows), PIPELINE_CHUNK):
        chunk = rows[start:start + PIPELINE_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for row in chunk:
                pipe.zscore(keys.live_sessions(row["license_id"], shards), row["token"])
            scores = await pipe.execute()
        missing.extend(row for row, score in zip(chunk, scores, strict=True) if score is None)
    return missing


async def _stream_watermark(redis: aioredis.Redis, shard: int) -> tuple[int, int]:
    try:
        info = await redis.xinfo_stream(keys.event_stream(shard))
    except ResponseError:
        return (0, 0)  # no stream: nothing can be waiting
    return parse_stream_id(info["last-generated-id"])


async def _recorded_up_to(redis: aioredis.Redis, shard: int, watermark: tuple[int, int]) -> bool:
    """Has the history group stored (acknowledged) every event of the shard up to `watermark`?"""
    key = keys.event_stream(shard)
    try:
        groups = await redis.xinfo_groups(key)
    except ResponseError:
        return True  # the stream is gone (Redis restarted empty): no event is waiting
    group = next((g for g in groups if _text(g["name"]) == keys.EVENT_GROUP), None)
    if group is None:
        return int(await redis.xlen(key)) == 0
    if parse_stream_id(group["last-delivered-id"]) < watermark:
        return False
    if not int(group.get("pending") or 0):
        return True
    pending = await redis.xpending(key, keys.EVENT_GROUP)
    return parse_stream_id(pending["min"]) > watermark


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def redis_run_id(redis: aioredis.Redis) -> str:
    """Redis's run id, new at every restart (the run ids of all nodes, for a cluster client: any master
    restarting or failing over changes it)."""
    all_nodes = getattr(redis, "ALL_NODES", None)  # RedisCluster sends INFO to one node unless told
    info: dict[str, Any] = await (redis.info("server") if all_nodes is None
                                  else redis.info("server", target_nodes=all_nodes))  # type: ignore[call-arg]
    if "run_id" in info:
        return str(info["run_id"])
    return ",".join(sorted(str(node["run_id"]) for node in info.values() if isinstance(node, dict)))


async def _open_sessions(pool: asyncpg.Pool, after: str, limit: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch(OPEN_SESSIONS_AFTER, after, limit))


async def _pages(pool: asyncpg.Pool, state: LostSessions, full: bool) -> AsyncIterator[list[asyncpg.Record]]:
    """Every open row, page by page (a full sweep), or the next page after the cursor (wrapping around
    at the end)."""
    if full:
        after = FIRST_TOKEN
        while page := await _open_sessions(pool, after, state.page):
            yield page
            after = page[-1]["token"]
        return
    page = await _open_sessions(pool, state.cursor, state.page)
    if not page and state.cursor != FIRST_TOKEN:  # the previous page ended exactly at the last row
        page = await _open_sessions(pool, FIRST_TOKEN, state.page)
    state.cursor = page[-1]["token"] if len(page) == state.page else FIRST_TOKEN
    yield page


async def close_lost_sessions(ctx: dict[str, Any]) -> int:
    """Close live-session rows whose session the plane lost, as plane_lost; returns how many."""
    pool: asyncpg.Pool = ctx["pool"]
    redis: aioredis.Redis = ctx["redis"]
    shards: int = ctx["settings"].stream_shards
    state: LostSessions = ctx["lost_sessions"]

    closed = 0
    for shard, suspects in list(state.pending.items()):
        if not await _recorded_up_to(redis, shard, suspects.watermark):
            continue
        async with pool.acquire() as conn:
            status = await conn.execute(CLOSE_LOST, sorted(suspects.tokens))
        closed += int(status.rsplit(" ", 1)[-1])
        del state.pending[shard]

    # Read the run id before the rows: a restart after this is seen by the next round.
    run_id = await redis_run_id(redis)
    full = run_id != state.run_id
    state.checked = 0
    by_shard: dict[int, set[str]] = {}
    async for rows in _pages(pool, state, full):
        state.checked += len(rows)
        for row in await _not_live(redis, rows, shards):
            by_shard.setdefault(keys.shard_of(row["license_id"], shards), set()).add(row["token"])
    for shard, tokens in by_shard.items():
        known = state.pending.get(shard)
        if known is not None and tokens <= known.tokens:
            continue
        # New suspects need a watermark taken after they were seen missing; a later one serves the
        # earlier suspects of the shard just as well.
        watermark = await _stream_watermark(redis, shard)
        if known is None:
            state.pending[shard] = Suspects(watermark, tokens)
        else:
            known.watermark = max(known.watermark, watermark)
            known.tokens |= tokens

    plane: SessionPlane = ctx["plane"]
    for shard in (keys.all_shards(shards) if full else [state.next_shard % shards]):
        drift = await plane.recount_live(shard)
        if drift:
            log.warning("worker.reconcile.live_count_repaired shard=%s drift=%s", shard, drift)
    state.next_shard = (state.next_shard + 1) % shards
    if full:
        state.run_id = run_id
        state.full_sweeps += 1
        log.info("worker.reconcile.full_sweep rows=%s run_id=%s", state.checked, run_id)

    if closed:
        log.warning("worker.reconcile.closed_lost sessions=%s", closed)
        ctx["metrics"].sessions_lost(closed)
    return closed
