"""License calls: validate (is this license good for this device?) and the license's resources."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from edge.bodies import read_struct
from edge.devices import license_id_or_404
from edge.errors import LicenseNotFound
from edge.schemas import (
    DeviceInfo,
    LicenseInfo,
    LicenseRequest,
    ResourcesResponse,
    ValidateRequest,
    ValidateResponse,
    encode,
    utc_from_ms,
)
from edge.state import EdgeState, edge_state
from heartline.plane.cached_license import CachedLicense
from heartline.resources import license_resources

VALID = "VALID"
ENTITLEMENT_MISSING = "ENTITLEMENT_MISSING"
ACTIVE_DEVICE = ("SELECT id FROM device_registrations "
                 "WHERE license_id = $1 AND hardware_fingerprint = $2 AND is_active")


async def _cached(state: EdgeState, license_id: int) -> CachedLicense | None:
    return await state.plane.cached_license(license_id) or await state.licenses.load(license_id)


async def _device_id(state: EdgeState, license_id: int, fingerprint: str) -> int | None:
    """From the plane's devices hash; a miss asks PostgreSQL (the hash may lag behind an activation)."""
    device_id = await state.plane.cached_device(license_id, fingerprint)
    if device_id is None:
        found = await state.pool.fetchval(ACTIVE_DEVICE, license_id, fingerprint)
        device_id = int(found) if found is not None else None
    return device_id


async def validate(request: Request) -> Response:
    """POST /v1/licenses/validate: 200 with valid=true/false and a code saying why."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, ValidateRequest, state.settings.max_body_bytes)
    license_id = await state.licenses.license_id(body.license_key)
    cached = await _cached(state, license_id) if license_id is not None else None
    if license_id is None or cached is None:
        result = ValidateResponse(valid=False, code=LicenseNotFound.code)
    else:
        refusal = cached.refusal(await state.plane.now_ms())
        device_id = await _device_id(state, license_id, body.hardware_fingerprint)
        # The license's own refusal first, then what it lacks, then the device.
        missing = sorted(set(body.entitlements or ()) - set(cached.entitlements))
        code = refusal or (ENTITLEMENT_MISSING if missing else None) or \
            (VALID if device_id is not None else "DEVICE_NOT_ACTIVATED")
        result = ValidateResponse(
            missing_entitlements=missing or None,
            valid=code == VALID, code=code,
            license=LicenseInfo(
                status=cached.status, valid_from=utc_from_ms(cached.valid_from_ms),
                valid_until=utc_from_ms(cached.valid_until_ms) if cached.valid_until_ms is not None else None,
                device_limit=cached.device_limit, concurrent_sessions_limit=cached.sessions_limit,
                heartbeat_interval_s=cached.interval_s, heartbeat_timeout_s=cached.timeout_s,
                entitlements=list(cached.entitlements),
                offline_grace_s=cached.offline_grace_s, max_borrow_s=cached.max_borrow_s,
                resume_grace_s=cached.resume_grace_s),
            device=DeviceInfo(hardware_fingerprint=body.hardware_fingerprint, activated=device_id is not None,
                              device_id=device_id))
    return Response(encode(result), media_type="application/json")


async def resources(request: Request) -> Response:
    """POST /v1/licenses/resources: the domains, IPv4 addresses and phone numbers the license holds."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, LicenseRequest, state.settings.max_body_bytes)
    license_id = await license_id_or_404(state, body.license_key)
    async with state.pool.acquire() as conn:
        held = await license_resources(conn, license_id)
    return Response(encode(ResourcesResponse(domains=held.get("domains", []), ipv4=held.get("ipv4", []),
                                             phones=held.get("phones", []))), media_type="application/json")
