"""`heartline worker`: runs arq's worker with the WorkerSettings built from the settings.

On Redis Cluster (a `redis+cluster://` URL) the worker runs its loops without arq: arq's job queue
uses transactions over keys of several slots, which a cluster refuses.  Its loops (flush, history,
reaper, reconciliation, stream tidying, partitions) are the same; the daily scheduled backup, an arq cron
job, is then left to `heartline backup create` run by the host's scheduler (docs/operations/cluster.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from arq.worker import get_kwargs

from heartline import services
from heartline.plane.redis import is_cluster_url
from heartline.sealing import WEBHOOK_SECRET_KEY, sealing_secret
from heartline.settings import Settings
from worker.arq_wiring import shutdown, startup, worker_settings
from worker.arq_worker import Worker

log = logging.getLogger("worker.main")


def main(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heartline worker",
        description="Drain heartbeats and session events into PostgreSQL, reap timed-out sessions, "
                    "close sessions the plane lost, keep heartbeat partitions; /metrics on "
                    "HEARTLINE_WORKER_METRICS_PORT.")
    parser.parse_args(argv)
    settings = services.resolve(settings)
    sealing_secret(settings, WEBHOOK_SECRET_KEY)  # stops here, with one line, when unset
    if is_cluster_url(settings.redis_url or ""):
        asyncio.run(run_without_arq(settings))
        return 0
    # arq's Worker takes the current event loop; give it a fresh one of its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = Worker(**get_kwargs(worker_settings(settings)))
    worker.run()
    return 0


async def run_without_arq(settings: Settings) -> None:
    """The worker's loops and /metrics until SIGINT or SIGTERM, with the same startup and shutdown."""
    ctx: dict[str, Any] = {"settings": settings}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await startup(ctx)
    log.info("worker.cluster_mode scheduled_backups=off (run `heartline backup create` from cron)")
    try:
        await stop.wait()
    finally:
        await shutdown(ctx)
