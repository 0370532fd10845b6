"""The worker's /metrics: stream backlog, what the loops did, whether PostgreSQL and Redis answer, Redis
memory and backup freshness, in Prometheus text format.

Served by a small HTTP listener on `worker_metrics_host:worker_metrics_port` (GET /metrics, GET /healthz)
inside the worker process.  Backlog, dependencies, Redis memory and backup freshness are read at scrape
time; the backlog from Redis (heartline/plane/backlog.py): because the worker trims the entries every
group has acknowledged, a stream's length is the number of entries not yet stored.  A scrape always
answers 200, with `heartline_worker_redis_up` / `heartline_worker_postgres_up` 0 for a server that did not
answer: Prometheus drops every sample of a failed scrape, exactly when the alerts need them.
docs/operations.md lists the alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from heartline import backup_events
from heartline.plane.backlog import read_backlog
from heartline.plane.memory import read_memory
from worker.loops import LoopState

if TYPE_CHECKING:
    from worker.flush import FlushResult
    from worker.history import HistoryResult

log = logging.getLogger("worker.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A server that has not answered in this long counts as down for this scrape.
PROBE_TIMEOUT_S = 2.0


class WorkerMetrics:
    """The counters and gauges of one worker process (its own registry, no module globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.heartbeats_stored = Counter("heartline_worker_heartbeats_stored", "Heartbeat rows stored",
                                         registry=r)
        self.heartbeats_duplicate = Counter(
            "heartline_worker_heartbeats_redelivered", "Heartbeats delivered again and not stored twice",
            registry=r)
        self.entries_malformed = Counter("heartline_worker_entries_malformed",
                                         "Stream entries skipped as malformed", ["stream"], registry=r)
        self.session_events = Counter("heartline_worker_session_events",
                                      "Session events that changed PostgreSQL", ["kind"], registry=r)
        self.reaped = Counter("heartline_worker_sessions_reaped", "Sessions ended by the reaper (timeout)",
                              registry=r)
        self.lost = Counter("heartline_worker_sessions_lost", "Sessions closed as plane_lost", registry=r)
        self.webhook_attempts = Counter("heartline_worker_webhook_attempts",
                                        "Webhook delivery attempts by outcome (delivered, pending = will retry, "
                                        "failed = gave up)", ["outcome"], registry=r)
        self.loop_up = Gauge("heartline_worker_loop_up", "1 while the loop's last attempt succeeded",
                             ["loop"], registry=r)
        self.stream_length = Gauge("heartline_worker_stream_length",
                                   "Entries in the stream = backlog not yet stored", ["stream"], registry=r)
        self.stream_pending = Gauge("heartline_worker_stream_pending",
                                    "Entries delivered to a consumer and not yet acknowledged", ["stream"],
                                    registry=r)
        self.stream_oldest_age = Gauge("heartline_worker_stream_oldest_age_seconds",
                                       "Age of the oldest entry still in the stream", ["stream"], registry=r)
        self.redis_up = Gauge("heartline_worker_redis_up",
                              "1 when this scrape read the backlog from Redis; 0 while Redis is unreachable "
                              "(the stream series then keep their last values)", registry=r)
        self.loop_last_success = Gauge("heartline_worker_loop_last_success_timestamp_seconds",
                                       "When the loop's last step succeeded (Unix time)", ["loop"], registry=r)
        self.postgres_up = Gauge("heartline_worker_postgres_up",
                                 "1 when PostgreSQL answered this scrape's backup-freshness query; 0 while it is "
                                 "unreachable (the backup series then keep their last values)", registry=r)
        self.redis_memory_used = Gauge("heartline_redis_memory_used_bytes",
                                       "Redis used_memory (on a cluster: of the node nearest its limit)", registry=r)
        self.redis_memory_max = Gauge("heartline_redis_memory_max_bytes",
                                      "Redis maxmemory (0: no limit set) of that node", registry=r)
        self.backup_last_success = Gauge("heartline_backup_last_success_timestamp_seconds",
                                         "When the newest backup was created (Unix time; 0: never)", registry=r)
        self.backup_last_upload = Gauge("heartline_backup_last_upload_timestamp_seconds",
                                        "When a backup was last uploaded to the remote (Unix time; 0: never)",
                                        registry=r)
        self.backup_last_failure = Gauge("heartline_backup_last_failure_timestamp_seconds",
                                         "When a backup or upload last failed (Unix time; 0: never)", registry=r)
        self.backup_remote_configured = Gauge("heartline_backup_remote_configured",
                                              "1 when HEARTLINE_BACKUP_REMOTE is set", registry=r)
        # loop name -> Unix time of its last successful step, also announced in Redis for `heartline status`
        self.last_success: dict[str, float] = {}

    def heartbeats_flushed(self, result: FlushResult) -> None:
        self.heartbeats_stored.inc(result.stored)
        self.heartbeats_duplicate.inc(result.duplicates)
        if result.malformed:
            self.entries_malformed.labels("heartbeats").inc(result.malformed)

    def session_events_recorded(self, result: HistoryResult) -> None:
        self.session_events.labels("started").inc(result.started)
        self.session_events.labels("ended").inc(result.ended)
        if result.refused:
            self.session_events.labels("refused").inc(result.refused)
        if result.malformed:
            self.entries_malformed.labels("events").inc(result.malformed)

    def sessions_reaped(self, n: int) -> None:
        self.reaped.inc(n)

    def webhook_attempted(self, outcome: str) -> None:
        self.webhook_attempts.labels(outcome).inc()

    def sessions_lost(self, n: int) -> None:
        self.lost.inc(n)

    def loop_state(self, name: str, state: LoopState) -> None:
        self.loop_up.labels(name).set(1 if state is LoopState.OK else 0)

    def loop_succeeded(self, name: str) -> None:
        now = time.time()
        self.last_success[name] = now
        self.loop_last_success.labels(name).set(now)

    async def read_backlog(self, redis: aioredis.Redis, shards: int) -> None:
        for stream in await read_backlog(redis, shards):
            self.stream_length.labels(stream.stream).set(stream.length)
            self.stream_pending.labels(stream.stream).set(stream.pending)
            self.stream_oldest_age.labels(stream.stream).set(stream.oldest_age_s)

    async def read_redis(self, redis: aioredis.Redis, shards: int) -> None:
        """Backlog and memory; redis_up says whether Redis answered."""
        try:
            await asyncio.wait_for(self.read_backlog(redis, shards), PROBE_TIMEOUT_S)
            used, limit, _nodes = await asyncio.wait_for(read_memory(redis), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means Redis did not answer this scrape
            log.warning("worker.metrics.redis_unavailable error=%s", exc)
            self.redis_up.set(0)
            return
        self.redis_up.set(1)
        self.redis_memory_used.set(used)
        self.redis_memory_max.set(limit)

    async def read_postgres(self, pool: Any, remote_configured: bool) -> None:
        """Backup freshness from backup_events; postgres_up says whether PostgreSQL answered."""
        self.backup_remote_configured.set(1 if remote_configured else 0)
        try:
            row = await asyncio.wait_for(pool.fetchrow(backup_events.FRESHNESS_SQL), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means PostgreSQL did not answer this scrape
            log.warning("worker.metrics.postgres_unavailable error=%s", exc)
            self.postgres_up.set(0)
            return
        self.postgres_up.set(1)
        fresh = backup_events.Freshness.from_row(row)
        for gauge, when in ((self.backup_last_success, fresh.last_created),
                            (self.backup_last_upload, fresh.last_uploaded),
                            (self.backup_last_failure, fresh.last_failed)):
            gauge.set(when.timestamp() if when is not None else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(ctx: dict[str, Any], host: str, port: int) -> asyncio.Server:
    """Start the /metrics listener; the caller closes the returned server."""
    metrics: WorkerMetrics = ctx["metrics"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path = (request.split(b" ", 2) + [b"", b""])[:2]
            path = path.split(b"?", 1)[0]
            if method != b"GET":
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == b"/metrics":
                started = time.monotonic()
                settings = ctx["settings"]
                await asyncio.gather(metrics.read_redis(ctx["redis"], settings.stream_shards),
                                     metrics.read_postgres(ctx["pool"], bool(settings.backup_remote)))
                status = "200 OK"
                body = metrics.render()
                body += f"# read in {time.monotonic() - started:.3f}s\n".encode()
                ctype = CONTENT_TYPE
            elif path == b"/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("worker.metrics.listening host=%s port=%s", host, server.sockets[0].getsockname()[1])
    return server
