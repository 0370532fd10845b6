"""Stream entries of the session plane, as the worker reads them.

The Lua scripts write these field names (short, since every heartbeat stores them); `from_fields` turns a
raw entry into the struct.  received/ended times come from the Redis server clock.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

# The field of a heartbeat entry (HeartbeatEvent): h='<license id>|<token>|<device id>'; the heartbeats the
# worker mirrors into the session's row also carry n=<the session's count> (heartbeat.lua).
HEARTBEAT_FIELD = "h"
MIRROR_COUNT_FIELD = "n"


class EndReason(StrEnum):
    CLIENT_END = "client_end"
    TIMEOUT = "timeout"
    ADMIN_TERMINATED = "admin_terminated"
    DEVICE_DEACTIVATED = "device_deactivated"
    LICENSE_SUSPENDED = "license_suspended"
    LICENSE_EXPIRED = "license_expired"
    PLANE_LOST = "plane_lost"
    BORROW_EXPIRED = "borrow_expired"    # a borrowed seat reached its `until` (the reaper ended it)
    BORROW_RETURNED = "borrow_returned"  # POST /v1/borrows/{id}/return


class SessionEventKind(StrEnum):
    STARTED = "started"
    ENDED = "ended"
    REFUSED = "refused"  # a refused start or activation: RefusalEvent, not SessionEvent


class RefusalOperation(StrEnum):
    START = "start"        # POST /v1/sessions (start.lua, or the edge for a refusal PostgreSQL decided)
    ACTIVATE = "activate"  # POST /v1/devices/activate (the edge)


# The refusal codes a `refused` event may carry (the admin's denial dashboard and session.refused).
REFUSAL_CODES = frozenset({
    "SESSION_LIMIT_REACHED", "DEVICE_LIMIT_REACHED", "DEVICE_CHANGE_LIMIT_REACHED", "LICENSE_SUSPENDED",
    "LICENSE_REVOKED", "LICENSE_EXPIRED", "LICENSE_NOT_YET_VALID",
})


class HeartbeatEvent(msgspec.Struct, frozen=True, kw_only=True):
    """hl:{sN}:hb entry.  On the wire one field, h='<license id>|<token>|<device id>' (the device id may
    be empty), and on a session's first and every K-th heartbeat a second, n=`mirror_count`: the plane's
    count of the session's heartbeats so far (the worker updates the session's row from those only).
    Entries written before 'h' (three fields: l=license id, t=token, d=device id) are read as well,
    each mirrored (`legacy`): a stream may still hold them at an upgrade."""

    event_id: str          # '<shard>-<stream id>', unique across shards
    received_ms: int       # the stream id's milliseconds: Redis server time of acceptance
    license_id: int
    session_token: str
    device_id: int | None = None
    mirror_count: int | None = None
    legacy: bool = False


class SessionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """hl:{sN}:ev entry.  Fields on the wire:
    k=kind (started|ended), l=license id, t=token, d=device id, f=fingerprint, s=started ms,
    at=event ms, r=end reason (ended only), n=heartbeat count, lh=last heartbeat ms (ended only),
    v=client version, ip=client ip, lp=times the session missed its deadline (ended only; absent = 0).
    """

    event_id: str
    kind: SessionEventKind
    license_id: int
    session_token: str
    at_ms: int
    started_ms: int
    device_id: int | None = None
    fingerprint: str | None = None
    reason: EndReason | None = None
    heartbeat_count: int = 0
    last_heartbeat_ms: int | None = None
    client_version: str | None = None
    client_ip: str | None = None
    lapses: int = 0


class RefusalEvent(msgspec.Struct, frozen=True, kw_only=True):
    """hl:{sN}:ev entry of kind `refused` (denial analytics).  Fields on the wire: k=refused,
    l=license id, c=refusal code, d=device id (empty when the device was not activated), f=fingerprint,
    at=Redis time ms, o=operation (start|activate)."""

    event_id: str
    license_id: int
    code: str
    at_ms: int
    operation: RefusalOperation = RefusalOperation.START
    device_id: int | None = None
    fingerprint: str | None = None


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text or None


def _i(value: bytes | str | None) -> int | None:
    text = _s(value)
    return int(text) if text is not None else None


def _record_numbers(started: str | None, last: str | None, count: str | None) -> tuple[int, int | None, int]:
    """Started ms, last heartbeat ms and heartbeat count of a session event: decimal, as the scripts write
    them.  An `ended` event written by a plane script older than the session's record (old and new edges
    or workers side by side during an upgrade) passes the record's base-36 values through (keys.sessions):
    a started that is not all digits is base 36, and so is the count, and the last heartbeat counts from
    the start unless it has 12 digits or more (an old script's heartbeat wrote it in ms since the epoch)."""
    if started is None or started.isdigit():
        return int(started or 0), int(last) if last else None, int(count or 0)
    begun = int(started, 36)
    if not last:
        return begun, None, int(count or "0", 36)
    return begun, int(last) if len(last) >= 12 and last.isdigit() else begun + int(last, 36), int(count or "0", 36)


def _key(fields: dict[bytes, bytes] | dict[str, str], name: str) -> bytes | str | None:
    got = fields.get(name)  # type: ignore[call-overload]
    if got is None:
        got = fields.get(name.encode())  # type: ignore[call-overload]
    return got


def heartbeat_from_fields(shard: int, entry_id: bytes | str,
                          fields: dict[bytes, bytes] | dict[str, str]) -> HeartbeatEvent:
    sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    packed = _s(_key(fields, HEARTBEAT_FIELD))
    legacy = packed is None
    parts: list[str | None] = (list(packed.split("|")) if packed is not None
                               else [_s(_key(fields, name)) for name in ("l", "t", "d")])
    license_id, token, device = parts
    return HeartbeatEvent(
        event_id=f"{shard}-{sid}",
        received_ms=int(sid.split("-", 1)[0]),
        license_id=int(license_id or 0),
        session_token=token or "",
        device_id=_i(device),
        mirror_count=None if legacy else _i(_key(fields, MIRROR_COUNT_FIELD)),
        legacy=legacy,
    )


def session_event_from_fields(shard: int, entry_id: bytes | str,
                              fields: dict[bytes, bytes] | dict[str, str]) -> SessionEvent:
    sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    reason = _s(_key(fields, "r"))
    started, last, count = _record_numbers(_s(_key(fields, "s")), _s(_key(fields, "lh")), _s(_key(fields, "n")))
    return SessionEvent(
        event_id=f"{shard}-{sid}",
        kind=SessionEventKind(_s(_key(fields, "k")) or ""),
        license_id=int(_s(_key(fields, "l")) or 0),
        session_token=_s(_key(fields, "t")) or "",
        at_ms=_i(_key(fields, "at")) or int(sid.split("-", 1)[0]),
        started_ms=started,
        device_id=_i(_key(fields, "d")),
        fingerprint=_s(_key(fields, "f")),
        reason=EndReason(reason) if reason else None,
        heartbeat_count=count,
        last_heartbeat_ms=last,
        client_version=_s(_key(fields, "v")),
        client_ip=_s(_key(fields, "ip")),
        lapses=_i(_key(fields, "lp")) or 0,
    )


def event_kind(fields: dict[bytes, bytes] | dict[str, str]) -> str | None:
    """The `k` field of an hl:{sN}:ev entry, to tell refusals from session events."""
    return _s(_key(fields, "k"))


def refusal_event_from_fields(shard: int, entry_id: bytes | str,
                              fields: dict[bytes, bytes] | dict[str, str]) -> RefusalEvent:
    sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    code = _s(_key(fields, "c")) or ""
    if code not in REFUSAL_CODES:
        raise ValueError(f"unknown refusal code {code!r}")
    return RefusalEvent(
        event_id=f"{shard}-{sid}",
        license_id=int(_s(_key(fields, "l")) or 0),
        code=code,
        at_ms=_i(_key(fields, "at")) or int(sid.split("-", 1)[0]),
        operation=RefusalOperation(_s(_key(fields, "o")) or "start"),
        device_id=_i(_key(fields, "d")),
        fingerprint=_s(_key(fields, "f")),
    )
