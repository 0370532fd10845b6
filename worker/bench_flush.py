"""Benchmark: heartbeat flush rows/s against a raw COPY of the same rows into the same table.

    python -m worker.bench_flush [--rows 200000] [--sessions 20000 200000] [--rounds 3]

Both sides store the same rows into `license_heartbeats` in the same run: the raw side is one
`COPY ... FROM STDIN` of every row (the floor: no Redis, no dedup, no updates); the worker side is the
real flush (XREADGROUP batches of HEARTLINE_FLUSH_BATCH_SIZE, binary COPY, set-based session/device
updates for the sessions with a marked heartbeat in the batch, commit, XACK).  The entries are marked as
heartbeat.lua marks them: a session's first and every K-th heartbeat, K = HEARTLINE_HEARTBEAT_MIRROR_S /
HEARTLINE_HEARTBEAT_INTERVAL_S (10 by default; HEARTLINE_HEARTBEAT_MIRROR_S=0 marks every heartbeat, the
mirror updated per session and batch as before the mirror was throttled).  Rounds alternate which side
goes first; medians and the ratio worker/raw are printed.

Two scenarios by default, each in its own scratch database: 20 000 sessions (10 heartbeats per session
in the streams) and one session per row (one heartbeat per session: the case at scale, a million
sessions beating every 30 s, where a batch holds each session once).  `--sessions` picks others.

PostgreSQL and Redis are started from the pip wheels in a temporary folder unless --database-url and
--redis-url are given; then a scratch database is created (and dropped) on that server and the bench's
streams are deleted from that Redis afterwards, so point it at a Redis no edge is using.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from heartline import db as hldb
from heartline.devstack import embedded_services
from heartline.migrations import migrate
from heartline.plane import keys
from heartline.plane import redis as plane_redis
from heartline.plane.events import HEARTBEAT_FIELD, MIRROR_COUNT_FIELD, heartbeat_from_fields
from heartline.settings import Settings
from worker.flush import BATCH_COLUMNS, PIPELINE_BATCHES, flush_batches, prepare_connection, received_at
from worker.streams import StreamConsumer

SEED = """
INSERT INTO customers (name) VALUES ('bench');
INSERT INTO licenses (customer_id, license_key, device_limit, concurrent_sessions_limit)
SELECT 1, 'BENCH-' || lpad(n::text, 8, '0'), 1, 1 FROM generate_series(1, $1) n;
INSERT INTO device_registrations (license_id, hardware_fingerprint) SELECT id, 'fp-' || id FROM licenses;
INSERT INTO license_sessions (session_token, license_id, device_id, started_at)
SELECT gen_random_uuid(), l.id, d.id, now()
  FROM licenses l JOIN device_registrations d ON d.license_id = l.id;
"""


async def _seed(conn: asyncpg.Connection, sessions: int) -> list[tuple[int, str, int]]:
    async with conn.transaction():
        await conn.execute("SET LOCAL heartline.actor = 'bench'")
        for statement in SEED.strip().split(";\n"):
            if "$1" in statement:
                await conn.execute(statement, sessions)
            elif statement.strip():
                await conn.execute(statement)
    rows = await conn.fetch("SELECT license_id, session_token::text AS t, device_id FROM license_sessions")
    return [(r["license_id"], r["t"], r["device_id"]) for r in rows]


async def _fill_streams(redis: aioredis.Redis, sessions: list[tuple[int, str, int]], rows: int,
                        shards: int, mark_every: int, interval_ms: int = 30_000) -> int:
    """Heartbeats as production sends them: each session once per `interval_ms`, sessions spread
    evenly over the interval, ending now (explicit stream ids carry those times), marked as
    heartbeat.lua marks them: each session has beaten a random number of times before, and its first
    and every `mark_every`-th heartbeat carries its count.  Returns the sum of the counts the mirror
    rows should hold afterwards (each session's highest marked count)."""
    beats_per_session = -(-rows // len(sessions))
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - beats_per_session * interval_ms
    earlier = random.Random(rows + len(sessions))
    before = [earlier.randrange(0, 1000) for _ in sessions]
    marked = [0] * len(sessions)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(rows):
            beat, nth = divmod(i, len(sessions))
            license_id, token, device_id = sessions[nth]
            at_ms = start_ms + beat * interval_ms + nth * interval_ms // len(sessions)
            count = before[nth] + beat + 1
            fields: dict[str, Any] = {HEARTBEAT_FIELD: f"{license_id}|{token}|{device_id}"}
            if count == 1 or count % mark_every == 0:
                fields[MIRROR_COUNT_FIELD] = count
                marked[nth] = count
            pipe.xadd(keys.heartbeat_stream(keys.shard_of(license_id, shards)), fields,  # type: ignore[arg-type]
                      id=f"{at_ms}-{i}")
            if i % 10_000 == 9_999:
                await pipe.execute()
        await pipe.execute()
    return sum(marked)


async def _stream_rows(redis: aioredis.Redis, shards: int) -> list[tuple[Any, ...]]:
    """The streams' rows as Python values, for the raw side's copy_records_to_table (prepared before
    its clock starts)."""
    records: list[tuple[Any, ...]] = []
    for shard in range(shards):
        for entry_id, fields in await redis.xrange(keys.heartbeat_stream(shard)):
            event = heartbeat_from_fields(shard, entry_id, fields)
            records.append((received_at(event.received_ms), event.event_id, event.license_id,
                            uuid.UUID(event.session_token), event.device_id))
    return records


async def _reset(conn: asyncpg.Connection, redis: aioredis.Redis, shards: int) -> None:
    await conn.execute("TRUNCATE license_heartbeats")
    await conn.execute("UPDATE license_sessions SET heartbeat_count = 0, last_heartbeat_at = NULL")
    await conn.execute("UPDATE device_registrations SET last_seen_at = NULL")
    await conn.execute("VACUUM ANALYZE license_sessions")
    await conn.execute("VACUUM ANALYZE device_registrations")
    for shard in range(shards):
        await redis.delete(keys.heartbeat_stream(shard))


async def _raw_copy(conn: asyncpg.Connection, records: list[tuple[Any, ...]]) -> float:
    started = time.perf_counter()
    await conn.copy_records_to_table("license_heartbeats", records=records, columns=BATCH_COLUMNS)
    return time.perf_counter() - started


async def _worker_flush(pool: asyncpg.Pool, redis: aioredis.Redis, fast: Any, settings: Settings,
                        rows: int) -> float:
    consumer = StreamConsumer(redis, group=keys.HEARTBEAT_GROUP, stream_key=keys.heartbeat_stream,
                              shards=settings.stream_shards, consumer=f"bench-{uuid.uuid4().hex[:6]}",
                              batch_size=settings.flush_batch_size,
                              claim_idle_ms=int(settings.pending_claim_idle_s * 1000), fast=fast)
    await consumer.ensure_groups()
    stored = 0
    started = time.perf_counter()
    while stored < rows:
        # what the worker's flush loop runs (flush_heartbeats)
        results = await flush_batches(pool, consumer, max_batches=PIPELINE_BATCHES)
        if not results:
            raise RuntimeError(f"streams ran dry after {stored} of {rows} rows")
        stored += sum(result.stored for result in results)
    return time.perf_counter() - started


async def run(settings: Settings, database_url: str, redis_url: str, *, rows: int, sessions: int,
              rounds: int) -> dict[str, float]:
    assert settings.stream_shards
    # as heartbeat.lua marks the heartbeats of a license with the default interval
    mark_every = max(1, settings.heartbeat_mirror_s // settings.heartbeat_interval_s)
    conn = await hldb.connect(database_url, actor="bench")
    pool = await hldb.create_pool(database_url, actor="bench", min_size=1, max_size=2,
                                  init=prepare_connection)
    redis = aioredis.Redis.from_url(redis_url)
    fast = plane_redis.multiplexed(redis_url)  # the worker's stream client (arq_wiring.open_resources)
    try:
        session_rows = await _seed(conn, sessions)
        # the bench's heartbeats span the last few minutes, which may reach into last month
        await conn.execute("SELECT ensure_heartbeat_partition(current_date - 1)")
        await conn.execute("SELECT ensure_heartbeat_partition(current_date)")
        gc.freeze()  # as the worker does once it has started (worker.arq_wiring.startup)
        raw_times, worker_times = [], []
        for round_ in range(rounds):
            await _reset(conn, redis, settings.stream_shards)
            mirrored = await _fill_streams(redis, session_rows, rows, settings.stream_shards, mark_every)
            records = await _stream_rows(redis, settings.stream_shards)
            sides = ["raw", "worker"] if round_ % 2 == 0 else ["worker", "raw"]
            for side in sides:
                if side == "raw":
                    raw_times.append(await _raw_copy(conn, records))
                    await conn.execute("TRUNCATE license_heartbeats")
                else:
                    worker_times.append(await _worker_flush(pool, redis, fast, settings, rows))
                    assert await conn.fetchval("SELECT count(*) FROM license_heartbeats") == rows
                    assert await conn.fetchval("SELECT sum(heartbeat_count) FROM license_sessions") == mirrored
                    await conn.execute("TRUNCATE license_heartbeats")
            print(f"round {round_ + 1}: raw COPY {rows / raw_times[-1]:>10,.0f} rows/s   "
                  f"worker flush {rows / worker_times[-1]:>10,.0f} rows/s")
        raw = rows / statistics.median(raw_times)
        flush = rows / statistics.median(worker_times)
        return {"raw_rows_s": raw, "worker_rows_s": flush, "ratio": flush / raw}
    finally:
        for shard in range(settings.stream_shards):
            await redis.delete(keys.heartbeat_stream(shard))
        await redis.aclose()
        if fast is not None:
            await fast.aclose()
        await pool.close()
        await conn.close()


async def _with_scratch_database(server_url: str, body: Any) -> Any:
    name = f"heartline_bench_{os.getpid()}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, query = server_url.partition("?")
    scheme, rest = head.split("://", 1)
    url = f"{scheme}://{rest.split('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    try:
        await migrate(url)
        return await body(url)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench_flush", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="heartbeat rows per round")
    # Production-like: with 30 s heartbeats and sub-second batches a session appears about once per batch,
    # so each row also costs its session and device update.
    parser.add_argument("--sessions", type=int, nargs="+", metavar="N",
                        help="sessions the heartbeats belong to, one scenario per number "
                             "(default: 20000 and as many as --rows, one heartbeat per session)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="PostgreSQL server (a scratch database is created on it)")
    parser.add_argument("--redis-url", help="Redis the bench streams are written to (and deleted from)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    scenarios = args.sessions or [20_000, args.rows]

    async def bench(pg_url: str, redis_url: str, sessions: int) -> dict[str, float]:
        return await _with_scratch_database(
            pg_url, lambda url: run(settings, url, redis_url, rows=args.rows, sessions=sessions,
                                    rounds=args.rounds))

    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="heartline-bench-") as tmp, embedded_services(
            Path(tmp), postgres=not args.database_url, redis=not args.redis_url, persist=False) as (pg, rd):
        pg_url, redis_url = args.database_url or pg or "", args.redis_url or rd or ""
        for sessions in scenarios:
            print(f"rows={args.rows} sessions={sessions} rounds={args.rounds} "
                  f"batch={settings.flush_batch_size} shards={settings.stream_shards} "
                  f"mirror every {max(1, settings.heartbeat_mirror_s // settings.heartbeat_interval_s)} "
                  f"heartbeats")
            results[sessions] = asyncio.run(bench(pg_url, redis_url, sessions))
    for sessions, result in results.items():
        per_session = args.rows / sessions
        print(f"sessions={sessions} ({per_session:g} heartbeat{'' if per_session == 1 else 's'} per session)")
        print(f"  raw COPY:     {result['raw_rows_s']:>10,.0f} rows/s (median)")
        print(f"  worker flush: {result['worker_rows_s']:>10,.0f} rows/s (median)")
        print(f"  ratio worker/raw: {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
