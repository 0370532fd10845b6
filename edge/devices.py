"""Device activation and deactivation: PostgreSQL's device_registrations is the record.

Both take the license row FOR UPDATE, so activations of one license run one at a time and the device
limit holds under any concurrency; the plane's devices hash is rewritten inside that lock, so it never
goes back to an older list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from edge.bodies import read_struct
from edge.errors import (
    LICENSE_REFUSALS,
    PLANE_DOWN,
    DeviceChangeLimitReached,
    DeviceLimitReached,
    DeviceNotFound,
    EdgeError,
    LicenseNotFound,
)
from edge.schemas import ActivateRequest, ActivateResponse, DeactivateResponse, DeviceRequest, encode
from edge.state import EdgeState, edge_state
from heartline.db import Conn
from heartline.license_cache import ACTIVE_DEVICES, LICENSE_COLUMNS, to_cached
from heartline.plane.events import EndReason, RefusalOperation
from heartline.plane.sessions import StartOutcome

log = logging.getLogger("heartline.edge.devices")

LOCK_LICENSE = f"""
SELECT {LICENSE_COLUMNS},
       CASE WHEN status = 'suspended' THEN 'LICENSE_SUSPENDED'
            WHEN status = 'revoked' THEN 'LICENSE_REVOKED'
            WHEN status <> 'active' THEN 'LICENSE_SUSPENDED'
            WHEN valid_until IS NOT NULL AND valid_until <= now() THEN 'LICENSE_EXPIRED'
            WHEN valid_from > now() THEN 'LICENSE_NOT_YET_VALID'
       END AS refusal
FROM licenses WHERE id = $1 FOR UPDATE
"""
FIND_DEVICE = ("SELECT id, is_active FROM device_registrations "
               "WHERE license_id = $1 AND hardware_fingerprint = $2")
INSERT_DEVICE = ("INSERT INTO device_registrations (license_id, hardware_fingerprint, device_name, device_type) "
                 "VALUES ($1, $2, $3, $4) RETURNING id")
REACTIVATE_DEVICE = """
UPDATE device_registrations
SET is_active = true, deactivated_at = NULL, deactivation_reason = NULL,
    device_name = coalesce($2, device_name), device_type = coalesce($3, device_type)
WHERE id = $1
"""
DEACTIVATE_DEVICE = """
UPDATE device_registrations SET is_active = false, deactivated_at = now(), deactivation_reason = 'client'
WHERE license_id = $1 AND hardware_fingerprint = $2 AND is_active
RETURNING id
"""

# Device changes (sql/0008): the window is the last 30 days, or since the admin's reset if later.
CHANGE_WINDOW = "greatest(now() - interval '30 days', coalesce($2::timestamptz, '-infinity'))"
OPEN_CHANGE = f"""
SELECT id FROM device_changes WHERE license_id = $1 AND replaced_at IS NULL AND deactivated_at > {CHANGE_WINDOW}
 ORDER BY deactivated_at LIMIT 1
"""
CHANGES_IN_WINDOW = f"SELECT count(*) FROM device_changes WHERE license_id = $1 AND replaced_at > {CHANGE_WINDOW}"
TAKE_CHANGE = "UPDATE device_changes SET replaced_at = now(), replaced_by = $2 WHERE id = $1"


# Refusals decided here from PostgreSQL that denial analytics records (start.lua records its own).
RECORDED_REFUSALS: tuple[type[EdgeError], ...] = (DeviceLimitReached, DeviceChangeLimitReached,
                                                  *LICENSE_REFUSALS.values())


async def record_refusal(state: EdgeState, license_id: int, refusal: EdgeError, fingerprint: str,
                         operation: RefusalOperation) -> None:
    """One `refused` event for a refusal PostgreSQL decided, after its transaction rolled back (on the
    refusal path of a start or activation only).  The client hears its refusal even when the plane is
    unreachable; the event is then lost, and logged."""
    try:
        await state.plane.record_refusal(license_id, refusal.code, fingerprint, None, operation)
    except PLANE_DOWN as exc:
        log.warning("edge.refusal.not_recorded license_id=%s code=%s error=%s", license_id, refusal.code,
                    type(exc).__name__)


@dataclass(frozen=True)
class Activation:
    device_id: int
    newly_activated: bool
    active_devices: int
    device_limit: int


async def _activate_locked(conn: Conn, license_id: int, fingerprint: str,
                           device_name: str | None, device_type: str | None) -> tuple[Any, dict[str, int], int, bool]:
    """Inside the caller's transaction: lock the license row, refuse a license that does not serve or a
    full device limit, activate the device.  Returns the license row, the active devices (this one
    included), its id and whether it was activated now."""
    lic = await conn.fetchrow(LOCK_LICENSE, license_id)
    if lic is None:
        raise LicenseNotFound()
    if lic["refusal"] is not None:
        raise LICENSE_REFUSALS[lic["refusal"]]()
    found = await conn.fetchrow(FIND_DEVICE, license_id, fingerprint)
    devices = {r["hardware_fingerprint"]: r["id"] for r in await conn.fetch(ACTIVE_DEVICES, license_id)}
    if found is not None and found["is_active"]:
        return lic, devices, found["id"], False
    if len(devices) >= lic["device_limit"]:
        log.info("device.activation.refused license_id=%s code=DEVICE_LIMIT_REACHED", license_id)
        raise DeviceLimitReached(details={"limit": lic["device_limit"], "in_use": len(devices)})
    # Taking the place of a device deactivated within 30 days is a device change: counted and limited.
    change = await conn.fetchval(OPEN_CHANGE, license_id, lic["device_changes_reset_at"])
    if change is not None and lic["device_change_limit"] is not None and \
            await conn.fetchval(CHANGES_IN_WINDOW, license_id, lic["device_changes_reset_at"]) \
            >= lic["device_change_limit"]:
        log.info("device.activation.refused license_id=%s code=DEVICE_CHANGE_LIMIT_REACHED", license_id)
        raise DeviceChangeLimitReached()
    if found is None:
        device_id = await conn.fetchval(INSERT_DEVICE, license_id, fingerprint, device_name, device_type)
    else:
        device_id = found["id"]
        await conn.execute(REACTIVATE_DEVICE, device_id, device_name, device_type)
    if change is not None:
        await conn.execute(TAKE_CHANGE, change, device_id)
    devices[fingerprint] = device_id
    return lic, devices, device_id, True


async def activate_device(state: EdgeState, license_id: int, fingerprint: str, device_name: str | None,
                          device_type: str | None) -> Activation:
    """Activate a device (idempotent for an active one); raises the license or device-limit refusal
    (recorded as a `refused` event)."""
    try:
        async with state.pool.acquire() as conn, conn.transaction():
            lic, devices, device_id, created = await _activate_locked(conn, license_id, fingerprint,
                                                                      device_name, device_type)
            if created:
                log.info("device.activated license_id=%s device_id=%s", license_id, device_id)
            # Still under the row lock: the plane sees this device list before any later change.
            await state.plane.cache_license(to_cached(lic, state.settings), devices)
    except RECORDED_REFUSALS as refused:
        await record_refusal(state, license_id, refused, fingerprint, RefusalOperation.ACTIVATE)
        raise
    return Activation(device_id=device_id, newly_activated=created, active_devices=len(devices),
                      device_limit=lic["device_limit"])


async def start_on_new_device(state: EdgeState, license_id: int, fingerprint: str, device_name: str | None,
                              device_type: str | None, *, client_version: str, client_ip: str,
                              queue: bool = False, ticket: str | None = None) -> StartOutcome:
    """Start a session on a device the plane does not know, activating it on the fly: the activation
    is committed only if the plane grants the session, so a refused start takes no device slot.

    The activation stays uncommitted (its license row locked) while the plane's start script decides;
    the script adds the device to the plane's cache only together with the session it grants.  Should
    the commit fail after a grant, the session is ended and the device dropped from the cache again.
    """
    try:
        return await _start_on_new_device(state, license_id, fingerprint, device_name, device_type,
                                          client_version=client_version, client_ip=client_ip, queue=queue,
                                          ticket=ticket)
    except RECORDED_REFUSALS as refused:  # decided from PostgreSQL; the plane records its own
        await record_refusal(state, license_id, refused, fingerprint, RefusalOperation.START)
        raise


async def _start_on_new_device(state: EdgeState, license_id: int, fingerprint: str, device_name: str | None,
                               device_type: str | None, *, client_version: str, client_ip: str,
                               queue: bool, ticket: str | None) -> StartOutcome:
    async with state.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            _lic, _devices, device_id, created = await _activate_locked(conn, license_id, fingerprint,
                                                                        device_name, device_type)
            outcome = await state.plane.start_session(license_id, fingerprint, client_version=client_version,
                                                      client_ip=client_ip, device_id=device_id, queue=queue,
                                                      ticket=ticket)
        except BaseException:
            await transaction.rollback()
            raise
        if not outcome.granted:
            await transaction.rollback()
            return outcome
        try:
            await transaction.commit()
        except BaseException:
            await state.plane.end_device_sessions(license_id, fingerprint, EndReason.DEVICE_DEACTIVATED,
                                                  device_id)
            raise
    if created:
        log.info("device.activated license_id=%s device_id=%s", license_id, device_id)
    return outcome


async def deactivate_device(state: EdgeState, license_id: int, fingerprint: str) -> int:
    """Deactivate a device and end its sessions (device_deactivated); returns how many ended."""
    async with state.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT id FROM licenses WHERE id = $1 FOR UPDATE", license_id) is None:
            raise LicenseNotFound()
        device_id = await conn.fetchval(DEACTIVATE_DEVICE, license_id, fingerprint)
        if device_id is None:
            raise DeviceNotFound()
        ended = await state.plane.end_device_sessions(license_id, fingerprint, EndReason.DEVICE_DEACTIVATED,
                                                      device_id)
    log.info("device.deactivated license_id=%s device_id=%s sessions_ended=%s", license_id, device_id, ended)
    return ended


async def license_id_or_404(state: EdgeState, license_key: str) -> int:
    license_id = await state.licenses.license_id(license_key)
    if license_id is None:
        raise LicenseNotFound()
    return license_id


async def activate(request: Request) -> Response:
    """POST /v1/devices/activate: activate a device on a license (201 new, 200 already active)."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, ActivateRequest, state.settings.max_body_bytes)
    license_id = await license_id_or_404(state, body.license_key)
    result = await activate_device(state, license_id, body.hardware_fingerprint, body.device_name,
                                   body.device_type)
    return Response(encode(ActivateResponse(
        device_id=result.device_id, hardware_fingerprint=body.hardware_fingerprint,
        newly_activated=result.newly_activated, active_devices=result.active_devices,
        device_limit=result.device_limit)), status_code=201 if result.newly_activated else 200,
        media_type="application/json")


async def deactivate(request: Request) -> Response:
    """POST /v1/devices/deactivate: deactivate a device; its live session ends."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, DeviceRequest, state.settings.max_body_bytes)
    license_id = await license_id_or_404(state, body.license_key)
    ended = await deactivate_device(state, license_id, body.hardware_fingerprint)
    return Response(encode(DeactivateResponse(hardware_fingerprint=body.hardware_fingerprint, deactivated=True,
                                              sessions_ended=ended)), media_type="application/json")
