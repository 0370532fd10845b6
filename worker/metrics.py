"""The worker's /metrics: stream backlog and what the loops did, in Prometheus text format.

Served by a small HTTP listener on `worker_metrics_host:worker_metrics_port` (GET /metrics, GET /healthz)
inside the worker process.  The backlog is read from Redis at scrape time: because the worker trims the
entries every group has acknowledged, a stream's length is the number of entries not yet stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from redis.exceptions import ResponseError

from heartline.plane import keys
from worker.loops import LoopState
from worker.streams import parse_stream_id

if TYPE_CHECKING:
    from worker.flush import FlushResult
    from worker.history import HistoryResult

log = logging.getLogger("worker.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    def heartbeats_flushed(self, result: FlushResult) -> None:
        self.heartbeats_stored.inc(result.stored)
        self.heartbeats_duplicate.inc(result.duplicates)
        if result.malformed:
            self.entries_malformed.labels("heartbeats").inc(result.malformed)

    def session_events_recorded(self, result: HistoryResult) -> None:
        self.session_events.labels("started").inc(result.started)
        self.session_events.labels("ended").inc(result.ended)
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

    async def read_backlog(self, redis: aioredis.Redis, shards: int) -> None:
        now_s, now_us = await redis.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        for shard in range(shards):
            for key, group in ((keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP),
                               (keys.event_stream(shard), keys.EVENT_GROUP)):
                length, pending, oldest_ms = 0, 0, None
                try:
                    info = await redis.xinfo_stream(key)
                    length = int(info["length"])
                    first = info.get("first-entry")
                    if first and first[0]:
                        oldest_ms = parse_stream_id(first[0])[0]
                    pending = int((await redis.xpending(key, group))["pending"])
                except ResponseError:
                    pass  # stream or group not created yet
                self.stream_length.labels(key).set(length)
                self.stream_pending.labels(key).set(pending)
                self.stream_oldest_age.labels(key).set(max(0, now_ms - oldest_ms) / 1000 if oldest_ms else 0)

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
                # Redis down must still answer the scrape, and with 200: a failed scrape would drop
                # every series of the worker exactly when the backlog matters; redis_up says it instead.
                try:
                    await metrics.read_backlog(ctx["redis"], ctx["settings"].stream_shards)
                    metrics.redis_up.set(1)
                except Exception as exc:  # noqa: BLE001
                    log.warning("worker.metrics.backlog_unavailable error=%s", exc)
                    metrics.redis_up.set(0)
                status = "200 OK"
                body = metrics.render()
                body += f"# backlog read in {time.monotonic() - started:.3f}s\n".encode()
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
