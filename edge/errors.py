"""Every refusal of the edge: one base error with a stable code and HTTP status, one handler.

Clients branch on `code`; `message` is for humans and may change.  Nothing else builds error bodies.
"""

from __future__ import annotations

import logging

import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from edge.schemas import ErrorBody, ErrorDetail, encode
from heartline.errors import HeartlineError

log = logging.getLogger("heartline.edge")


class EdgeError(HeartlineError):
    """Refusals of the edge itself; domain errors of the kernel (resources, CRM) render the same way."""


class InvalidBody(EdgeError):
    status, code, message = 422, "INVALID_BODY", "The body is not the JSON object this call expects."


class InvalidSessionToken(EdgeError):
    status, code, message = 422, "INVALID_SESSION_TOKEN", "Session tokens are UUIDs."


class InvalidKeyShare(EdgeError):
    status, code, message = 422, "INVALID_KEY_SHARE", \
        "Heartline-Key-Share must be sent once, as base64url of a 32-byte X25519 public key."


class BodyTooLarge(EdgeError):
    status, code, message = 413, "BODY_TOO_LARGE", "The body is larger than this server accepts."


class ApiKeyMissing(EdgeError):
    status, code, message = 401, "API_KEY_MISSING", "Send your API key in the X-API-Key header."


class ApiKeyInvalid(EdgeError):
    status, code, message = 401, "API_KEY_INVALID", "The API key is unknown or revoked."


class LicenseNotFound(EdgeError):
    status, code, message = 404, "LICENSE_NOT_FOUND", "No license has this key."


class LicenseSuspended(EdgeError):
    status, code, message = 403, "LICENSE_SUSPENDED", "The license is suspended."


class LicenseRevoked(EdgeError):
    status, code, message = 403, "LICENSE_REVOKED", "The license is revoked."


class LicenseExpired(EdgeError):
    status, code, message = 403, "LICENSE_EXPIRED", "The license has expired."


class LicenseNotYetValid(EdgeError):
    status, code, message = 403, "LICENSE_NOT_YET_VALID", "The license is not valid yet."


class DeviceNotFound(EdgeError):
    status, code, message = 404, "DEVICE_NOT_FOUND", "No active device has this fingerprint on the license."


class DeviceLimitReached(EdgeError):
    status, code, message = 409, "DEVICE_LIMIT_REACHED", "The license has no room for another device."


class DeviceChangeLimitReached(EdgeError):
    status, code, message = 409, "DEVICE_CHANGE_LIMIT_REACHED", \
        "The license has used its device changes for the last 30 days."


class SessionLimitReached(EdgeError):
    status, code, message = 409, "SESSION_LIMIT_REACHED", "The license's concurrent sessions are all in use."


class SessionNotFound(EdgeError):
    status, code, message = 404, "SESSION_NOT_FOUND", "No live session has this token; start a new one."


class HeartbeatTooFrequent(EdgeError):
    status, code, message = 429, "HEARTBEAT_TOO_FREQUENT", "Heartbeat sent too soon after the previous one."


class BorrowNotAllowed(EdgeError):
    status, code, message = 403, "BORROW_NOT_ALLOWED", "This license does not allow borrowing seats."


class BorrowTooLong(EdgeError):
    status, code, message = 422, "BORROW_TOO_LONG", "The borrow would end later than the license allows."


class BorrowInPast(EdgeError):
    status, code, message = 422, "BORROW_IN_PAST", "A borrow must end in the future."


class BorrowNotFound(EdgeError):
    status, code, message = 404, "BORROW_NOT_FOUND", "No open borrow has this id on this license."


class NotFound(EdgeError):
    status, code, message = 404, "NOT_FOUND", "No such endpoint."


class MethodNotAllowed(EdgeError):
    status, code, message = 405, "METHOD_NOT_ALLOWED", "This endpoint does not take this method."


class PlaneUnavailable(EdgeError):
    status, code, message = 503, "PLANE_UNAVAILABLE", "The session store is unreachable; retry shortly."


class DatabaseUnavailable(EdgeError):
    status, code, message = 503, "DATABASE_UNAVAILABLE", "The license database is unreachable; retry shortly."


# The license refusals, by the code the plane (and the validate call) uses for them.
LICENSE_REFUSALS: dict[str, type[EdgeError]] = {
    cls.code: cls for cls in (LicenseSuspended, LicenseRevoked, LicenseExpired, LicenseNotYetValid)
}


def render(request: Request, exc: HeartlineError) -> Response:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.refusals.labels(code=exc.code).inc()
    body = encode(ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message, **exc.details)))
    return Response(body, status_code=exc.status, media_type="application/json", headers=exc.headers)


async def handle_edge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HeartlineError)
    return render(request, exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method), in the same error shape."""
    assert isinstance(exc, HTTPException)
    error: EdgeError
    if exc.status_code == 405:
        error = MethodNotAllowed(headers=dict(exc.headers or {}))
    elif exc.status_code == 404:
        error = NotFound()
    else:
        error = EdgeError(str(exc.detail))
        error.status = exc.status_code
    return render(request, error)


# Redis failures that mean "the plane is unreachable right now, retry shortly" (503 PLANE_UNAVAILABLE):
# a lost or hung connection, back-pressure and replica acknowledgement (both ConnectionErrors), and what
# Redis Cluster answers while a failover or a slot's migration is under way, once its retries ran out.
PLANE_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError, redis.exceptions.MovedError, redis.exceptions.AskError,
    redis.exceptions.ReadOnlyError, redis.exceptions.RedisClusterException,
    redis.exceptions.MasterDownError, redis.exceptions.BusyLoadingError,
)


async def handle_redis_down(request: Request, exc: Exception) -> Response:
    log.warning("edge.plane.unavailable error=%s", type(exc).__name__)
    return render(request, PlaneUnavailable(headers={"Retry-After": "1"}))


async def handle_database_down(request: Request, exc: Exception) -> Response:
    log.warning("edge.database.unavailable error=%s", type(exc).__name__)
    return render(request, DatabaseUnavailable(headers={"Retry-After": "1"}))
