"""Faults: PostgreSQL unreachable while heartbeats keep coming, and a worker killed with SIGKILL in the
middle of its batches.  Either way every heartbeat lands exactly once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from worker_support import LiveLicense, TcpProxy, eventually

from edge.app import create_app
from heartline.apikeys import create_api_key
from heartline.plane import keys
from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown, start_loops

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def proxied_worker(worker_settings: Settings, db: asyncpg.Connection,
                         redis: aioredis.Redis) -> AsyncIterator[tuple[dict[str, Any], TcpProxy]]:
    """A worker (loops running) whose PostgreSQL is reached through a proxy the test can cut."""
    url = urlsplit(worker_settings.database_url or "")
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    netloc = f"{url.username}@127.0.0.1:{proxy.port}" if url.username else f"127.0.0.1:{proxy.port}"
    proxied = url._replace(netloc=netloc).geturl()
    ctx: dict[str, Any] = {"settings": worker_settings.replace(database_url=proxied),
                           "consumer_name": "proxied"}
    await open_resources(ctx)
    start_loops(ctx)
    try:
        yield ctx, proxy
    finally:
        await shutdown(ctx)
        await proxy.cut()


async def test_heartbeats_sent_while_postgres_is_down_all_land_once_after_it_returns(
        proxied_worker: tuple[dict[str, Any], TcpProxy], db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]], caplog: pytest.LogCaptureFixture) -> None:
    ctx, proxy = proxied_worker
    caplog.set_level(logging.INFO, logger="worker")
    lic = await live_license(devices=2)
    session = await plane.start_session(lic.license_id, lic.fingerprint)
    token = session.token or ""
    for _ in range(50):
        assert (await plane.heartbeat(lic.license_id, token)).code == "OK"

    async def stored(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await db.fetchval("SELECT count(*) FROM license_heartbeats") == n
        return check

    await eventually(await stored(50))

    await proxy.cut()
    # The plane keeps accepting heartbeats and session changes while PostgreSQL is unreachable.
    for _ in range(300):
        assert (await plane.heartbeat(lic.license_id, token)).code == "OK"
    late = await plane.start_session(lic.license_id, f"fp-{lic.license_id}-1")
    assert await plane.end_session(lic.license_id, late.token or "", EndReason.CLIENT_END)
    await asyncio.sleep(2.0)  # several failed attempts with backoff

    await ctx["metrics"].read_backlog(ctx["redis"], ctx["settings"].stream_shards)
    shard_stream = keys.heartbeat_stream(keys.shard_of(lic.license_id, ctx["settings"].stream_shards))
    assert ctx["metrics"].stream_length.labels(shard_stream)._value.get() >= 300
    assert ctx["metrics"].loop_up.labels("flush")._value.get() == 0

    await proxy.start()   # same port
    await eventually(await stored(350), timeout=45)

    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM license_heartbeats") == 350
    assert await db.fetchval("SELECT heartbeat_count FROM license_sessions WHERE session_token = $1",
                             uuid.UUID(token)) == 350

    async def history_recorded() -> bool:
        return await db.fetchval("SELECT end_reason FROM session_history WHERE session_token = $1",
                                 uuid.UUID(late.token or "")) == "client_end"

    await eventually(history_recorded)
    flush_logs = [r.getMessage().split(" ")[0] for r in caplog.records
                  if r.getMessage().startswith("worker.flush.")]
    # once per change of state, not once per failed attempt
    assert flush_logs.count("worker.flush.db_unavailable") == 1, flush_logs
    assert flush_logs.count("worker.flush.db_recovered") == 1, flush_logs
    assert ctx["metrics"].loop_up.labels("flush")._value.get() == 1


async def test_edge_keeps_accepting_heartbeats_while_postgres_is_down_and_all_land_once(
        proxied_worker: tuple[dict[str, Any], TcpProxy], db: asyncpg.Connection, make_license: Any) -> None:
    ctx, proxy = proxied_worker
    key = await create_api_key(db, "outage", created_by="tests")
    lic = await make_license(device_limit=2, concurrent_sessions_limit=2)
    app = create_app(ctx["settings"])   # the edge reaches PostgreSQL through the same proxy
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge",
            headers={"X-API-Key": key.key}) as edge:
        started = await edge.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                        "hardware_fingerprint": "box"})
        assert started.status_code == 201, started.text
        token = started.json()["session_token"]
        body = {"license_key": lic["license_key"]}
        await proxy.cut()
        codes = [(await edge.post(f"/v1/sessions/{token}/heartbeat", json=body)).status_code
                 for _ in range(100)]
        assert codes == [200] * 100
        await proxy.start()

    async def all_stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM license_heartbeats") == 100

    await eventually(all_stored, timeout=45)
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM license_heartbeats") == 100


def _worker_process(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "HEARTLINE_DATABASE_URL": settings.database_url or "",
           "HEARTLINE_REDIS_URL": settings.redis_url or "",
           "HEARTLINE_STREAM_SHARDS": str(settings.stream_shards), "HEARTLINE_FLUSH_BATCH_SIZE": "200",
           "HEARTLINE_FLUSH_INTERVAL_S": "0.05", "HEARTLINE_PENDING_CLAIM_IDLE_S": "1",
           "HEARTLINE_WORKER_METRICS_PORT": "0", "HEARTLINE_DATA_DIR": str(settings.data_dir),
           # the tests' sessions exist in PostgreSQL only: reconciliation would close them as plane_lost
           # once a slow (loaded) run outlasts its 15 s interval
           "HEARTLINE_RECONCILE_INTERVAL_S": "3600"}
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "heartline", "worker"], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
async def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
        worker_settings: Settings, db: asyncpg.Connection, redis: aioredis.Redis, make_license: Any,
        tmp_path: Path) -> None:
    shards = worker_settings.stream_shards
    sessions = []
    for _ in range(shards):
        lic = await make_license()
        token = uuid.uuid4()
        await db.execute("INSERT INTO license_sessions (session_token, license_id, started_at) "
                         "VALUES ($1, $2, now())", token, lic["id"])
        sessions.append((lic["id"], str(token)))
    per_session = 4000
    for license_id, session_token in sessions:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(per_session):
                pipe.xadd(keys.heartbeat_stream(keys.shard_of(license_id, shards)),
                          {"l": license_id, "t": session_token, "d": ""})
            await pipe.execute()
    total = per_session * len(sessions)

    log_path = tmp_path / "workers.log"
    first = _worker_process(worker_settings, log_path)
    try:
        async def some_stored() -> bool:
            return await db.fetchval("SELECT count(*) FROM license_heartbeats") >= 1000
        await eventually(some_stored, timeout=60, every=0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = await db.fetchval("SELECT count(*) FROM license_heartbeats")
    assert at_kill < total, "the first worker finished before it could be killed"
    held_by_dead = 0
    for shard in range(shards):
        held_by_dead += (await redis.xpending(keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP))["pending"]

    second = _worker_process(worker_settings, log_path)
    try:
        async def all_stored_and_acknowledged() -> bool:
            if await db.fetchval("SELECT count(*) FROM license_heartbeats") != total:
                return False
            for shard in range(shards):
                pending = await redis.xpending(keys.heartbeat_stream(shard), keys.HEARTBEAT_GROUP)
                if pending["pending"]:
                    return False
            return True
        await eventually(all_stored_and_acknowledged, timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()

    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM license_heartbeats") == total
    counts = await db.fetch("SELECT heartbeat_count FROM license_sessions")
    assert [r["heartbeat_count"] for r in counts] == [per_session] * len(sessions)
    log_text = log_path.read_text()
    assert "worker.started" in log_text and second.returncode == 0, log_text[-3000:]
    if held_by_dead:
        # what the dead worker had read but not acknowledged was taken over, not lost
        assert "worker.streams.claimed" in log_text, log_text[-3000:]


async def test_worker_started_while_redis_is_unreachable_starts_and_stores_everything_once_it_is_back(
        worker_settings: Settings, db: asyncpg.Connection, plane: SessionPlane,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    # The chaos soak found a worker restarted just as Redis died exiting at start (loading its scripts).
    url = urlsplit(worker_settings.redis_url or "")
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    await proxy.cut()   # Redis unreachable for the worker; the port is kept for when it comes back
    ctx: dict[str, Any] = {"settings": worker_settings.replace(
        redis_url=url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()), "consumer_name": "late"}
    await open_resources(ctx)
    start_loops(ctx)
    try:
        lic = await live_license()
        token = (await plane.start_session(lic.license_id, lic.fingerprint)).token or ""
        for _ in range(20):
            assert (await plane.heartbeat(lic.license_id, token)).code == "OK"
        await proxy.start()   # no consumer group exists yet: the worker creates them at its first read

        async def all_stored() -> bool:
            return await db.fetchval("SELECT count(*) FROM license_heartbeats") == 20
        await eventually(all_stored, timeout=45)

        # the session's row comes from its `started` event, through the history loop: it may land after
        # the heartbeats, and then counts them (worker/flush.py, MIRROR_LOCK)
        async def all_counted() -> bool:
            return await db.fetchval("SELECT heartbeat_count FROM license_sessions WHERE session_token = $1",
                                     uuid.UUID(token)) == 20
        await eventually(all_counted, timeout=45)
    finally:
        await shutdown(ctx)
        await proxy.cut()
