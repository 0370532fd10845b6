"""arq wiring: `worker_settings(settings)` builds the WorkerSettings class, and `startup` / `shutdown`
own the process's long-lived resources in arq's ctx.

ctx holds: settings, pool (asyncpg, audit actor 'worker'), redis, plane (SessionPlane), the three stream
consumers (flush, history, webhooks), the webhook HTTP client and secret box, metrics, lost_sessions
(reconciliation state), and the loop tasks; one loop announces the worker in Redis for `heartline status`
(heartline/plane/presence.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.cron import CronJob
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heartline import db
from heartline.plane import keys
from heartline.plane import redis as plane_redis
from heartline.plane.presence import announce, forget
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings
from heartline.webhooks.secrets import SecretBox
from worker.backups import backup_cron
from worker.flush import flush_heartbeats, prepare_connection
from worker.history import record_session_events
from worker.loops import run_loop
from worker.metrics import WorkerMetrics, serve_metrics
from worker.partitions import maintain_heartbeat_partitions
from worker.reaper import reap_expired_sessions
from worker.reconcile import LostSessions, close_lost_sessions
from worker.refusals import prune_refusal_ids
from worker.streams import StreamConsumer
from worker.webhooks import (
    http_client,
    prune_webhook_messages,
    queue_change_webhooks,
    queue_session_webhooks,
    send_webhooks,
)

log = logging.getLogger("worker.arq_wiring")

# How often acknowledged entries are trimmed from the streams (the backlog /metrics reports is then
# the stream length) and how long a consumer with nothing pending may stay idle before it is forgotten.
TIDY_INTERVAL_S = 5.0
DEAD_CONSUMER_IDLE_MS = 3_600_000
# How often the partitions loop checks whether today's maintenance ran.
PARTITIONS_CHECK_S = 60.0
# How often the worker tells Redis it is alive and when its loops last succeeded (`heartline status`).
PRESENCE_INTERVAL_S = 5.0
# Time a loop gets on shutdown to finish the batch it holds before it is cancelled.
SHUTDOWN_GRACE_S = 10.0
POOL_MAX_SIZE = 4
# A stream read or acknowledgement that Redis leaves unanswered this long fails (the flush loop backs
# off and retries) instead of hanging the loop.
STREAM_TIMEOUT_S = 10.0
# Finished webhook messages past their retention are deleted this often.
WEBHOOK_PRUNE_INTERVAL_S = 3600.0


def consumer_name() -> str:
    """Unique per process: a new process never inherits a dead one's pending entries by name."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def open_resources(ctx: dict[str, Any]) -> None:
    """PostgreSQL pool, Redis, the plane and the two stream consumers (groups created)."""
    settings: Settings = ctx["settings"]
    assert settings.database_url and settings.redis_url
    # min_size=0: the worker starts (and the loops back off) even while PostgreSQL is down.
    ctx["pool"] = await db.create_pool(settings.database_url, actor="worker", min_size=0,
                                       max_size=POOL_MAX_SIZE, init=prepare_connection)
    # redis-py, or its RedisCluster for a redis+cluster:// URL: every command here names one key (each
    # shard's stream is read on the node that owns it), so both serve the same code.
    ctx["redis"] = plane_redis.connect(settings.redis_url)
    ctx["plane"] = SessionPlane(ctx["redis"], settings)
    ctx.setdefault("consumer_name", consumer_name())
    claim_idle_ms = int(settings.pending_claim_idle_s * 1000)
    # The heartbeat flush reads and acknowledges through the multiplexing client (one socket write for
    # all shards' reads, replies left as Redis sent them: worker/streams.py); None for TLS and unix
    # sockets, where it stays on redis-py.
    ctx["stream_client"] = plane_redis.multiplexed(settings.redis_url, connect_timeout=STREAM_TIMEOUT_S,
                                                   command_timeout=STREAM_TIMEOUT_S)
    ctx["heartbeat_consumer"] = StreamConsumer(
        ctx["redis"], group=keys.HEARTBEAT_GROUP, stream_key=keys.heartbeat_stream,
        shards=settings.stream_shards, consumer=ctx["consumer_name"], batch_size=settings.flush_batch_size,
        claim_idle_ms=claim_idle_ms, fast=ctx["stream_client"])
    ctx["event_consumer"] = StreamConsumer(
        ctx["redis"], group=keys.EVENT_GROUP, stream_key=keys.event_stream,
        shards=settings.stream_shards, consumer=ctx["consumer_name"], batch_size=settings.flush_batch_size,
        claim_idle_ms=claim_idle_ms)
    ctx["webhook_consumer"] = StreamConsumer(
        ctx["redis"], group=keys.WEBHOOK_GROUP, stream_key=keys.event_stream,
        shards=settings.stream_shards, consumer=ctx["consumer_name"], batch_size=settings.flush_batch_size,
        claim_idle_ms=claim_idle_ms)
    try:
        await ctx["plane"].load_scripts()
        await ctx["heartbeat_consumer"].ensure_groups()
        await ctx["event_consumer"].ensure_groups()
        await ctx["webhook_consumer"].ensure_groups()
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # Redis went away while this worker started: start all the same, like a running worker rides
        # out an outage.  The scripts load on first use and a consumer creates its missing groups when
        # its first read finds none (NOGROUP); until Redis is back the loops back off.
        log.warning("worker.redis_unavailable_at_start error=%s: %s", type(exc).__name__, exc)
    ctx["webhook_http"] = http_client(settings)
    ctx["webhook_secrets"] = SecretBox(settings)
    ctx["metrics"] = WorkerMetrics()
    ctx["lost_sessions"] = LostSessions()


def start_loops(ctx: dict[str, Any]) -> None:
    """One task per concern (see worker/loops.py for why loops rather than arq cron)."""
    ctx["stop"] = asyncio.Event()
    metrics: WorkerMetrics = ctx["metrics"]
    ctx["tasks"] = [asyncio.create_task(run_loop(name, step, interval, ctx["stop"], on_state=metrics.loop_state,
                                                 on_success=metrics.loop_succeeded), name=f"worker.{name}")
                    for name, step, interval in _loops(ctx)]


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: open the resources, start the loops and /metrics."""
    settings: Settings = ctx["settings"]
    await open_resources(ctx)
    # Everything made so far (modules, clients, pools) lives as long as the process: out of the cyclic
    # garbage collector's sight, its full collections stop walking it again and again while a flush
    # makes hundreds of thousands of short-lived objects (a third of the flush's CPU, docs/performance.md).
    gc.freeze()
    start_loops(ctx)
    ctx["metrics_server"] = None
    if settings.worker_metrics_port:
        try:
            ctx["metrics_server"] = await serve_metrics(ctx, settings.worker_metrics_host,
                                                        settings.worker_metrics_port)
        except OSError as exc:
            # a second worker on the same host: it works on, only without its own /metrics
            log.warning("worker.metrics.unavailable host=%s port=%s error=%s; set "
                        "HEARTLINE_WORKER_METRICS_PORT per worker process", settings.worker_metrics_host,
                        settings.worker_metrics_port, exc)
    log.info("worker.started consumer=%s shards=%s batch=%s", ctx["consumer_name"], settings.stream_shards,
             settings.flush_batch_size)


def _loops(ctx: dict[str, Any]) -> list[tuple[str, Callable[[], Awaitable[bool]], float]]:
    settings: Settings = ctx["settings"]
    batch = settings.flush_batch_size

    async def flush() -> bool:
        return await flush_heartbeats(ctx) >= batch

    async def history() -> bool:
        return await record_session_events(ctx) >= batch

    async def reaper() -> bool:
        await reap_expired_sessions(ctx)
        return False

    async def reconcile() -> bool:
        await close_lost_sessions(ctx)
        return False

    async def tidy() -> bool:
        for consumer in (ctx["heartbeat_consumer"], ctx["event_consumer"], ctx["webhook_consumer"]):
            await consumer.trim()
            await consumer.forget_idle_consumers(DEAD_CONSUMER_IDLE_MS)
        return False

    async def webhook_events() -> bool:
        return await queue_session_webhooks(ctx) >= batch

    async def webhook_changes() -> bool:
        return await queue_change_webhooks(ctx) > 0

    async def webhook_sends() -> bool:
        return await send_webhooks(ctx) > 0

    async def webhook_prune() -> bool:
        await prune_webhook_messages(ctx)
        await prune_refusal_ids(ctx)
        return False

    done: dict[str, date] = {}

    async def partitions() -> bool:
        # At start and then once per UTC day, retried with backoff while PostgreSQL is down.
        today = datetime.now(UTC).date()
        if done.get("day") != today:
            await maintain_heartbeat_partitions(ctx, today)
            done["day"] = today
        return False

    async def presence() -> bool:
        await announce(ctx["redis"], ctx["consumer_name"], dict(ctx["metrics"].last_success))
        return False

    return [
        ("flush", flush, settings.flush_interval_s),
        ("history", history, settings.flush_interval_s),
        ("reaper", reaper, settings.reap_interval_s),
        ("reconcile", reconcile, settings.reconcile_interval_s),
        ("streams", tidy, TIDY_INTERVAL_S),
        ("partitions", partitions, PARTITIONS_CHECK_S),
        ("webhook_events", webhook_events, settings.flush_interval_s),
        ("webhook_changes", webhook_changes, settings.webhook_send_interval_s),
        ("webhook_sends", webhook_sends, settings.webhook_send_interval_s),
        ("webhook_prune", webhook_prune, WEBHOOK_PRUNE_INTERVAL_S),
        ("presence", presence, PRESENCE_INTERVAL_S),
    ]


async def shutdown(ctx: dict[str, Any]) -> None:
    """Let each loop finish the batch it holds, then close everything startup opened."""
    stop: asyncio.Event | None = ctx.get("stop")
    tasks: list[asyncio.Task[None]] = ctx.get("tasks", [])
    if stop is not None:
        stop.set()
    if tasks:
        _done, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        for task in late:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    server: asyncio.Server | None = ctx.get("metrics_server")
    if server is not None:
        server.close()
        await server.wait_closed()
    if ctx.get("pool") is not None:
        await ctx["pool"].close()
    if ctx.get("redis") is not None:
        with contextlib.suppress(Exception):  # Redis may be the reason we stop; the record then ages
            await forget(ctx["redis"], ctx["consumer_name"])
        await ctx["redis"].aclose()
    if ctx.get("stream_client") is not None:
        await ctx["stream_client"].aclose()
    if ctx.get("webhook_http") is not None:
        await ctx["webhook_http"].aclose()
    log.info("worker.stopped")


def _cron_jobs(settings: Settings) -> list[CronJob]:
    """Daily jobs that arq schedules once across all workers: the backup."""
    return [backup_cron(settings)]


def worker_settings(settings: Settings) -> type[Any]:
    """arq's WorkerSettings for these settings (arq reads the class attributes)."""
    assert settings.redis_url
    arq_redis = RedisSettings.from_dsn(settings.redis_url)

    class WorkerSettings:
        functions = (maintain_heartbeat_partitions,)
        cron_jobs = _cron_jobs(settings)
        redis_settings = arq_redis
        on_startup = startup
        on_shutdown = shutdown
        ctx: ClassVar[dict[str, Any]] = {"settings": settings}
        timezone = UTC
        # arq's own health key (arq:queue:health-check) is refreshed this often.
        health_check_interval = 30
        max_jobs = 2

    return WorkerSettings
