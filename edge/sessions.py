"""Sessions: start (or resume) and end.  Heartbeats have their own module, being the hot path."""

from __future__ import annotations

import logging
import math
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response

from edge.bodies import read_struct, session_token
from edge.devices import license_id_or_404, start_on_new_device
from edge.errors import (
    LICENSE_REFUSALS,
    EdgeError,
    InvalidKeyShare,
    LicenseNotFound,
    PlaneUnavailable,
    SessionLimitReached,
    SessionNotFound,
)
from edge.schemas import (
    AnswerKey,
    EndResponse,
    LicenseRequest,
    QueueTicket,
    SeatHolder,
    SessionResponse,
    StartSessionRequest,
    encode,
    utc_from_ms,
)
from edge.state import EdgeState, client_ip, edge_state
from heartline.plane.events import EndReason
from heartline.plane.sessions import PlaneCode, StartOutcome
from heartline.signing.session_keys import b64url, read_share, seal, session_key

log = logging.getLogger("heartline.edge.sessions")

# A start may need the license loaded and then the device activated before the plane can decide.
START_ATTEMPTS = 3


async def start_or_resume(state: EdgeState, license_id: int, body: StartSessionRequest, ip: str) -> StartOutcome:
    """The plane decides; the edge only supplies what it lacks (license cache, device activation)."""
    for _ in range(START_ATTEMPTS):
        outcome = await state.plane.start_session(license_id, body.hardware_fingerprint,
                                                  client_version=body.client_version or "", client_ip=ip,
                                                  queue=body.queue, ticket=body.ticket)
        if outcome.code is PlaneCode.LICENSE_NOT_CACHED:
            if await state.licenses.load(license_id) is None:
                raise LicenseNotFound()
        elif outcome.code is PlaneCode.DEVICE_NOT_ACTIVATED:
            # Unknown device: activated on the fly when the device limit allows (raises otherwise), and
            # kept only if the session is granted.
            outcome = await start_on_new_device(state, license_id, body.hardware_fingerprint,
                                                body.device_name, body.device_type,
                                                client_version=body.client_version or "", client_ip=ip,
                                                queue=body.queue, ticket=body.ticket)
            if outcome.code is not PlaneCode.LICENSE_NOT_CACHED:
                return outcome
            if await state.licenses.load(license_id) is None:
                raise LicenseNotFound()
        else:
            return outcome
    raise PlaneUnavailable("The session could not be started; retry.")


def refusal(code: PlaneCode) -> EdgeError:
    if code is PlaneCode.SESSION_LIMIT_REACHED:
        return SessionLimitReached()
    if code is PlaneCode.SESSION_NOT_FOUND:
        return SessionNotFound()
    if code in LICENSE_REFUSALS:
        return LICENSE_REFUSALS[code]()
    return PlaneUnavailable(f"Unexpected plane answer {code}.")


DEVICE_NAMES = "SELECT id, device_name, device_type FROM device_registrations WHERE id = ANY ($1::bigint[])"


async def license_full(state: EdgeState, license_id: int, outcome: StartOutcome) -> SessionLimitReached:
    """SESSION_LIMIT_REACHED with the limit and the seats in use (as the plane counted them when it
    refused), who holds the seats and Retry-After = time to the earliest deadline (the soonest a seat
    frees if its holder stopped).  Read after the refusal, on the refusal path only; no session is ended
    to make room."""
    numbers: dict[str, Any] = {"limit": outcome.limit, "in_use": outcome.in_use}
    renew_s = state.settings.queue_ticket_s
    if outcome.ticket:
        numbers["queue"] = QueueTicket(ticket=outcome.ticket, position=outcome.position, renew_within_s=renew_s)
    if outcome.ticket or outcome.waiting:
        numbers["waiting"] = outcome.waiting
    now, holders = await state.plane.seat_holders(license_id)
    if not holders:  # the seats freed since the refusal (or are held for queue tickets): try again soon
        return SessionLimitReached(headers={"Retry-After": "1"},
                                   details={"retry_after_s": 1, "seat_holders": [], **numbers})
    devices = {r["id"]: r for r in await state.pool.fetch(DEVICE_NAMES, [h.device_id for h in holders
                                                                          if h.device_id is not None])}
    retry_after = max(1, math.ceil((min(h.deadline_ms for h in holders) - now) / 1000))
    if outcome.ticket:  # a queued client must come back before its ticket runs out
        retry_after = min(retry_after, max(1, renew_s // 2))
    shown = [SeatHolder(device_name=devices[h.device_id]["device_name"] if h.device_id in devices else None,
                        device_type=devices[h.device_id]["device_type"] if h.device_id in devices else None,
                        started_at=utc_from_ms(h.started_ms),
                        last_heartbeat_at=utc_from_ms(h.last_heartbeat_ms) if h.last_heartbeat_ms else None)
             for h in holders]
    return SessionLimitReached(headers={"Retry-After": str(retry_after)},
                               details={"retry_after_s": retry_after, "seat_holders": shown, **numbers})


async def start(request: Request) -> Response:
    """POST /v1/sessions: start a session (201), or resume the device's live one (200, resumed=true)."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    share = key_share(request)
    body = await read_struct(request, StartSessionRequest, state.settings.max_body_bytes)
    license_id = await license_id_or_404(state, body.license_key)
    outcome = await start_or_resume(state, license_id, body, client_ip(request))
    if not outcome.granted:
        log.info("session.start.refused license_id=%s code=%s", license_id, outcome.code)
        if outcome.code is PlaneCode.SESSION_LIMIT_REACHED:
            raise await license_full(state, license_id, outcome)
        raise refusal(outcome.code)
    assert outcome.token is not None
    resumed = outcome.code is PlaneCode.RESUMED
    # One more read of the cached license, on starts only (never on the heartbeat path).
    entitlements = await state.plane.cached_entitlements(license_id)
    sealed: Any = UNSET
    active = state.signing.answer_key() if share is not None else None
    if share is not None and active is not None:
        kid, mac = active
        # K is derived, never stored: every edge with the signing key derives the same one for this token
        key = seal(share, kid, session_key(mac.master, outcome.token), outcome.token)
        sealed = AnswerKey(kid=kid, alg="hmac-sha256", ephemeral=b64url(key.ephemeral), sealed=b64url(key.sealed))
    return Response(encode(SessionResponse(
        session_token=outcome.token, resumed=resumed, heartbeat_interval_s=outcome.interval_s,
        heartbeat_timeout_s=outcome.timeout_s, expires_at=utc_from_ms(outcome.deadline_ms),
        entitlements=entitlements,
        offline_grace_s=outcome.offline_grace_s, answer_key=sealed)),
        status_code=200 if resumed else 201, media_type="application/json")


def key_share(request: Request) -> X25519PublicKey | None:
    """The client's Heartline-Key-Share (None when it sent none); refused unless one, well-formed."""
    values = request.headers.getlist("heartline-key-share")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKeyShare()
    try:
        return read_share(values[0])
    except ValueError:
        raise InvalidKeyShare() from None


async def end(request: Request) -> Response:
    """POST /v1/sessions/{token}/end: end a session (client_end)."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, LicenseRequest, state.settings.max_body_bytes)
    token = session_token(request)
    license_id = await license_id_or_404(state, body.license_key)
    if not await state.plane.end_session(license_id, token, EndReason.CLIENT_END):
        raise SessionNotFound()
    return Response(encode(EndResponse(ended=True)), media_type="application/json")
