"""The license as the plane caches it (`hl:{sN}:L<id>:lic`): what the Lua scripts decide with.

Heartbeat interval and timeout are stored resolved (per-license override or the settings default), so
the scripts never need the settings.  Times are epoch milliseconds, compared with Redis server time.
"""

from __future__ import annotations

import msgspec


class CachedLicense(msgspec.Struct, frozen=True, kw_only=True):
    license_id: int
    version: int
    status: str                  # active | suspended | revoked (licenses.status)
    valid_from_ms: int
    valid_until_ms: int | None   # None: never expires
    device_limit: int
    sessions_limit: int
    interval_s: int
    timeout_s: int
    # codes of the license's entitlements, its own and its product's (docs/licenses-policy.md), sorted
    entitlements: tuple[str, ...] = ()
    # device changes allowed per 30 days (None: unlimited); enforced in PostgreSQL at activation
    device_change_limit: int | None = None
    offline_grace_s: int = 0     # signed into session answers: how long a client may stay offline
    max_borrow_s: int = 0        # the longest borrow borrow.lua grants; 0 = none
    resume_grace_s: int = 0      # how long past its deadline a lapsed session may be revived; 0 = none

    def fields(self) -> dict[str, str | int]:
        """Hash fields as cache_license.lua writes them; '' stands for no expiry."""
        return {
            "license_id": self.license_id, "version": self.version, "status": self.status,
            "valid_from_ms": self.valid_from_ms,
            "valid_until_ms": "" if self.valid_until_ms is None else self.valid_until_ms,
            "device_limit": self.device_limit, "sessions_limit": self.sessions_limit,
            "interval_s": self.interval_s, "timeout_s": self.timeout_s,
            # codes cannot hold a comma (CHECK entitlements_code_format)
            "entitlements": ",".join(self.entitlements),
            "device_change_limit": "" if self.device_change_limit is None else self.device_change_limit,
            "offline_grace_s": self.offline_grace_s, "max_borrow_s": self.max_borrow_s,
            "resume_grace_s": self.resume_grace_s,
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes] | dict[str, str]) -> CachedLicense | None:
        """The struct from an HGETALL reply, None when the hash is missing."""
        if not raw:
            return None
        get = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in raw.items()}
        until = get.get("valid_until_ms", "")
        return cls(
            license_id=int(get["license_id"]), version=int(get["version"]), status=get["status"],
            valid_from_ms=int(get["valid_from_ms"]), valid_until_ms=int(until) if until else None,
            device_limit=int(get["device_limit"]), sessions_limit=int(get["sessions_limit"]),
            interval_s=int(get["interval_s"]), timeout_s=int(get["timeout_s"]),
            entitlements=tuple(code for code in get.get("entitlements", "").split(",") if code),
            device_change_limit=int(get["device_change_limit"]) if get.get("device_change_limit") else None,
            offline_grace_s=int(get.get("offline_grace_s") or 0), max_borrow_s=int(get.get("max_borrow_s") or 0),
            resume_grace_s=int(get.get("resume_grace_s") or 0),
        )

    def refusal(self, now_ms: int) -> str | None:
        """Why the license refuses service at `now_ms`, or None; the same rule as _prelude.lua's."""
        if self.status == "suspended":
            return "LICENSE_SUSPENDED"
        if self.status == "revoked":
            return "LICENSE_REVOKED"
        if self.status != "active":
            return "LICENSE_SUSPENDED"
        if self.valid_until_ms is not None and now_ms >= self.valid_until_ms:
            return "LICENSE_EXPIRED"
        if now_ms < self.valid_from_ms:
            return "LICENSE_NOT_YET_VALID"
        return None
