"""Redis killed with SIGKILL under load and brought back empty: the worker (a real `heartline worker`
process) rides it out, the edge answers 503 meanwhile, the sessions Redis lost end as plane_lost, and
every heartbeat answered 200 before and after is stored exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis_process import RedisProcess
from shared_support import process_env
from worker_support import eventually

from edge.app import create_app
from heartline.apikeys import create_api_key
from heartline.devstack import free_port
from heartline.settings import Settings

REPO = Path(__file__).resolve().parents[2]


async def _start_worker(settings: Settings, redis_url: str, metrics_port: int,
                        log_path: Path) -> asyncio.subprocess.Process:
    env = {**process_env(),
           "HEARTLINE_DATABASE_URL": settings.database_url or "", "HEARTLINE_REDIS_URL": redis_url,
           "HEARTLINE_STREAM_SHARDS": str(settings.stream_shards), "HEARTLINE_FLUSH_INTERVAL_S": "0.05",
           "HEARTLINE_REAP_INTERVAL_S": "0.2", "HEARTLINE_RECONCILE_INTERVAL_S": "0.5",
           "HEARTLINE_PENDING_CLAIM_IDLE_S": "1", "HEARTLINE_WORKER_METRICS_PORT": str(metrics_port),
           "HEARTLINE_DATA_DIR": str(settings.data_dir)}
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "heartline", "worker", env=env,
                                                    cwd=REPO, stdout=out, stderr=out)


@pytest.mark.slow
async def test_worker_rides_out_redis_killed_and_restarted_empty(
        settings: Settings, db: asyncpg.Connection, make_license: Any, tmp_path: Path) -> None:
    own = RedisProcess(tmp_path / "redis")
    own.start()
    metrics_port = free_port()
    log_path = tmp_path / "worker.log"
    worker = await _start_worker(settings, own.url, metrics_port, log_path)
    key = await create_api_key(db, "outage", created_by="tests")
    lic = await make_license(device_limit=6, concurrent_sessions_limit=6)
    app = create_app(settings.replace(redis_url=own.url, license_cache_s=0.2))
    answered: Counter[int] = Counter()
    accepted: list[str] = []  # token of every heartbeat answered 200

    async def heartbeat(http: httpx.AsyncClient, token: str) -> int:
        r = await http.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]})
        answered[r.status_code] += 1
        if r.status_code == 200:
            accepted.append(token)
        elif r.status_code == 503:
            assert r.json()["error"]["code"] == "PLANE_UNAVAILABLE" and r.headers["Retry-After"] == "1"
        return r.status_code

    async def start(http: httpx.AsyncClient, fingerprint: str) -> str:
        r = await http.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                  "hardware_fingerprint": fingerprint})
        assert r.status_code == 201, r.text
        return str(r.json()["session_token"])

    async def stored(n: int) -> bool:
        return await db.fetchval("SELECT count(*) FROM license_heartbeats") == n

    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://edge",
                headers={"X-API-Key": key.key}) as http:
            before = [await start(http, f"before-{i}") for i in range(3)]
            for _ in range(20):
                for token in before:
                    assert await heartbeat(http, token) == 200

            async def sessions_recorded() -> bool:
                return await db.fetchval("SELECT count(*) FROM license_sessions") == 3

            await eventually(sessions_recorded, timeout=30)
            await eventually(lambda: stored(len(accepted)), timeout=30)

            own.kill()
            for _ in range(10):  # under load while Redis is gone: 503, never a 500
                for token in before:
                    assert await heartbeat(http, token) == 503
                await asyncio.sleep(0.3)
            async with httpx.AsyncClient() as scrape:
                metrics = await scrape.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert metrics.status_code == 200 and "heartline_worker_redis_up 0.0" in metrics.text
            assert worker.returncode is None, log_path.read_text()[-3000:]

            own.start()  # empty: no persistence

            async def back() -> bool:
                return await heartbeat(http, before[0]) == 404  # SESSION_NOT_FOUND: the plane lost it

            await eventually(back, timeout=30, every=0.2)
            after = [await start(http, f"after-{i}") for i in range(3)]
            for _ in range(20):
                for token in after:
                    assert await heartbeat(http, token) == 200

        assert set(answered) <= {200, 404, 503}, answered

        async def lost_sessions_closed() -> bool:
            rows = await db.fetch("SELECT session_token::text AS t, end_reason FROM session_history")
            return sorted((r["t"], r["end_reason"]) for r in rows) == sorted((t, "plane_lost") for t in before)

        await eventually(lost_sessions_closed, timeout=60)
        await eventually(lambda: stored(len(accepted)), timeout=60)
        assert await db.fetchval("SELECT count(DISTINCT event_id) FROM license_heartbeats") == len(accepted)
        per_token = {token: count for token, count in await db.fetch(
            "SELECT session_token::text, count(*) FROM license_heartbeats GROUP BY 1")}
        assert per_token == dict(Counter(accepted))
        assert worker.returncode is None, log_path.read_text()[-3000:]
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), 30)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        own.kill()
    log_text = log_path.read_text()
    assert worker.returncode == 0, log_text[-3000:]
    assert "worker.poll.redis_unavailable" in log_text, log_text[-3000:]
