"""`heartline edge`: serve the edge with uvicorn (uvloop, httptools).

Proxy headers (X-Forwarded-For, X-Forwarded-Proto) are trusted only from `trusted_proxies`, so the
client address in session events is the real one behind nginx and cannot be forged from elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette

from edge.app import create_app
from heartline import db, services
from heartline.license_cache import check_heartbeat_defaults
from heartline.sealing import SIGNING_KEY_SECRET, sealing_secret, variable
from heartline.settings import Settings

log = logging.getLogger("heartline.edge")


def app_from_env() -> Starlette:
    """Factory for uvicorn's worker processes: each builds its settings from the environment."""
    return create_app(services.resolve(Settings.from_env()))


# How long the start check waits for PostgreSQL before starting without it.
CHECK_CONNECT_TIMEOUT_S = 5.0


async def _check_settings(settings: Settings) -> None:
    """Refuse to start with heartbeat defaults that contradict a license (SettingsError, one line).

    The edge starts while PostgreSQL is unreachable (it serves heartbeats from Redis): the check is then
    skipped, and each license is still checked as it loads (409 LICENSE_MISCONFIGURED)."""
    try:
        conn = await db.connect(settings.database_url or "", actor="edge", timeout=CHECK_CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("edge.settings.unchecked error=%s: the database is unreachable; licenses are checked "
                    "as they load", type(exc).__name__)
        return
    try:
        await check_heartbeat_defaults(conn, settings)
    finally:
        await conn.close()


def main(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="heartline edge", description="Run the HTTP edge")
    parser.add_argument("--host", default=settings.edge_host)
    parser.add_argument("--port", type=int, default=settings.edge_port)
    parser.add_argument("--workers", type=int, default=settings.edge_workers)
    args = parser.parse_args(argv)
    settings = services.resolve(settings)
    signing_secret = sealing_secret(settings, SIGNING_KEY_SECRET)  # stops here, with one line, when unset
    asyncio.run(_check_settings(settings))
    common: dict[str, Any] = {
        "host": args.host, "port": args.port, "loop": "uvloop", "http": "httptools", "lifespan": "on",
        "proxy_headers": True, "forwarded_allow_ips": list(settings.trusted_proxies), "access_log": False,
        "log_level": settings.log_level.lower(), "timeout_graceful_shutdown": 10,
    }
    if args.workers > 1:
        # Worker processes import the app by name and read the settings from the environment.
        os.environ["HEARTLINE_DATABASE_URL"] = settings.database_url or ""
        os.environ["HEARTLINE_REDIS_URL"] = settings.redis_url or ""
        os.environ[variable(SIGNING_KEY_SECRET)] = signing_secret
        uvicorn.run("edge.server:app_from_env", factory=True, workers=args.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
    return 0
