"""The worker's /metrics shows the backlog; acknowledged entries are trimmed so length = backlog."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
from worker_support import add_heartbeat

from heartline.devstack import free_port
from heartline.plane import keys
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
