"""POST /v1/sessions/{token}/heartbeat, the hot path: no PostgreSQL, one Redis round trip.

API key and license id come from process memory; the plane's heartbeat script checks, extends and
records in one EVALSHA.  Only a license missing from the plane's cache costs a read-through and one
retry.

The route is a plain ASGI app rather than a Request handler: it reads its few bytes of body and the one
header it needs straight from the ASGI scope and receive channel (docs/architecture.md, performance notes, measured Starlette's Request
body plumbing at ~40 % of a bare endpoint's throughput).  Errors are raised as EdgeErrors all the same;
the app's one handler renders them.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.bodies import decode
from edge.errors import (
    BodyTooLarge,
    HeartbeatTooFrequent,
    InvalidSessionToken,
    LicenseNotFound,
    SessionLimitReached,
)
from edge.metrics import EdgeMetrics, ResponseStatus
from edge.schemas import HeartbeatResponse, LicenseRequest, encode, utc_from_ms
from edge.sessions import refusal
from edge.signing import InvalidNonce, read_nonce, signed_send
from edge.state import EdgeState
from heartline.plane.sessions import PlaneCode

log = logging.getLogger("heartline.edge.heartbeats")

JSON_HEADERS = [(b"content-type", b"application/json")]


class HeartbeatEndpoint:
    """POST /v1/sessions/{token}/heartbeat: keep a session alive."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: EdgeState = scope["app"].state.edge
        limit = state.settings.max_body_bytes
        api_keys = []
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_keys.append(value.decode("latin-1"))
            elif name == b"content-length" and value.isdigit() and int(value) > limit:
                raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        await state.api_keys.check(api_keys)
        body = decode(await _read_body(receive, limit), LicenseRequest)
        try:
            token = str(uuid.UUID(scope["path_params"]["token"]))
        except ValueError:
            raise InvalidSessionToken() from None
        license_id = await state.licenses.license_id(body.license_key)
        if license_id is None:
            raise LicenseNotFound()

        outcome = await state.plane.heartbeat(license_id, token)
        if outcome.code is PlaneCode.LICENSE_NOT_CACHED:
            if await state.licenses.load(license_id) is None:
                raise LicenseNotFound()
            outcome = await state.plane.heartbeat(license_id, token)
        if outcome.code is PlaneCode.OK:
            payload = encode(HeartbeatResponse(expires_at=utc_from_ms(outcome.deadline_ms),
                                               next_heartbeat_in_s=outcome.interval_s,
                                               offline_grace_s=outcome.offline_grace_s))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        if outcome.code is PlaneCode.HEARTBEAT_TOO_FREQUENT:
            retry_after = max(1, math.ceil(outcome.retry_after_ms / 1000))
            raise HeartbeatTooFrequent(headers={"Retry-After": str(retry_after)})
        if outcome.code is PlaneCode.SESSION_LIMIT_REACHED:
            # lapsed, within the license's resume grace, and no seat free to revive it: retry later
            raise SessionLimitReached(details={"limit": outcome.limit, "in_use": outcome.in_use})
        if outcome.code is not PlaneCode.SESSION_NOT_FOUND:
            log.info("session.heartbeat.refused license_id=%s code=%s", license_id, outcome.code)
        raise refusal(outcome.code)


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away
            return body
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        if not message.get("more_body", False):
            return body


heartbeat = HeartbeatEndpoint()

HEARTBEAT_ROUTE = "/v1/sessions/{token}/heartbeat"
_PREFIX, _SUFFIX = "/v1/sessions/", "/heartbeat"


class HeartbeatFastPath:
    """Outermost middleware: heartbeats go straight to their endpoint, ahead of the router, the metrics
    and signing wrappers and the exception middleware (≈10 µs of a ≈50 µs heartbeat, measured by
    loadtests.bench).

    It keeps what those layers give: the same metrics under the same route label, the same signature
    (edge/signing.py), and the same error rendering (the app's handlers) for refusals and for Redis or
    PostgreSQL being unreachable.  Anything else propagates to Starlette's server-error middleware (500,
    logged) as before.
    """

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        token = path[len(_PREFIX):-len(_SUFFIX)] if path.startswith(_PREFIX) and path.endswith(_SUFFIX) else ""
        if not token or "/" in token or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = ResponseStatus(send)
        scope["path_params"] = {"token": token}
        # Answers and refusals alike are signed (edge/signing.py), as the middleware this path skips would.
        nonce, acceptable = read_nonce(scope["headers"])
        out = signed_send(scope, answered, nonce)
        try:
            if not acceptable:
                raise InvalidNonce()
            await heartbeat(scope, receive, out)
        except Exception as exc:
            handler = _handler_for(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(Request(scope), exc)
            await response(scope, receive, out)
        finally:
            self.metrics.observe(HEARTBEAT_ROUTE, "POST", answered.status, time.perf_counter() - started)


def _handler_for(app: Any, exc: Exception) -> Any:
    """The app's exception handler for `exc` (by its class hierarchy), as Starlette would pick it."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
