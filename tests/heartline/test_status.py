"""`heartline status` against real stacks: 0 when healthy, 1 with the reason when the worker is stopped,
when Redis is down, when migrations are pending or the newest backup is stale."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from ops_stack import ROOT, process_env, running_stack

from heartline.devstack import EmbeddedRedis
from heartline.migrations import SQL_DIR, migrate
from heartline.plane.presence import announce, read_presence
from heartline.settings import Settings
from heartline.status import Verdict, collect

MakeDatabase = Callable[[str], Awaitable[str]]


def line(output: str, check: str) -> str:
    """The report's line for one check, its columns joined by single spaces."""
    found = next(row for row in output.splitlines() if row.startswith(f"{check} "))
    return " ".join(found.split())


async def _worker_has_reaped(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(600):
            if any("reaper" in p.loops for p in await read_presence(client)):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the worker never announced a reap")
    finally:
        await client.aclose()


async def test_status_is_0_on_a_healthy_stack_and_1_with_the_reason_when_the_worker_stops_or_redis_goes_down(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url = await make_database("heartline_status_stack")
    await migrate(url)
    redis_server = EmbeddedRedis(tmp_path / "redis", persist=False)
    redis_url = redis_server.start()
    try:
        with running_stack(url, redis_url, tmp_path) as stack:
            assert stack.heartline("backup", "create").returncode == 0
            await _worker_has_reaped(redis_url)

            healthy = stack.heartline("status")
            assert healthy.returncode == 0, healthy.stdout + healthy.stderr
            out = healthy.stdout
            assert line(out, "postgresql").startswith("postgresql ok ")
            assert line(out, "redis").startswith("redis ok ")
            assert line(out, "migrations").startswith("migrations ok ") and "none pending" in out
            assert line(out, "sessions") == "sessions ok 0 live"
            assert line(out, "workers") == "workers ok 1 running"
            assert line(out, "backlog") == "backlog ok 0 entries not yet stored"
            assert "shard 3: heartbeats 0, events 0" in out
            assert line(out, "reaper").startswith("reaper ok last reap ")
            assert line(out, "backups") == "backups ok fresh (no remote configured)"
            assert out.rstrip().endswith("everything is ok")

            stack.stop_worker()
            stopped = stack.heartline("status")
            assert stopped.returncode == 1, stopped.stdout
            assert line(stopped.stdout, "workers").startswith("workers ATTENTION no worker is running")
            assert line(stopped.stdout, "reaper") == "reaper ATTENTION no running worker reports a reap"
            assert stopped.stdout.rstrip().endswith("2 check(s) need attention: workers, reaper")

            redis_server.stop()
            down = stack.heartline("status")
            assert down.returncode == 1, down.stdout
            assert line(down.stdout, "redis").startswith("redis ATTENTION ")
            assert "unreachable" in line(down.stdout, "redis")
            assert line(down.stdout, "postgresql").startswith("postgresql ok ")
            assert line(down.stdout, "sessions") == "sessions unknown Redis is unreachable"
            assert down.stdout.rstrip().endswith("1 check(s) need attention: redis")
    finally:
        redis_server.stop()


async def test_status_reports_pending_migrations_and_a_stale_backup(
        make_database: MakeDatabase, redis_url: str, tmp_path: Path) -> None:
    url = await make_database("heartline_status_stale")
    older = tmp_path / "sql-older"
    older.mkdir()
    newest = max(SQL_DIR.glob("*.sql"))
    for f in sorted(SQL_DIR.glob("*.sql"))[:-1]:
        shutil.copy(f, older / f.name)
    await migrate(url, older)
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('backup_events') IS NULL"):
            await conn.execute(next(SQL_DIR.glob("*_backup_events.sql")).read_text())
        await conn.execute("INSERT INTO backup_events (occurred_at, kind, trigger, name) "
                           "VALUES ($1, 'created', 'scheduled', 'server_backup_20261129_030000')",
                           datetime.now(UTC) - timedelta(hours=30))
    finally:
        await conn.close()
    res = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "heartline", "status"], env=process_env(url, redis_url, tmp_path),
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert line(res.stdout, "migrations") == (f"migrations ATTENTION 1 pending: {newest.name} "
                                              "(run `heartline migrate`)")
    assert line(res.stdout, "backups").startswith("backups ATTENTION the newest backup is 30 h ")


async def test_status_reads_a_redis_cluster(redis_cluster: Any, cluster_redis: Any, database_url: str,
                                            tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_cluster.url(), stream_shards=4,
                        data_dir=tmp_path / "data", backup_dir=tmp_path / "backups")
    await announce(cluster_redis, "worker-on-cluster", {"reaper": time.time()})
    report = await collect(settings)
    lines = {row.check: row for row in report.lines}
    assert lines["redis"].verdict is Verdict.OK
    assert lines["redis"].summary.startswith("cluster 127.0.0.1:") and "on 6 nodes" in lines["redis"].summary
    assert lines["sessions"].summary == "0 live"
    assert lines["workers"].verdict is Verdict.OK and lines["workers"].details[0].startswith("worker-on-cluster")
    assert lines["reaper"].verdict is Verdict.OK
    assert len(lines["backlog"].details) == 4
