"""What the shard count costs an idle worker: CPU and Redis commands per second of its loops.

    python -m loadtests.shards [--shards 8,64,256] [--seconds 20] [--cluster]

For each shard count the worker's real loops (flush, history, reaper, reconciliation, stream tidying)
run in this process for `--seconds` with no traffic, at the default intervals; the figures are this
process's CPU time per second and the Redis commands it caused per second (INFO stats of every Redis
node).  PostgreSQL and Redis are started from the pip wheels in a temporary folder; `--cluster` runs
the plane on a local 3-master cluster instead (heartline.devcluster).  docs/capacity.md quotes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

from heartline.devcluster import embedded_cluster
from heartline.devstack import embedded_services
from heartline.migrations import migrate
from heartline.settings import Settings
from worker.arq_wiring import open_resources, shutdown, start_loops


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _commands(ports: list[int]) -> int:
    return sum(int(cast(dict[str, Any], redis.Redis(port=p).info("stats"))["total_commands_processed"])
               for p in ports)


async def _idle(settings: Settings, seconds: float, ports: list[int]) -> tuple[float, float]:
    ctx: dict[str, Any] = {"settings": settings, "consumer_name": "bench-shards"}
    await open_resources(ctx)
    start_loops(ctx)
    await asyncio.sleep(2.0)  # the first rounds create groups and partitions
    cpu, commands, started = _cpu_s(), _commands(ports), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    result = ((_cpu_s() - cpu) / elapsed, (_commands(ports) - commands) / elapsed)
    await shutdown(ctx)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="8,64,256", help="comma-separated shard counts")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cluster", action="store_true", help="a local 3-master cluster instead of one Redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heartline-shards-") as tmp, \
            embedded_services(Path(tmp), redis=not args.cluster, persist=False) as (pg, rd):
        assert pg
        asyncio.run(migrate(pg))
        if args.cluster:
            with embedded_cluster(Path(tmp) / "cluster", replicas=0) as cluster:
                _run(args, pg, cluster.url(), [n.port for n in cluster.nodes])
        else:
            assert rd
            _run(args, pg, rd, [int(rd.rsplit(":", 1)[1].split("/")[0])])


def _run(args: argparse.Namespace, database_url: str, redis_url: str, ports: list[int]) -> None:
    print(f"idle worker loops, default intervals, {args.seconds:.0f} s each, "
          f"{'3-master cluster' if args.cluster else 'one Redis'}")
    print("| shards | worker CPU (% of a core) | Redis commands/s |")
    print("|---|---|---|")
    for shards in (int(s) for s in args.shards.split(",")):
        settings = Settings(database_url=database_url, redis_url=redis_url, stream_shards=shards,
                            worker_metrics_port=0)
        cpu, commands = asyncio.run(_idle(settings, args.seconds, ports))
        print(f"| {shards} | {cpu * 100:.1f} | {commands:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
