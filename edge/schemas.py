"""msgspec structs for every body the edge reads or writes; the OpenAPI document is generated from them.

Requests ignore unknown fields (older servers keep working with newer clients); limits on lengths
mirror the database's CHECK constraints so bad input is refused before any query.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# PostgreSQL text cannot hold NUL characters, so no string may carry one.
NO_NUL = r"^[^\x00]*$"
LicenseKey = Annotated[str, Meta(min_length=8, max_length=64, pattern=NO_NUL,
                                 description="The license key, e.g. HL-XXXXX-XXXXX-XXXXX-XXXXX")]
Fingerprint = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_NUL,
                                  description="Stable hardware fingerprint of the device")]
DeviceName = Annotated[str, Meta(max_length=200, pattern=NO_NUL)]
DeviceType = Annotated[str, Meta(max_length=64, pattern=NO_NUL)]
ClientVersion = Annotated[str, Meta(max_length=64, pattern=NO_NUL)]
# The database's CHECK entitlements_code_format.
EntitlementCode = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                                      description="An entitlement code, e.g. FEATURE_EXPORT")]


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every body. Subclasses repeat frozen=True: msgspec inherits it, mypy's dataclass_transform
    does not."""


# -- requests ----------------------------------------------------------------------------------------

class DeviceRequest(Struct, frozen=True):
    """Body of validate and deactivate: a license and a device."""
    license_key: LicenseKey
    hardware_fingerprint: Fingerprint


class ValidateRequest(Struct, frozen=True):
    """Body of validate: a license and a device, and optionally the entitlements the caller needs."""
    license_key: LicenseKey
    hardware_fingerprint: Fingerprint
    entitlements: Annotated[list[EntitlementCode], Meta(max_length=64)] | None = None


class ActivateRequest(Struct, frozen=True):
    license_key: LicenseKey
    hardware_fingerprint: Fingerprint
    device_name: DeviceName | None = None
    device_type: DeviceType | None = None


Ticket = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
                              extra_json_schema={"format": "uuid"},
                              description="A seat queue ticket from an earlier refused start")]


class StartSessionRequest(Struct, frozen=True):
    license_key: LicenseKey
    hardware_fingerprint: Fingerprint
    device_name: DeviceName | None = None
    device_type: DeviceType | None = None
    client_version: ClientVersion | None = None
    # The seat queue: refused for the limit, take a ticket (or renew `ticket`, implied by sending one)
    queue: Annotated[bool, Meta(description=(
        "When the license is full, queue for a seat: the refusal carries a ticket and its position"))] = False
    ticket: Ticket | None = None


class BorrowRequest(Struct, frozen=True):
    """Body of a borrow: the license, and until when the seat is to be held (at most the license's
    max_borrow_s from now)."""
    license_key: LicenseKey
    until: dt.datetime


class LicenseRequest(Struct, frozen=True):
    """Body of heartbeat, end and resources: the license the session or resources belong to."""
    license_key: LicenseKey


# -- responses ---------------------------------------------------------------------------------------

class SeatHolder(Struct, frozen=True):
    """Who holds a seat of a full license: the device's name and type, never its fingerprint."""
    device_name: str | None
    device_type: str | None
    started_at: dt.datetime
    last_heartbeat_at: dt.datetime | None


class QueueTicket(Struct, frozen=True):
    """A place in the license's seat queue: repeat the start with this ticket within renew_within_s to
    keep it; seats go to live tickets in their order."""
    ticket: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    position: Annotated[int, Meta(ge=1, description="1: the next seat that frees is held for this ticket")]
    renew_within_s: int


class ErrorDetail(Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    # SESSION_LIMIT_REACHED only: the sessions holding the seats, and the seconds until the earliest
    # deadline (also the Retry-After header)
    seat_holders: list[SeatHolder] | None = None
    retry_after_s: int | None = None
    # SESSION_LIMIT_REACHED and DEVICE_LIMIT_REACHED: the license's limit and how many are in use
    limit: int | None = None
    in_use: int | None = None
    # SESSION_LIMIT_REACHED of a start with "queue": true: the caller's ticket (absent when the queue is
    # full), and how many live tickets wait in all
    queue: QueueTicket | None = None
    waiting: int | None = None


class ErrorBody(Struct, frozen=True):
    error: ErrorDetail


class LicenseInfo(Struct, frozen=True):
    status: str
    valid_from: dt.datetime
    valid_until: dt.datetime | None
    device_limit: int
    concurrent_sessions_limit: int
    heartbeat_interval_s: int
    heartbeat_timeout_s: int
    entitlements: list[str] = []
    offline_grace_s: int = 0
    max_borrow_s: int = 0
    resume_grace_s: int = 0


class DeviceInfo(Struct, frozen=True):
    hardware_fingerprint: str
    activated: bool
    device_id: int | None = None


class ValidateResponse(Struct, frozen=True):
    valid: bool
    code: str
    license: LicenseInfo | None = None
    device: DeviceInfo | None = None
    # with code ENTITLEMENT_MISSING: the requested entitlements the license lacks
    missing_entitlements: list[str] | None = None


class ActivateResponse(Struct, frozen=True):
    device_id: int
    hardware_fingerprint: str
    newly_activated: bool
    active_devices: int
    device_limit: int


class DeactivateResponse(Struct, frozen=True):
    hardware_fingerprint: str
    deactivated: bool
    sessions_ended: int


OfflineGrace = Annotated[int, Meta(ge=0, description=(
    "Seconds past expires_at the client may go on without reaching the edge (the license's offline grace)"))]


class AnswerKey(Struct, frozen=True):
    """The session's answer key K, sealed to the client's Heartline-Key-Share (docs/client.md,
    "Session-bound answer MACs"): send `kid` back in Heartline-Answer-Key on heartbeats and their answers
    are MACed with K (RFC 9421 alg hmac-sha256, keyid "session:<kid>")."""
    kid: str
    alg: str
    ephemeral: Annotated[str, Meta(description="base64url of the edge's ephemeral X25519 public key")]
    sealed: Annotated[str, Meta(description="base64url of AES-256-GCM(K), ciphertext then tag")]


class SessionResponse(Struct, frozen=True):
    session_token: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    resumed: bool
    heartbeat_interval_s: int
    heartbeat_timeout_s: int
    expires_at: dt.datetime
    entitlements: list[str] = []
    offline_grace_s: OfflineGrace = 0
    # only when the request sent a Heartline-Key-Share (and answers are signed)
    answer_key: AnswerKey | msgspec.UnsetType = msgspec.UNSET


class HeartbeatResponse(Struct, frozen=True):
    expires_at: dt.datetime
    next_heartbeat_in_s: int
    offline_grace_s: OfflineGrace = 0


class BorrowResponse(Struct, frozen=True):
    """The lease: signed like every answer, so a client can keep it and verify it offline."""
    borrow_id: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    session_token: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    hardware_fingerprint: str
    until: dt.datetime
    offline_grace_s: OfflineGrace = 0


class ReturnResponse(Struct, frozen=True):
    returned: bool


class EndResponse(Struct, frozen=True):
    ended: bool


class ResourcesResponse(Struct, frozen=True):
    domains: list[str]
    ipv4: list[str]
    phones: list[str]


class Jwk(Struct, frozen=True):
    """An Ed25519 public key (RFC 8037): `x` is the raw key, base64url without padding."""
    kty: str
    crv: str
    kid: str
    x: str
    alg: str
    use: str


class JwksResponse(Struct, frozen=True):
    keys: list[Jwk]


class IndexResponse(Struct, frozen=True):
    name: str
    openapi: str
    docs: str
    authentication: str
    calls: list[str]


class HealthCheck(Struct, frozen=True, omit_defaults=True):
    """One dependency a probe looked at: "ok", "down" (with why in `detail`) or "off" (not in use)."""
    status: str
    latency_ms: float | None = None
    detail: str | None = None


class HealthResponse(Struct, frozen=True, omit_defaults=True):
    """/healthz and /readyz.  `redis` and `database` (readiness only) are the checks' verdicts as booleans;
    `checks` says what was checked, with status and latency."""
    status: str
    redis: bool | None = None
    database: bool | None = None
    checks: dict[str, HealthCheck] | None = None


_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def utc_from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
