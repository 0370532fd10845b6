"""The edge's calls in one table: the app's routes and the OpenAPI document are both built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge import borrows, devices, health, heartbeats, index, license_endpoints, metrics, sessions, signing
from edge.schemas import (
    ActivateRequest,
    ActivateResponse,
    BorrowRequest,
    BorrowResponse,
    DeactivateResponse,
    DeviceRequest,
    EndResponse,
    HealthResponse,
    HeartbeatResponse,
    IndexResponse,
    JwksResponse,
    LicenseRequest,
    ResourcesResponse,
    ReturnResponse,
    SessionResponse,
    StartSessionRequest,
    ValidateRequest,
    ValidateResponse,
)

# A Request handler, or a plain ASGI app (the heartbeat, which skips Request for speed).
Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    endpoint: Endpoint
    summary: str
    request: type | None = None
    # status -> (response struct, description); error statuses use the error body.
    responses: dict[int, tuple[type | None, str]] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)
    authenticated: bool = True
    tag: str = "client"
    media_type: str = "application/json"  # of the success answers
    extra: dict[str, Any] = field(default_factory=dict)


LICENSE_REFUSED = "LICENSE_SUSPENDED, LICENSE_REVOKED, LICENSE_EXPIRED or LICENSE_NOT_YET_VALID"

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/v1/licenses/validate", license_endpoints.validate,
              "Validate a license for a device (and optionally that it holds entitlements)", ValidateRequest,
              {200: (ValidateResponse, ("Whether the license serves this device, with a code saying why "
                                       "(ENTITLEMENT_MISSING when a requested entitlement is absent)"))}),
    Operation("POST", "/v1/devices/activate", devices.activate, "Activate a device on a license",
              ActivateRequest,
              {201: (ActivateResponse, "Device activated"), 200: (ActivateResponse, "Device was already active")},
              {404: "LICENSE_NOT_FOUND", 403: LICENSE_REFUSED,
               409: "DEVICE_LIMIT_REACHED or DEVICE_CHANGE_LIMIT_REACHED"}),
    Operation("POST", "/v1/devices/deactivate", devices.deactivate,
              "Deactivate a device; its live session ends", DeviceRequest,
              {200: (DeactivateResponse, "Device deactivated")},
              {404: "LICENSE_NOT_FOUND or DEVICE_NOT_FOUND"}),
    Operation("POST", "/v1/sessions", sessions.start, "Start a session, or resume the device's live one",
              StartSessionRequest,
              {201: (SessionResponse, "Session started"),
               200: (SessionResponse, "The device's live session, resumed (same token)")},
              {404: "LICENSE_NOT_FOUND", 403: LICENSE_REFUSED,
               409: "SESSION_LIMIT_REACHED (with limit, in_use, the seat holders and Retry-After; with "
                    "\"queue\": true also the caller's seat queue ticket and position), DEVICE_LIMIT_REACHED "
                    "(with limit and in_use) or DEVICE_CHANGE_LIMIT_REACHED",
               422: "INVALID_KEY_SHARE (Heartline-Key-Share is not base64url of 32 bytes, or sent twice)"}),
    Operation("POST", "/v1/sessions/{token}/heartbeat", heartbeats.heartbeat, "Keep a session alive",
              LicenseRequest, {200: (HeartbeatResponse, "Session extended")},
              {404: "SESSION_NOT_FOUND (start a new session) or LICENSE_NOT_FOUND", 403: LICENSE_REFUSED +
               " (the session has been ended)", 429: "HEARTBEAT_TOO_FREQUENT (see Retry-After)",
               409: "SESSION_LIMIT_REACHED (with limit and in_use): the session missed its deadline, the "
                    "license's resume grace has not run out and no seat is free to bring it back; retry later"}),
    Operation("POST", "/v1/sessions/{token}/end", sessions.end, "End a session", LicenseRequest,
              {200: (EndResponse, "Session ended")}, {404: "SESSION_NOT_FOUND or LICENSE_NOT_FOUND"}),
    Operation("POST", "/v1/sessions/{token}/borrow", borrows.borrow,
              "Borrow the session's seat for offline use until a given time", BorrowRequest,
              {200: (BorrowResponse, "The lease: the seat is held until `until`, whether or not the client beats")},
              {404: "SESSION_NOT_FOUND or LICENSE_NOT_FOUND", 403: "BORROW_NOT_ALLOWED or " + LICENSE_REFUSED,
               422: "BORROW_TOO_LONG (past the license's max_borrow_s) or BORROW_IN_PAST"}),
    Operation("POST", "/v1/borrows/{borrow_id}/return", borrows.return_borrow,
              "Give a borrowed seat back before its end", LicenseRequest,
              {200: (ReturnResponse, "Returned: the seat is free")},
              {404: "BORROW_NOT_FOUND (unknown, returned, revoked or expired) or LICENSE_NOT_FOUND"}),
    Operation("POST", "/v1/licenses/resources", license_endpoints.resources,
              "The domains, IPv4 addresses and phone numbers a license holds", LicenseRequest,
              {200: (ResourcesResponse, "Resources held")}, {404: "LICENSE_NOT_FOUND"}),
    Operation("GET", "/v1/keys", signing.keys,
              "The public keys that verify answers' signatures (JWKS, RFC 8037)", None,
              {200: (JwksResponse, "The signing key and the published ones; cacheable"),
               304: (None, "Unchanged since the ETag sent in If-None-Match")}, authenticated=False,
              media_type="application/jwk-set+json"),
    Operation("GET", "/v1", index.index, "What this API is: links to its OpenAPI document and docs", None,
              {200: (IndexResponse, "The API's index")}, authenticated=False, tag="operations"),
    Operation("GET", "/healthz", health.healthz, "Liveness, and what it checked (PostgreSQL, Redis, signing key)", None,
              {200: (HealthResponse, "Alive; status degraded when a check failed")},
              authenticated=False, tag="operations"),
    Operation("GET", "/readyz", health.readyz, "Readiness: Redis reachable", None,
              {200: (HealthResponse, "Ready"), 503: (HealthResponse, "Redis unreachable")},
              authenticated=False, tag="operations"),
    Operation("GET", "/metrics", metrics.metrics, "Prometheus metrics", None, {200: (None, "Prometheus text")},
              authenticated=False, tag="operations"),
)


def routes() -> list[Route]:
    return [Route(op.path, op.endpoint, methods=[op.method]) for op in OPERATIONS]
