"""Liveness and readiness probes.

Both say what they checked: `checks` holds one entry per dependency (PostgreSQL, Redis — the session
plane —, the signing key) with its status and how long the check took.  The checks run concurrently, each
bounded by PROBE_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

from edge.schemas import HealthCheck, HealthResponse, encode
from edge.state import EdgeState, edge_state

PROBE_TIMEOUT_S = 2.0


async def _timed(probe: Awaitable[object]) -> HealthCheck:
    """Run `probe`; ok when it returns a truthy value within PROBE_TIMEOUT_S.  `detail` names the kind of
    failure only (a public endpoint says nothing about addresses or credentials)."""
    started = time.perf_counter()
    try:
        answered = await asyncio.wait_for(probe, PROBE_TIMEOUT_S)
    except TimeoutError:
        detail: str | None = f"no answer within {PROBE_TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - anything the client raises: refused, auth, cluster down…
        detail = f"unreachable ({type(exc).__name__})"
    else:
        detail = None if answered else "unexpected answer"
    latency = round((time.perf_counter() - started) * 1000, 2)
    return HealthCheck(status="down" if detail else "ok", latency_ms=latency, detail=detail)


async def _database(state: EdgeState) -> bool:
    return await state.pool.fetchval("SELECT true") is True


async def _redis(state: EdgeState) -> bool:
    return bool(await state.redis.ping())


def _signing(state: EdgeState) -> HealthCheck:
    if not state.settings.sign_answers:
        return HealthCheck(status="off", detail="HEARTLINE_SIGN_ANSWERS=false")
    signer = state.signing.signer
    if signer is None:
        return HealthCheck(status="down", detail="signing key not loaded yet: answers go out unsigned")
    return HealthCheck(status="ok", detail=f"kid {signer.kid}")


async def run_checks(state: EdgeState) -> dict[str, HealthCheck]:
    database, redis = await asyncio.gather(_timed(_database(state)), _timed(_redis(state)))
    return {"database": database, "redis": redis, "signing": _signing(state)}


async def healthz(request: Request) -> Response:
    """GET /healthz: the process answers (always 200, so a liveness probe never restarts an edge for a
    database outage it rides out); `status` is "ok" when every check passed, else "degraded"."""
    checks = await run_checks(edge_state(request))
    status = "degraded" if any(c.status == "down" for c in checks.values()) else "ok"
    return Response(encode(HealthResponse(status=status, checks=checks)), media_type="application/json")


async def readyz(request: Request) -> Response:
    """GET /readyz: 200 when Redis answers (sessions and heartbeats need nothing else), else 503.

    PostgreSQL's state is reported too but does not make the edge unready: heartbeats keep working
    without it."""
    checks = await run_checks(edge_state(request))
    redis_ok = checks["redis"].status == "ok"
    body = HealthResponse(status="ready" if redis_ok else "unavailable", redis=redis_ok,
                          database=checks["database"].status == "ok", checks=checks)
    return Response(encode(body), status_code=200 if redis_ok else 503, media_type="application/json")
