"""`python -m loadtests.chaos --minutes N`: bring up a stack of our own, run the population while faults
are injected, heal everything, let the backlog drain, then judge and print.  Exit status 0 only when no
check found a violation (1 otherwise, 2 when the stack could not be brought up).

Phases, each bounded: set-up (PostgreSQL, Redis, proxies, migrations, seed, edges, workers), the run
(`--minutes`), the wind-down (faults healed, every program ends its session), the drain (at most
`--drain-timeout`), the verdict.  Everything listens on 127.0.0.1; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import pickle
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as aioredis
import uvloop

from heartline import db
from heartline.plane import keys
from heartline.settings import Settings
from loadtests.chaos import report
from loadtests.chaos.checks import Verdict, judge
from loadtests.chaos.faults import FaultKind, Injector, Targets, supervise
from loadtests.chaos.ledger import Ledger
from loadtests.chaos.population import Admin, Behaviour, Population
from loadtests.chaos.proxy import ProxyProcess
from loadtests.chaos.sampler import Sampler, backlog_drained
from loadtests.chaos.stack import Part, Postgres, RedisServer, edge_part, part_env, worker_part
from loadtests.seed import LicenseSpec, Seed, seed

REPORTS = Path(__file__).resolve().parents[1] / "reports"

# The soak's server settings: short heartbeat times so sessions come and go, and worker intervals short
# enough that a killed worker's entries are claimed and lost sessions closed within seconds.
INTERVAL_S = 2
TIMEOUT_S = 15
SERVER_SETTINGS = {
    "HEARTLINE_STREAM_SHARDS": "4",
    "HEARTLINE_HEARTBEAT_MIN_GAP_MS": "300",
    "HEARTLINE_RECONCILE_INTERVAL_S": "3",
    "HEARTLINE_PENDING_CLAIM_IDLE_S": "5",
    "HEARTLINE_LICENSE_CACHE_S": "3",
    "HEARTLINE_LOG_LEVEL": "INFO",
}


@dataclass
class Stack:
    workdir: Path
    pg: Postgres
    redis: RedisServer
    pg_proxy: ProxyProcess
    redis_proxy: ProxyProcess
    edges: list[Part]
    edge_urls: list[str]
    workers: list[Part]
    settings: Settings        # as the processes see it (through the proxies)

    async def stop(self, *, keep_database: bool = False) -> None:
        for part in [*self.edges, *self.workers]:
            await asyncio.to_thread(part.stop)
        await self.pg_proxy.close()
        await self.redis_proxy.close()
        self.redis.stop()
        if keep_database and self.pg.embedded is None:
            print(f"database kept: {self.pg.url}")
        else:
            await self.pg.stop()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


async def _wait_ready(url: str, part: Part, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if part.proc is not None and part.proc.poll() is not None:
                raise RuntimeError(f"{part.name} exited with {part.proc.returncode}:\n{part.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{part.name} was not ready within {timeout:.0f} s:\n{part.log_tail()}")


async def _redis_answers(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = aioredis.Redis.from_url(url)
        try:
            await probe.ping()
            return
        except (OSError, aioredis.RedisError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"our Redis did not answer within {timeout:.0f} s") from None
            await asyncio.sleep(0.1)
        finally:
            await probe.aclose()


async def bring_up(workdir: Path, args: argparse.Namespace, started: list[Any]) -> Stack:
    """Start everything; each thing started is appended to `started` (stopped in reverse on failure)."""
    pg = await Postgres.start(workdir, args.database_url)
    started.append(pg)
    redis = RedisServer(workdir / "redis")
    redis.start()
    started.append(redis)
    await _redis_answers(redis.url)
    pg_proxy = ProxyProcess("127.0.0.1", urlsplit(pg.url).port or 5432, name="postgres")
    await pg_proxy.start()
    started.append(pg_proxy)
    redis_proxy = ProxyProcess("127.0.0.1", redis.port, name="redis")
    await redis_proxy.start()
    started.append(redis_proxy)
    direct_env = part_env(workdir, pg.url, redis.url, SERVER_SETTINGS)
    migrated = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "heartline", "migrate"],
                                       env=direct_env, capture_output=True, text=True, check=False)
    if migrated.returncode != 0:
        raise RuntimeError(f"heartline migrate failed:\n{migrated.stdout}\n{migrated.stderr}")
    env = part_env(workdir, _via(pg.url, pg_proxy.port), f"redis://127.0.0.1:{redis_proxy.port}/0",
                   SERVER_SETTINGS)
    edges, urls = [], []
    for n in range(1, args.edges + 1):
        part, port = edge_part(n, workdir, env)
        edges.append(part)
        urls.append(f"http://127.0.0.1:{port}")
    workers = [worker_part(n, workdir, env) for n in range(1, args.workers + 1)]
    for part in [*edges, *workers]:
        part.start()
        started.append(part)
    for part, url in zip(edges, urls, strict=True):
        await _wait_ready(url, part)
    return Stack(workdir, pg, redis, pg_proxy, redis_proxy, edges, urls, workers, Settings.from_env(env))


async def _stop_started(started: list[Any]) -> None:
    for thing in reversed(started):
        with contextlib.suppress(Exception):
            result = thing.stop() if not isinstance(thing, ProxyProcess) else thing.close()
            if asyncio.iscoroutine(result):
                await result


async def seed_licenses(database_url: str, count: int) -> Seed:
    conn = await db.connect(database_url, actor="chaos")
    try:
        return await seed(conn, [LicenseSpec(count=count, device_limit=3, sessions_limit=2,
                                             interval_s=INTERVAL_S, timeout_s=TIMEOUT_S, product="chaos")])
    finally:
        await conn.close()


async def drained(stack: Stack, license_ids: list[int]) -> str:
    """'' when everything is stored and closed, else what is still waiting."""
    redis = aioredis.Redis.from_url(stack.redis.url, socket_timeout=5)
    try:
        heartbeats, events = await backlog_drained(redis, stack.settings.stream_shards)
        live = 0
        for license_id in license_ids:
            live += await redis.zcard(keys.live_sessions(license_id, stack.settings.stream_shards))
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(stack.pg.url)
    try:
        open_rows = await conn.fetchval("SELECT count(*) FROM license_sessions WHERE license_id = ANY($1)",
                                        license_ids)
    finally:
        await conn.close()
    waiting = []
    if not heartbeats:
        waiting.append("heartbeat streams not drained")
    if not events:
        waiting.append("session event streams not drained")
    if live:
        waiting.append(f"{live} sessions still live in Redis")
    if open_rows:
        waiting.append(f"{open_rows} rows open in license_sessions")
    return "; ".join(waiting)


async def run_soak(args: argparse.Namespace, workdir: Path) -> tuple[Verdict, dict[str, Any]]:
    rng = random.Random(args.seed)
    started: list[Any] = []
    try:
        stack = await bring_up(workdir, args, started)
    except BaseException:
        await _stop_started(started)
        raise
    try:
        seed_data = await seed_licenses(stack.pg.url, args.licenses)
        ledger = Ledger()
        behaviour = Behaviour()
        population = Population(ledger, stack.edge_urls, seed_data.api_key, seed_data.licenses,
                                seed_data.run_id, rng, behaviour, TIMEOUT_S)
        admin = Admin(ledger, stack.settings, seed_data.licenses, rng, behaviour)
        targets = Targets(stack.edges, stack.workers, stack.redis, stack.redis_proxy, stack.pg_proxy)
        kinds = [FaultKind(k) for k in args.faults.split(",") if k != "none"] if args.faults else None
        injector = Injector(targets, ledger, rng, short=args.minutes < 5, kinds=kinds)
        sampler = Sampler(ledger, stack.redis.url, stack.pg.url, seed_data.licenses,
                          stack.settings.stream_shards,
                          mirror_grace_s=stack.settings.pending_claim_idle_s
                          + 2 * stack.settings.reconcile_interval_s + 10)
        stop_clients, stop_faults, stop_watch = asyncio.Event(), asyncio.Event(), asyncio.Event()
        t0 = time.time()
        until = t0 + args.minutes * 60
        print(f"soak running for {args.minutes:g} min: {len(seed_data.licenses) * 3} programs on "
              f"{len(seed_data.licenses)} licenses, {args.edges} edges, {args.workers} workers "
              f"(seed {args.seed})", flush=True)
        clients = [asyncio.create_task(population.run(stop_clients)),
                   asyncio.create_task(admin.run(stop_clients))]
        watchers = [asyncio.create_task(sampler.run(stop_watch)),
                    asyncio.create_task(supervise(targets, ledger, stop_watch))]
        faults = asyncio.create_task(injector.run(stop_faults, until))
        progress = asyncio.create_task(_progress(ledger, t0, until))
        lag = asyncio.create_task(_watch_loop(ledger))
        await asyncio.sleep(max(0.0, until - time.time()))
        stop_faults.set()
        await faults
        # heal whatever the last fault left behind
        await stack.pg_proxy.restore()
        await stack.redis_proxy.set_delay(0.0)
        stop_clients.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=120)
        progress.cancel()
        lag.cancel()
        wound_down = time.time()
        print(f"wound down at +{wound_down - t0:.0f} s; waiting for the backlog to drain", flush=True)
        waiting = "not checked"
        while time.time() - wound_down < args.drain_timeout:
            try:
                waiting = await drained(stack, seed_data.license_ids())
            except (OSError, aioredis.RedisError, asyncpg.PostgresError) as exc:
                waiting = f"could not check: {exc}"
            if not waiting:
                break
            await asyncio.sleep(1.0)
        drain_s = time.time() - wound_down
        stop_watch.set()
        await asyncio.gather(*watchers)
        conn = await asyncpg.connect(stack.pg.url)
        try:
            verdict = await judge(conn, ledger, seed_data.license_ids(), timeout_s=TIMEOUT_S,
                                  license_cache_s=stack.settings.license_cache_s, t0=t0)
        finally:
            await conn.close()
        if waiting:
            verdict.fail(f"the backlog did not drain within {args.drain_timeout:.0f} s: {waiting}")
        meta = {"minutes": args.minutes, "seed": args.seed,
                "started": dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(), "t0": t0,
                "licenses": len(seed_data.licenses), "programs": len(seed_data.licenses) * 3,
                "edges": args.edges, "workers": args.workers,
                "redis": f"{stack.redis.version}, appendonly yes, appendfsync everysec",
                "postgres": "embedded" if stack.pg.embedded else "fresh database on the given server",
                "drain_s": round(drain_s, 1), "drained": not waiting, **report.figures(ledger, t0)}
        with (workdir / "ledger.pickle").open("wb") as handle:
            pickle.dump(ledger, handle)   # to judge a run again after a change to the checks
        return verdict, meta
    finally:
        await stack.stop(keep_database=args.keep_database)


async def _progress(ledger: Ledger, t0: float, until: float) -> None:
    while True:
        await asyncio.sleep(30)
        ok = sum(1 for _, route, status, _ in ledger.timeline if route == "heartbeat" and status == 200)
        last = ledger.faults[-1] if ledger.faults else None
        print(f"  +{time.time() - t0:.0f} s of {until - t0:.0f}: {len(ledger.timeline)} requests, {ok} "
              f"heartbeats answered 200, {len(ledger.faults)} faults"
              + (f" (last: {last.kind} {last.target})" if last else ""), flush=True)


async def _watch_loop(ledger: Ledger) -> None:
    """How late the soak's own event loop wakes up: a starved harness would blur every time it takes."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.1)
        ledger.loop_lag_max_s = max(ledger.loop_lag_max_s, loop.time() - before - 0.1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long faults are injected")
    parser.add_argument("--licenses", type=int, default=30, help="licenses, 3 programs each (default 30)")
    parser.add_argument("--edges", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to create a fresh database on (default: embedded)")
    parser.add_argument("--faults", default="", help=f"comma-separated kinds, or none (default all: "
                                                     f"{','.join(k.value for k in FaultKind)})")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--keep-database", action="store_true",
                        help="with --database-url: keep the soak's database for a post-mortem")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for logs and report.json (default loadtests/reports/chaos-<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.licenses < 1 or args.edges < 1 or args.workers < 1:
        print("loadtests.chaos: --minutes, --licenses, --edges and --workers must be positive",
              file=sys.stderr)
        return 2
    args.seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    out = args.out or REPORTS / f"chaos-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60 + args.drain_timeout + 600   # set-up, wind-down and shutdown included
    try:
        verdict, meta = uvloop.run(asyncio.wait_for(run_soak(args, out), timeout=budget))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"loadtests.chaos: the soak could not run: {exc}", file=sys.stderr)
        return 2
    text = report.render(verdict, meta)
    print(text)
    (out / "report.json").write_text(json.dumps({**meta, "figures": verdict.figures,
                                                 "violations": verdict.violations}, indent=2))
    (out / "report.txt").write_text(text + "\n")
    (out / "stories.txt").write_text("\n\n".join(verdict.stories) + "\n")
    print(f"logs and report: {out}")
    return 0 if verdict.ok else 1
