"""The floor: a bare Starlette endpoint that every heartbeat figure is compared with (docs/architecture.md,
performance notes).

It takes the heartbeat's POST body at the heartbeat's path, decodes it with msgspec and answers with a
body of the same shape and size as the edge's heartbeat reply, and it does nothing else: no API key, no
Redis.  The edge's heartbeat throughput divided by this one's, on the same uvicorn settings in the same
run, is the share of the box that the heartbeat's own work leaves.
"""

from __future__ import annotations

import datetime as dt
import time

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class HeartbeatBody(msgspec.Struct, frozen=True, kw_only=True):
    license_key: str


class HeartbeatReply(msgspec.Struct, frozen=True, kw_only=True):
    expires_at: dt.datetime
    next_heartbeat_in_s: int
    offline_grace_s: int = 0


_decode = msgspec.json.Decoder(HeartbeatBody).decode
_encode = msgspec.json.Encoder().encode


async def heartbeat(request: Request) -> Response:
    """Decode the heartbeat body and answer like an accepted heartbeat would."""
    try:
        _decode(await request.body())
    except msgspec.ValidationError:
        return Response(b'{"error":{"code":"INVALID_REQUEST","message":"bad body"}}', status_code=422,
                        media_type="application/json")
    # a deadline in epoch ms turned into a datetime and encoded per request, as the edge does
    deadline_ms = int(time.time() * 1000) + 60_000
    body = _encode(HeartbeatReply(expires_at=dt.datetime.fromtimestamp(deadline_ms / 1000, dt.UTC),
                                  next_heartbeat_in_s=30))
    return Response(body, media_type="application/json")


async def healthz(_request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/sessions/{token}/heartbeat", heartbeat, methods=["POST"]),
        Route("/healthz", healthz),
    ])
