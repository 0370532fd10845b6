"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import Response

from edge.schemas import HealthResponse, encode
from edge.state import edge_state

PROBE_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    """GET /healthz: the process answers."""
    return Response(encode(HealthResponse(status="ok")), media_type="application/json")


async def readyz(request: Request) -> Response:
    """GET /readyz: 200 when Redis answers (sessions and heartbeats need nothing else), else 503.

    PostgreSQL's state is reported too but does not make the edge unready: heartbeats keep working
    without it."""
    state = edge_state(request)
    redis_ok = database_ok = False
    with contextlib.suppress(Exception):
        redis_ok = bool(await asyncio.wait_for(state.redis.ping(), PROBE_TIMEOUT_S))
    with contextlib.suppress(Exception):
        database_ok = await asyncio.wait_for(state.pool.fetchval("SELECT true"), PROBE_TIMEOUT_S) is True
    body = HealthResponse(status="ready" if redis_ok else "unavailable", redis=redis_ok, database=database_ok)
    return Response(encode(body), status_code=200 if redis_ok else 503, media_type="application/json")
