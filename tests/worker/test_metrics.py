"""The worker's /metrics shows the backlog; acknowledged entries are trimmed so length = backlog."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from worker_support import add_heartbeat

from heartline.devstack import free_port
from heartline.plane import keys
from heartline.plane.presence import read_presence
from worker.arq_wiring import worker_settings as build_worker_settings
from worker.flush import flush_heartbeats
from worker.metrics import serve_metrics


def sample(text: str, name: str, stream: str) -> float:
    prefix = f'{name}{{stream="{stream}"}} '
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


async def test_metrics_endpoint_reports_the_backlog_until_it_is_stored(
        worker_ctx: dict[str, Any], redis: aioredis.Redis, make_license: Any, db: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    stream = keys.heartbeat_stream(keys.shard_of(lic["id"], shards))
    for _ in range(7):
        await add_heartbeat(redis, shards, lic["id"], str(uuid.uuid4()), None)
    server = await serve_metrics(worker_ctx, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            before = await http.get("/metrics")
            assert before.status_code == 200
            assert sample(before.text, "heartline_worker_stream_length", stream) == 7

            # read but not acknowledged: pending, and never trimmed
            entries = await worker_ctx["heartbeat_consumer"].read_batch()
            assert len(entries) == 7
            await worker_ctx["heartbeat_consumer"].trim()
            during = (await http.get("/metrics")).text
            assert sample(during, "heartline_worker_stream_pending", stream) == 7
            assert sample(during, "heartline_worker_stream_length", stream) == 7

            worker_ctx["heartbeat_consumer"].retry_pending(entries)
            assert await flush_heartbeats(worker_ctx) == 7
            assert await worker_ctx["heartbeat_consumer"].trim() == 7
            after = (await http.get("/metrics")).text
            assert sample(after, "heartline_worker_stream_length", stream) == 0
            assert sample(after, "heartline_worker_stream_pending", stream) == 0
            assert "heartline_worker_heartbeats_stored_total 7.0" in after
            assert (await http.get("/healthz")).text == "ok\n"
            assert (await http.get("/nope")).status_code == 404
    finally:
        server.close()
        await server.wait_closed()


def test_worker_settings_register_the_partition_job_and_the_backup_cron(worker_settings: Any) -> None:
    cls = build_worker_settings(worker_settings)
    assert [f.__name__ for f in cls.functions] == ["maintain_heartbeat_partitions"]
    assert [c.name for c in cls.cron_jobs] == ["cron:create_scheduled_backup"]
    assert cls.ctx["settings"] is worker_settings


async def test_metrics_answer_200_with_redis_up_0_while_redis_is_unreachable(
        worker_ctx: dict[str, Any], redis: aioredis.Redis, make_license: Any) -> None:
    shards = worker_ctx["settings"].stream_shards
    lic = await make_license()
    stream = keys.heartbeat_stream(keys.shard_of(lic["id"], shards))
    for _ in range(3):
        await add_heartbeat(redis, shards, lic["id"], str(uuid.uuid4()), None)
    ctx = dict(worker_ctx)
    server = await serve_metrics(ctx, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    unreachable = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            up = await http.get("/metrics")
            assert up.status_code == 200 and "heartline_worker_redis_up 1.0" in up.text
            ctx["redis"] = unreachable
            down = await http.get("/metrics")
            assert down.status_code == 200
            assert "heartline_worker_redis_up 0.0" in down.text
            # the backlog series stay, with the last values read
            assert sample(down.text, "heartline_worker_stream_length", stream) == 3
            ctx["redis"] = worker_ctx["redis"]
            back = await http.get("/metrics")
            assert back.status_code == 200 and "heartline_worker_redis_up 1.0" in back.text
    finally:
        await unreachable.aclose()
        server.close()
        await server.wait_closed()


def value(text: str, sample_line_start: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(sample_line_start + " "))
    return float(line.rsplit(" ", 1)[1])


async def scrape(ctx: dict[str, Any]) -> httpx.Response:
    server = await serve_metrics(ctx, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            return await http.get("/metrics")
    finally:
        server.close()
        await server.wait_closed()


async def test_metrics_report_backup_freshness_from_backup_events(
        worker_ctx: dict[str, Any], db: asyncpg.Connection) -> None:
    text = (await scrape(worker_ctx)).text
    for name in ("heartline_backup_last_success_timestamp_seconds",
                 "heartline_backup_last_upload_timestamp_seconds",
                 "heartline_backup_last_failure_timestamp_seconds"):
        assert value(text, name) == 0, name  # never
    created = datetime(2026, 11, 29, 3, 0, 5, tzinfo=UTC)
    await db.executemany(
        "INSERT INTO backup_events (occurred_at, kind, trigger, name, detail) VALUES ($1, $2, $3, $4, $5)",
        [(created - timedelta(days=1), "created", "scheduled", "server_backup_20261128_030000", None),
         (created, "created", "scheduled", "server_backup_20261129_030000", None),
         (created + timedelta(seconds=9), "uploaded", "scheduled", "server_backup_20261129_030000", None),
         (created - timedelta(hours=2), "failed", "manual", None, "create: disk full")])
    text = (await scrape(worker_ctx)).text
    assert value(text, "heartline_backup_last_success_timestamp_seconds") == created.timestamp()
    assert value(text, "heartline_backup_last_upload_timestamp_seconds") == created.timestamp() + 9
    assert value(text, "heartline_backup_last_failure_timestamp_seconds") == created.timestamp() - 7200
    assert value(text, "heartline_backup_remote_configured") == 0


async def test_metrics_report_dependencies_redis_memory_and_loop_successes(
        worker_ctx: dict[str, Any], run_loops: Any) -> None:
    before = time.time()
    run_loops()
    for _ in range(200):
        if {"reaper", "flush", "presence"} <= set(worker_ctx["metrics"].last_success):
            break
        await asyncio.sleep(0.05)
    text = (await scrape(worker_ctx)).text
    assert value(text, "heartline_worker_redis_up") == 1
    assert value(text, "heartline_worker_postgres_up") == 1
    assert value(text, "heartline_redis_memory_used_bytes") > 0
    assert value(text, 'heartline_worker_loop_last_success_timestamp_seconds{loop="reaper"}') >= before
    # the presence loop (every PRESENCE_INTERVAL_S) tells Redis when this worker's reaper last succeeded
    announced: dict[str, float] = {}
    for _ in range(300):
        announced = next((p.loops for p in await read_presence(worker_ctx["redis"])
                          if p.name == worker_ctx["consumer_name"]), {})
        if "reaper" in announced:
            break
        await asyncio.sleep(0.05)
    assert announced["reaper"] >= before


async def test_scrape_answers_200_with_postgres_down_and_says_so(worker_ctx: dict[str, Any]) -> None:
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none", min_size=0,
                                     timeout=1)
    try:
        response = await scrape({**worker_ctx, "pool": pool})
    finally:
        await pool.close()
    assert response.status_code == 200
    assert value(response.text, "heartline_worker_postgres_up") == 0
    assert value(response.text, "heartline_worker_redis_up") == 1
