"""`create_app(settings)`: the edge's Starlette app, with its resources built in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from edge import errors
from edge.auth import ApiKeyGuard
from edge.heartbeats import HeartbeatFastPath
from edge.metrics import EdgeMetrics, MetricsMiddleware
from edge.openapi import build_document, openapi_endpoint
from edge.routes import routes
from edge.signing import EdgeSigning, SignedAnswers
from edge.state import EdgeState
from heartline import db
from heartline.errors import HeartlineError
from heartline.license_cache import LicenseCache
from heartline.plane import redis as plane_redis
from heartline.plane.sessions import SessionPlane
from heartline.sealing import SIGNING_KEY_SECRET, sealing_secret
from heartline.settings import Settings
from heartline.signing.keys import KeyBox

log = logging.getLogger("heartline.edge")

# Connections from one edge process; requests beyond them wait (activations serialize per license anyway).
DATABASE_POOL_SIZE = 10
REDIS_MAX_CONNECTIONS = 256
# A hung server must turn into a 503 the client can retry, not a request that never ends.
REDIS_TIMEOUT_S = 5.0
DATABASE_COMMAND_TIMEOUT_S = 10.0
# The cyclic garbage collector's first threshold while the edge serves (Python's default: 700).
GC_GROWTH = 20_000


def create_app(settings: Settings) -> Starlette:
    if not settings.database_url or not settings.redis_url:
        raise ValueError("the edge needs settings.database_url and settings.redis_url")
    metrics = EdgeMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # redis-py (hiredis parser) for everything but the plane's scripts; RedisCluster in cluster mode.
        redis_client = plane_redis.connect(settings.redis_url or "", max_connections=REDIS_MAX_CONNECTIONS,
                                           socket_timeout=REDIS_TIMEOUT_S,
                                           socket_connect_timeout=REDIS_TIMEOUT_S)
        # min_size=0: no connection is opened at start, so an edge (re)started while PostgreSQL is
        # unreachable starts all the same (503 DATABASE_UNAVAILABLE for what needs it) instead of exiting.
        pool = await db.create_pool(settings.database_url or "", actor="edge", min_size=0,
                                    max_size=DATABASE_POOL_SIZE, command_timeout=DATABASE_COMMAND_TIMEOUT_S)
        # The plane's scripts (heartbeats above all) go through the multiplexing client, which writes the
        # commands of the requests in flight together, once per loop tick or every REDIS_WRITE_BATCH
        # commands (one connection per cluster master): ~2x the heartbeats of one redis-py call per
        # request (docs/performance.md).  TLS and unix-socket URLs stay on redis-py.
        scripts_client = plane_redis.multiplexed(settings.redis_url or "", connect_timeout=REDIS_TIMEOUT_S,
                                                 command_timeout=REDIS_TIMEOUT_S,
                                                 min_replicas=settings.redis_min_replicas,
                                                 write_batch=settings.redis_write_batch)
        plane = SessionPlane(redis_client, settings, scripts_client=scripts_client)
        try:
            await plane.load_scripts()
        except errors.PLANE_DOWN:
            log.warning("edge.plane.unavailable at start; scripts load on first use")
        api_keys = ApiKeyGuard(pool, settings)
        signing = EdgeSigning(pool, KeyBox(sealing_secret(settings, SIGNING_KEY_SECRET)), settings)
        if settings.sign_answers:
            await signing.start()
        else:
            log.warning("edge.signing.off answers are not signed (HEARTLINE_SIGN_ANSWERS=false)")
        app.state.edge = EdgeState(settings=settings, redis=redis_client, pool=pool, plane=plane,
                                   licenses=LicenseCache(pool, plane, settings), api_keys=api_keys,
                                   signing=signing)
        tasks = [asyncio.create_task(app.state.edge.licenses.run_refresher(), name="license-refresher"),
                 asyncio.create_task(api_keys.run_flusher(), name="api-key-last-used")]
        if settings.sign_answers:
            tasks.append(asyncio.create_task(signing.run_refresher(), name="signing-key-refresher"))
        log.info("edge.started shards=%s", settings.stream_shards)
        # What was built so far lives as long as the process: out of the cyclic garbage collector's sight.
        # And the collector waits for GC_GROWTH more container objects alive than freed, not 700: a
        # request's objects are freed by reference counting, so with 700 it ran every few dozen requests
        # just because 64 were in flight, walking them (~3.5 µs per heartbeat, 5 % of the edge's CPU);
        # with both it did not run at all in loadtests.bench (docs/performance.md).
        threshold = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(GC_GROWTH, *threshold[1:])
        try:
            yield
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await api_keys.flush_last_used()
            await pool.close()
            if scripts_client is not None:
                await scripts_client.aclose()
            await redis_client.aclose()

    app = Starlette(
        routes=[*routes(), Route("/v1/openapi.json", openapi_endpoint(build_document()), methods=["GET"])],
        middleware=[Middleware(HeartbeatFastPath, metrics=metrics),
                    Middleware(MetricsMiddleware, metrics=metrics),
                    Middleware(SignedAnswers)],
        exception_handlers={
            HeartlineError: errors.handle_edge_error,
            HTTPException: errors.handle_http_exception,
            **{exc: errors.handle_redis_down for exc in errors.PLANE_DOWN},
            asyncpg.PostgresConnectionError: errors.handle_database_down,
            asyncpg.InterfaceError: errors.handle_database_down,
            OSError: errors.handle_database_down,  # includes TimeoutError (asyncpg's command timeout)
        },
        lifespan=lifespan,
    )
    # Starlette answers a path with a stray trailing slash with a 307 whose Location it builds from the
    # Host header (any host a client names); clients call the documented paths, so a 404 it is.
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    return app
