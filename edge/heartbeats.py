"""POST /v1/sessions/{token}/heartbeat, the hot path: no PostgreSQL, one Redis round trip.

API key and license id come from process memory; the plane's heartbeat script checks, extends and
records in one EVALSHA.  Only a license missing from the plane's cache costs a read-through and one
retry.
"""

from __future__ import annotations

import logging
import math

from starlette.requests import Request
from starlette.responses import Response

from edge.bodies import read_struct, session_token
from edge.devices import license_id_or_404
from edge.errors import HeartbeatTooFrequent, LicenseNotFound
from edge.schemas import HeartbeatResponse, LicenseRequest, encode, utc_from_ms
from edge.sessions import refusal
from edge.state import edge_state
from heartline.plane.sessions import PlaneCode

log = logging.getLogger("heartline.edge.heartbeats")


async def heartbeat(request: Request) -> Response:
    """POST /v1/sessions/{token}/heartbeat: keep a session alive."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, LicenseRequest, state.settings.max_body_bytes)
    token = session_token(request)
    license_id = await license_id_or_404(state, body.license_key)
    outcome = await state.plane.heartbeat(license_id, token)
    if outcome.code is PlaneCode.LICENSE_NOT_CACHED:
        if await state.licenses.load(license_id) is None:
            raise LicenseNotFound()
        outcome = await state.plane.heartbeat(license_id, token)
    if outcome.code is PlaneCode.OK:
        return Response(encode(HeartbeatResponse(expires_at=utc_from_ms(outcome.deadline_ms),
                                                 next_heartbeat_in_s=outcome.interval_s)),
                        media_type="application/json")
    if outcome.code is PlaneCode.HEARTBEAT_TOO_FREQUENT:
        retry_after = max(1, math.ceil(outcome.retry_after_ms / 1000))
        raise HeartbeatTooFrequent(headers={"Retry-After": str(retry_after)})
    if outcome.code is not PlaneCode.SESSION_NOT_FOUND:
        log.info("session.heartbeat.refused license_id=%s code=%s", license_id, outcome.code)
    raise refusal(outcome.code)
