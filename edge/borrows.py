"""Offline seat borrowing: a live session becomes a seat held until a chosen time, whether or not the
client beats, and is given back early with a return.

The plane holds the seat (borrow.lua: the session's deadline becomes the borrow's end, so it counts
against the session limit in the same atomic checks as every live session, and the reaper ends it then
as borrow_expired); `session_borrows` in PostgreSQL is the record that returns and the admin use.  The
answer is signed like every other, so the client keeps it as a lease it can verify offline
(docs/client.md).
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from edge.bodies import read_struct, session_token
from edge.devices import license_id_or_404
from edge.errors import (
    LICENSE_REFUSALS,
    BorrowInPast,
    BorrowNotAllowed,
    BorrowNotFound,
    BorrowTooLong,
    InvalidBody,
    LicenseNotFound,
    SessionNotFound,
)
from edge.schemas import BorrowRequest, BorrowResponse, LicenseRequest, ReturnResponse, encode, utc_from_ms
from edge.sessions import refusal
from edge.state import edge_state
from heartline.license_cache import epoch_ms
from heartline.plane.events import EndReason
from heartline.plane.sessions import PlaneCode

log = logging.getLogger("heartline.edge.borrows")

INSERT_BORROW = """
INSERT INTO session_borrows (id, license_id, session_token, hardware_fingerprint, until)
VALUES ($1, $2, $3, '', $4)
"""
RECORD_GRANT = "UPDATE session_borrows SET hardware_fingerprint = $2, until = $3 WHERE id = $1"
OPEN_BORROW = """
SELECT session_token FROM session_borrows
WHERE id = $1 AND license_id = $2 AND returned_at IS NULL AND revoked_at IS NULL AND until > now()
FOR UPDATE
"""
RETURN_BORROW = "UPDATE session_borrows SET returned_at = now() WHERE id = $1"


async def borrow(request: Request) -> Response:
    """POST /v1/sessions/{token}/borrow: hold this session's seat until `until`, online or not."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, BorrowRequest, state.settings.max_body_bytes)
    token = session_token(request)
    license_id = await license_id_or_404(state, body.license_key)
    if body.until.tzinfo is None:
        raise InvalidBody("until must carry a time zone (e.g. 2026-12-24T18:00:00Z).")
    until_ms = epoch_ms(body.until)
    borrow_id = str(uuid.uuid4())
    # The row first, in a transaction the plane's decision commits or rolls back: a granted borrow is
    # always on record, a refused one never.
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(INSERT_BORROW, uuid.UUID(borrow_id), license_id, uuid.UUID(token), body.until)
        except asyncpg.CheckViolationError:
            raise BorrowInPast() from None
        outcome = await state.plane.borrow(license_id, token, until_ms)
        if outcome.code is PlaneCode.LICENSE_NOT_CACHED:
            if await state.licenses.load(license_id) is None:
                raise LicenseNotFound()
            outcome = await state.plane.borrow(license_id, token, until_ms)
        if outcome.code is not PlaneCode.BORROWED:
            log.info("session.borrow.refused license_id=%s code=%s", license_id, outcome.code)
            raise _borrow_refusal(outcome.code, outcome.until_ms)
        await conn.execute(RECORD_GRANT, uuid.UUID(borrow_id), outcome.fingerprint, utc_from_ms(outcome.until_ms))
    log.info("session.borrowed license_id=%s borrow_id=%s until_ms=%s", license_id, borrow_id, until_ms)
    return Response(encode(BorrowResponse(
        borrow_id=borrow_id, session_token=token, hardware_fingerprint=outcome.fingerprint,
        until=utc_from_ms(outcome.until_ms), offline_grace_s=outcome.offline_grace_s)),
        media_type="application/json")


def _borrow_refusal(code: PlaneCode, latest_ms: int) -> Exception:
    if code is PlaneCode.BORROW_NOT_ALLOWED:
        return BorrowNotAllowed()
    if code is PlaneCode.BORROW_TOO_LONG:
        return BorrowTooLong(f"The borrow may end at {utc_from_ms(latest_ms).isoformat()} at the latest.")
    if code is PlaneCode.BORROW_IN_PAST:
        return BorrowInPast()
    if code is PlaneCode.SESSION_NOT_FOUND:
        return SessionNotFound()
    if code in LICENSE_REFUSALS:
        return LICENSE_REFUSALS[code]()
    return refusal(code)


async def return_borrow(request: Request) -> Response:
    """POST /v1/borrows/{borrow_id}/return: give a borrowed seat back before its end."""
    state = edge_state(request)
    await state.api_keys.authenticate(request)
    body = await read_struct(request, LicenseRequest, state.settings.max_body_bytes)
    try:
        borrow_id = uuid.UUID(request.path_params.get("borrow_id", ""))
    except ValueError:
        raise BorrowNotFound() from None
    license_id = await license_id_or_404(state, body.license_key)
    async with state.pool.acquire() as conn, conn.transaction():
        token = await conn.fetchval(OPEN_BORROW, borrow_id, license_id)
        if token is None:
            raise BorrowNotFound()
        await conn.execute(RETURN_BORROW, borrow_id)
        await state.plane.end_session(license_id, str(token), EndReason.BORROW_RETURNED)
    log.info("session.borrow.returned license_id=%s borrow_id=%s", license_id, borrow_id)
    return Response(encode(ReturnResponse(returned=True)), media_type="application/json")


async def revoke_borrow(conn: asyncpg.Connection, borrow_id: uuid.UUID, by: str) -> tuple[int, str] | None:
    """Mark an open borrow revoked (admin); returns (license id, session token) for the caller to end its
    session, or None when it is not open.  The client learns it at its next online contact."""
    row = await conn.fetchrow(
        "UPDATE session_borrows SET revoked_at = now(), revoked_by = $2 WHERE id = $1 AND returned_at IS NULL "
        "AND revoked_at IS NULL RETURNING license_id, session_token", borrow_id, by)
    return None if row is None else (int(row["license_id"]), str(row["session_token"]))
