"""`heartline worker`: runs arq's worker with the WorkerSettings built from the settings."""

from __future__ import annotations

import argparse
import asyncio

from arq.worker import get_kwargs

from heartline import services
from heartline.settings import Settings
from worker.arq_worker import Worker
from worker.settings import worker_settings


def main(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heartline worker",
        description="Drain heartbeats and session events into PostgreSQL, reap timed-out sessions, "
                    "close sessions the plane lost, keep heartbeat partitions; /metrics on "
                    "HEARTLINE_WORKER_METRICS_PORT.")
    parser.parse_args(argv)
    settings = services.resolve(settings)
    # arq's Worker takes the current event loop; give it a fresh one of its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = Worker(**get_kwargs(worker_settings(settings)))
    worker.run()
    return 0
