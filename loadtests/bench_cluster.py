"""The cluster benchmark: heartbeats/s and CPU per heartbeat on a 3-master Redis Cluster against one
Redis, with one edge process and with two, in the same run (`python -m loadtests.bench --cluster`).

    python -m loadtests.bench --cluster                       # 2 rounds of 10 s per configuration
    python -m loadtests.bench --cluster --rounds 1 --duration 4 --sessions 5000   # quick

One run starts PostgreSQL, one Redis and a cluster of 3 masters + 3 replicas (embedded wheels, free
loopback ports), seeds licenses, fills both planes with the same number of live sessions through the
plane's own API, and serves the edge (loadtests/serve.py `edge`, the shipped app) in five configurations:
one Redis with one and two edge processes, the cluster with one and two, and the cluster with one edge at
HEARTLINE_REDIS_MIN_REPLICAS=1.  Each is saturated in turn (the others idle) by the load generator (two
generators, one per edge process, when there are two); per configuration it reports accepted
heartbeats/s, edge CPU µs per heartbeat (all its processes), Redis CPU µs per heartbeat (all masters) and
per master.  A 2-core machine cannot show the cluster scaling — everything shares two cores — so the
per-heartbeat CPU figures are what docs/capacity.md builds on.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heartline import db
from heartline.devcluster import EmbeddedRedisCluster
from heartline.devstack import EmbeddedPostgres, EmbeddedRedis
from heartline.license_cache import LICENSE_COLUMNS, to_cached
from heartline.migrations import migrate
from heartline.plane import redis as plane_redis
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings
from loadtests.loadgen import LoadResult, run_load, write_requests
from loadtests.seed import LicenseSpec, Seed, seed
from loadtests.servers import Server, machine, process_cpu_s, redis_cpu_s, sealing_env, start_server

SESSIONS_PER_LICENSE = 10
START_BATCH = 4000


@dataclass(frozen=True)
class Config:
    name: str
    cluster: bool
    edges: int
    min_replicas: int = 0


CONFIGS = (Config("single-1edge", False, 1), Config("single-2edges", False, 2),
           Config("cluster-1edge", True, 1), Config("cluster-2edges", True, 2),
           Config("cluster-1edge-min_replicas1", True, 1, 1))


async def _fill(url: str, database_url: str, settings: Settings, seed_data: Seed,
                sessions: int) -> list[tuple[str, str, int]]:
    """Cache the seeded licenses and start `sessions` sessions; returns (token, license key, id) of each."""
    conn = await db.connect(database_url, actor="loadtest")
    try:
        rows = await conn.fetch(f"SELECT {LICENSE_COLUMNS} FROM licenses WHERE customer_id = $1 ORDER BY id",
                                seed_data.customer_id)
    finally:
        await conn.close()
    by_id = {lic.id: lic for lic in seed_data.licenses}
    client = plane_redis.connect(url)
    mux = plane_redis.multiplexed(url)
    plane = SessionPlane(client, settings, scripts_client=mux)
    tokens: list[tuple[str, str, int]] = []
    try:
        await plane.load_scripts()
        for i in range(0, len(rows), 1000):
            await asyncio.gather(*(plane.cache_license(to_cached(r, settings), by_id[r["id"]].devices)
                                   for r in rows[i:i + 1000]))
        wanted = [(lic, fp) for lic in seed_data.licenses for fp in lic.devices][:sessions]
        for i in range(0, len(wanted), START_BATCH):
            batch = wanted[i:i + START_BATCH]
            outcomes = await asyncio.gather(*(plane.start_session(lic.id, fp) for lic, fp in batch))
            for (lic, _fp), outcome in zip(batch, outcomes, strict=True):
                if outcome.code is not PlaneCode.STARTED or outcome.token is None:
                    raise RuntimeError(f"start refused for license {lic.id}: {outcome.code}")
                tokens.append((outcome.token, lic.key, lic.id))
    finally:
        if mux is not None:
            await mux.aclose()
        await client.aclose()
    return tokens


def _requests(tokens: list[tuple[str, str, int]], hot_set: int,
              rng: random.Random) -> list[tuple[str, bytes]]:
    chosen = rng.sample(tokens, min(hot_set, len(tokens)))
    return [(f"/v1/sessions/{token}/heartbeat", json.dumps({"license_key": key}).encode())
            for token, key, _ in chosen]


async def _plane_heartbeats(url: str, redis_urls: list[str], settings: Settings, min_replicas: int,
                            tokens: list[tuple[str, str, int]], seconds: float,
                            concurrency: int = 64) -> dict[str, float]:
    """The plane alone, no HTTP: `concurrency` tasks calling SessionPlane.heartbeat through the
    multiplexing client for `seconds`.  CPU time (this process's, each Redis's) per heartbeat is what
    it costs whatever else the machine runs; heartbeats/s is what this process reached."""
    client = plane_redis.connect(url)
    mux = plane_redis.multiplexed(url, min_replicas=min_replicas)
    plane = SessionPlane(client, settings, scripts_client=mux)
    calls = 0
    deadline = 0.0

    async def beat(offset: int) -> None:
        nonlocal calls
        i = offset
        while time.perf_counter() < deadline:
            token, _key, license_id = tokens[i % len(tokens)]
            outcome = await plane.heartbeat(license_id, token)
            if outcome.code is not PlaneCode.OK:
                raise RuntimeError(f"heartbeat refused: {outcome.code}")
            calls += 1
            i += concurrency
    try:
        await plane.load_scripts()
        deadline = time.perf_counter() + 1.0
        await asyncio.gather(*(beat(i) for i in range(concurrency)))  # warm-up
        calls = 0
        redis_before = [redis_cpu_s(u) for u in redis_urls]
        cpu_before, started = time.process_time(), time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(beat(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
        per_node = [redis_cpu_s(u) - b for u, b in zip(redis_urls, redis_before, strict=True)]
        assert mux is not None
        return {"heartbeats_per_s": calls / elapsed, "client_cpu_us": client_cpu * 1e6 / calls,
                "redis_cpu_us": sum(per_node) * 1e6 / calls, "busiest_redis_cpu_us": max(per_node) * 1e6 / calls,
                "per_write": mux.commands / max(1, mux.writes)}
    finally:
        if mux is not None:
            await mux.aclose()
        await client.aclose()


def _load(edges: list[Server], requests_file: Path, api_key: str, duration: float,
          connections: int) -> tuple[LoadResult, ...]:
    """Saturate every edge at once, one generator each, the connections split between them."""
    each = max(1, connections // len(edges))
    with concurrent.futures.ThreadPoolExecutor(len(edges)) as pool:
        futures = [pool.submit(run_load, edge.url, requests_file, api_key, duration_s=duration,
                               connections=each, tool="asyncio") for edge in edges]
        return tuple(f.result() for f in futures)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    settings = Settings(stream_shards=args.shards, heartbeat_min_gap_ms=0)
    pg = EmbeddedPostgres(workdir / "postgres")
    single = EmbeddedRedis(workdir / "redis", persist=False)
    cluster = EmbeddedRedisCluster(workdir / "cluster", masters=3, replicas=1)
    servers: list[Server] = []
    results: dict[str, list[dict[str, float]]] = {c.name: [] for c in CONFIGS}
    plane_results: dict[str, list[dict[str, float]]] = {}
    try:
        database_url, single_url, cluster_url = pg.start(), single.start(), cluster.start()
        masters = [n for n in cluster.nodes[:cluster.masters]]
        print(f"bench-cluster: PostgreSQL {database_url}, Redis {single_url}, cluster {cluster_url}", flush=True)
        asyncio.run(migrate(database_url))

        async def seed_it() -> Seed:
            conn = await db.connect(database_url, actor="loadtest")
            try:
                return await seed(conn, [LicenseSpec(count=-(-args.sessions // SESSIONS_PER_LICENSE),
                                                     device_limit=SESSIONS_PER_LICENSE,
                                                     sessions_limit=SESSIONS_PER_LICENSE, interval_s=30,
                                                     timeout_s=3600, devices=SESSIONS_PER_LICENSE)])
            finally:
                await conn.close()

        seed_data = asyncio.run(seed_it())
        files: dict[bool, Path] = {}
        tokens_of: dict[bool, list[tuple[str, str, int]]] = {}
        for is_cluster, url in ((False, single_url), (True, cluster_url)):
            started = time.perf_counter()
            tokens = tokens_of[is_cluster] = asyncio.run(_fill(url, database_url, settings, seed_data,
                                                                args.sessions))
            files[is_cluster] = write_requests(workdir / f"requests-{is_cluster}.txt",
                                               _requests(tokens, args.hot_set, rng))
            print(f"bench-cluster: {len(tokens):,} sessions on {'the cluster' if is_cluster else 'one Redis'} "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)

        redis_urls = {False: [single_url], True: [f"redis://{n.address}" for n in masters]}
        for i in range(args.rounds):
            for name, is_cluster, min_replicas in (("single", False, 0), ("cluster", True, 0),
                                                   ("cluster-min_replicas1", True, 1)):
                row = asyncio.run(_plane_heartbeats(cluster_url if is_cluster else single_url,
                                                    redis_urls[is_cluster], settings, min_replicas,
                                                    tokens_of[is_cluster], args.duration))
                plane_results.setdefault(name, []).append(row)
                print(f"bench-cluster: round {i + 1} plane {name}: {row['heartbeats_per_s']:,.0f} heartbeats/s, "
                      f"client {row['client_cpu_us']:.1f} µs, Redis {row['redis_cpu_us']:.1f} µs (busiest "
                      f"{row['busiest_redis_cpu_us']:.1f}) per heartbeat, {row['per_write']:.0f} per write",
                      flush=True)

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTLINE_")}
        base_env.update({"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_STREAM_SHARDS": str(args.shards),
                         "HEARTLINE_HEARTBEAT_MIN_GAP_MS": "0", "HEARTLINE_LOG_LEVEL": "WARNING",
                         "HEARTLINE_DATA_DIR": str(workdir / "data"), **sealing_env(workdir / "data")})
        edges: dict[str, list[Server]] = {}
        for config in CONFIGS:
            env = {**base_env, "HEARTLINE_REDIS_URL": cluster_url if config.cluster else single_url,
                   "HEARTLINE_REDIS_MIN_REPLICAS": str(config.min_replicas)}
            edges[config.name] = [start_server(f"{config.name}-{i}", "edge", env, workdir)
                                  for i in range(config.edges)]
            servers += edges[config.name]
        for config in CONFIGS:  # warm-up: every edge learns its hot set's license ids
            warm = _load(edges[config.name], files[config.cluster], seed_data.api_key, args.warmup,
                         args.connections)
            print(f"bench-cluster: warm-up {config.name}: {sum(w.requests for w in warm)} requests", flush=True)

        for i in range(args.rounds):
            for config in CONFIGS:
                procs = edges[config.name]
                urls = redis_urls[config.cluster]
                cpu_before = [process_cpu_s(s.proc.pid) for s in procs]
                redis_before = [redis_cpu_s(u) for u in urls]
                loads = _load(procs, files[config.cluster], seed_data.api_key, args.duration, args.connections)
                ok = sum(r.ok for r in loads)
                answered = max(1, sum(r.requests for r in loads))
                edge_cpu = sum(process_cpu_s(s.proc.pid) - b for s, b in zip(procs, cpu_before, strict=True))
                per_master = [redis_cpu_s(u) - b for u, b in zip(urls, redis_before, strict=True)]
                row = {"ok_rps": ok / args.duration, "refused": float(sum(r.refused for r in loads)),
                       "edge_cpu_us": edge_cpu * 1e6 / answered,
                       "redis_cpu_us": sum(per_master) * 1e6 / answered,
                       "redis_cpu_us_busiest_master": max(per_master) * 1e6 / answered,
                       "p99_ms": max(r.p99_ms for r in loads)}
                results[config.name].append(row)
                print(f"bench-cluster: round {i + 1} {config.name}: {row['ok_rps']:.0f} heartbeats/s, edge "
                      f"{row['edge_cpu_us']:.0f} µs/heartbeat, Redis {row['redis_cpu_us']:.1f} µs/heartbeat "
                      f"(busiest master {row['redis_cpu_us_busiest_master']:.1f}), p99 {row['p99_ms']:.1f} ms, "
                      f"{row['refused']:.0f} refused", flush=True)
    finally:
        for server in servers:
            server.stop()
        cluster.stop()
        single.stop()
        pg.stop()
    table = [("| configuration | heartbeats/s | edge CPU µs/heartbeat | Redis CPU µs/heartbeat (all masters) | "
             "busiest master µs/heartbeat | p99 ms |"), "|---|---|---|---|---|---|"]

    def rng_(values: list[float], fmt: str) -> str:
        lo, hi = min(values), max(values)
        return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"

    for config in CONFIGS:
        rows = results[config.name]
        table.append(f"| {config.name} | {rng_([r['ok_rps'] for r in rows], '{:,.0f}')} | "
                     f"{rng_([r['edge_cpu_us'] for r in rows], '{:.0f}')} | "
                     f"{rng_([r['redis_cpu_us'] for r in rows], '{:.1f}')} | "
                     f"{rng_([r['redis_cpu_us_busiest_master'] for r in rows], '{:.1f}')} | "
                     f"{rng_([r['p99_ms'] for r in rows], '{:.1f}')} |")
    plane_table = [("| plane (no HTTP, 64 tasks) | heartbeats/s | client CPU µs/heartbeat | "
                   "Redis CPU µs/heartbeat (all masters) | busiest master µs/heartbeat | heartbeats per write |"),
                   "|---|---|---|---|---|---|"]
    for name, rows in plane_results.items():
        plane_table.append(f"| {name} | {rng_([r['heartbeats_per_s'] for r in rows], '{:,.0f}')} | "
                           f"{rng_([r['client_cpu_us'] for r in rows], '{:.1f}')} | "
                           f"{rng_([r['redis_cpu_us'] for r in rows], '{:.1f}')} | "
                           f"{rng_([r['busiest_redis_cpu_us'] for r in rows], '{:.1f}')} | "
                           f"{rng_([r['per_write'] for r in rows], '{:.0f}')} |")
    table = plane_table + [""] + table
    return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "load_average": os.getloadavg(),
            "plane": plane_results,
            "command": "python -m loadtests.bench " + " ".join(sys.argv[1:]), "machine": machine(),
            "results": results, "medians": {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                                            for name, rows in results.items() if rows},
            "table": "\n".join(table)}


def main(args: argparse.Namespace, workdir: Path) -> int:
    report = measure(args, workdir)
    print(f"\nload average during the run: {report['load_average'][0]:.1f} on {os.cpu_count()} cores")
    print(report["table"])
    path = args.json or Path(__file__).with_name("reports") / f"cluster-{report['when'].replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nbench-cluster: report written to {path}")
    return 0
