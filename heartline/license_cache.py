"""Licenses as the edge sees them: PostgreSQL is the record, the plane's license hash is the cache.

`LicenseCache` keeps license key -> id in process memory (ids never change), loads a license and its
active devices into the plane on a miss (read-through), and follows edits made anywhere (admin, psql,
another edge) by polling the audit log every `license_cache_s`: each license or device changed since
the last poll is written to the plane again, and a license no longer active has its sessions ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

import asyncpg

from heartline.errors import HeartlineError
from heartline.plane.cached_license import CachedLicense
from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings, SettingsError

log = logging.getLogger("heartline.license_cache")

# A license's entitlements: its own plus its product's defaults, as sorted codes.
ENTITLEMENT_CODES = """
ARRAY(SELECT e.code FROM entitlements e
       WHERE e.id IN (SELECT le.entitlement_id FROM license_entitlements le WHERE le.license_id = licenses.id
                      UNION
                      SELECT pe.entitlement_id FROM product_entitlements pe WHERE pe.product = licenses.product)
       ORDER BY e.code COLLATE "C") AS entitlements"""
LICENSE_COLUMNS = ("id, license_key, status, valid_from, valid_until, device_limit, "
                   "concurrent_sessions_limit, heartbeat_interval_s, heartbeat_timeout_s, version, "
                   "device_change_limit, device_changes_reset_at, offline_grace_s, max_borrow_s, resume_grace_s, "
                   + ENTITLEMENT_CODES)

# FOR SHARE: a reload waits for a device (de)activation holding the license row FOR UPDATE, so it never
# writes a device list older than what that activation already put into the plane.
LOAD_LICENSE = f"SELECT {LICENSE_COLUMNS} FROM licenses WHERE id = $1 FOR SHARE"
ACTIVE_DEVICES = ("SELECT hardware_fingerprint, id FROM device_registrations "
                  "WHERE license_id = $1 AND is_active")
LICENSE_ID_BY_KEY = "SELECT id FROM licenses WHERE license_key = $1"

# License changes from the audit log (indexed by table and time, and written by a trigger, so psql edits
# are seen too): the audit rows since $1 of licenses, their devices and entitlements and products'
# default entitlements (change_id, license_id NULL), and the licenses changed by those of them not in $2
# (the previous poll's rows), each once (change_id NULL, license_id).  One snapshot, so no row is counted
# as read without its licenses.  A product's entitlement change changes every license of that product.
CHANGED_LICENSES = """
WITH changes AS (
    SELECT id, table_name, row_id, coalesce(new_values, old_values) AS v FROM audit_log
    WHERE table_name IN ('licenses', 'device_registrations', 'license_entitlements', 'product_entitlements')
      AND occurred_at > $1
), unseen AS (
    SELECT * FROM changes WHERE id <> ALL($2::bigint[])
)
SELECT id AS change_id, NULL::bigint AS license_id FROM changes
UNION ALL
SELECT NULL, license_id FROM (
    SELECT CASE WHEN table_name = 'licenses' THEN row_id::bigint ELSE (v ->> 'license_id')::bigint END
    FROM unseen WHERE table_name <> 'product_entitlements'
    UNION
    SELECT l.id FROM unseen u JOIN licenses l ON l.product = u.v ->> 'product'
    WHERE u.table_name = 'product_entitlements'
) AS changed (license_id)
WHERE license_id IS NOT NULL
"""

# now() is a transaction's start time, so a row committed just after a poll can carry a time before it:
# each poll looks back this far beyond the previous one (and skips the audit rows it read before).
POLL_OVERLAP = dt.timedelta(seconds=10)
# Changed licenses a poll reloads at once (each one transaction and one plane write): a bulk change of
# 5 000 licenses took one edge ~4.5 s one at a time.
REFRESH_CONCURRENCY = 4
# An unknown license key is remembered this long, so a client hammering with a bad key costs no query.
UNKNOWN_KEY_TTL_S = 2.0


def epoch_ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


class LicenseMisconfigured(HeartlineError):
    """A license whose heartbeat interval, once blanks are filled from the settings, is not below its
    timeout: sessions would time out between heartbeats.  The database's CHECK fills blanks with 30/60,
    not with the settings, so it cannot catch this."""

    status, code = 409, "LICENSE_MISCONFIGURED"
    message = ("The license's heartbeat interval is not below its heartbeat timeout with this server's "
               "defaults; an administrator must set both on the license.")


def resolve_heartbeat(interval_s: int | None, timeout_s: int | None, settings: Settings) -> tuple[int, int]:
    """A license's heartbeat (interval, timeout) with NULLs filled from the settings; raises
    LicenseMisconfigured when the interval is not below the timeout."""
    interval = interval_s or settings.heartbeat_interval_s
    timeout = timeout_s or settings.heartbeat_timeout_s
    if timeout <= interval:
        raise LicenseMisconfigured()
    return interval, timeout


def to_cached(row: asyncpg.Record | dict[str, Any], settings: Settings) -> CachedLicense:
    """The plane's view of a licenses row; NULL heartbeat settings fall back to the settings (raises
    LicenseMisconfigured when the resolved pair contradicts itself)."""
    interval_s, timeout_s = resolve_heartbeat(row["heartbeat_interval_s"], row["heartbeat_timeout_s"], settings)
    return CachedLicense(
        license_id=row["id"], version=row["version"], status=row["status"],
        valid_from_ms=epoch_ms(row["valid_from"]),
        valid_until_ms=epoch_ms(row["valid_until"]) if row["valid_until"] is not None else None,
        device_limit=row["device_limit"], sessions_limit=row["concurrent_sessions_limit"],
        interval_s=interval_s, timeout_s=timeout_s,
        entitlements=tuple(_column(row, "entitlements") or ()),
        device_change_limit=_column(row, "device_change_limit"),
        offline_grace_s=_column(row, "offline_grace_s") or 0, max_borrow_s=_column(row, "max_borrow_s") or 0,
        resume_grace_s=_column(row, "resume_grace_s") or 0,
    )


def _column(row: asyncpg.Record | dict[str, Any], name: str) -> Any:
    """A column the row may lack (rows read with `SELECT *` carry no computed columns)."""
    return row.get(name)


# Licenses that these settings would give a heartbeat timeout not above the interval.
CONTRADICTED_LICENSES = """
SELECT id FROM licenses
 WHERE coalesce(heartbeat_timeout_s, $2) <= coalesce(heartbeat_interval_s, $1)
 ORDER BY id LIMIT 20
"""


async def check_heartbeat_defaults(conn: asyncpg.Connection, settings: Settings) -> None:
    """Refuse settings whose heartbeat defaults contradict a license (run when the edge starts)."""
    ids = [r["id"] for r in await conn.fetch(CONTRADICTED_LICENSES, settings.heartbeat_interval_s,
                                             settings.heartbeat_timeout_s)]
    if ids:
        raise SettingsError(
            f"HEARTLINE_HEARTBEAT_INTERVAL_S={settings.heartbeat_interval_s} and HEARTLINE_HEARTBEAT_TIMEOUT_S="
            f"{settings.heartbeat_timeout_s} leave licenses {', '.join(map(str, ids))} with a heartbeat timeout "
            "not above their interval (they set one of the two); set both on those licenses or change the "
            "settings")


class LicenseCache:
    """License key -> id in process, license + devices in the plane, refreshed from PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, plane: SessionPlane, settings: Settings) -> None:
        self.pool = pool
        self.plane = plane
        self.settings = settings
        self._ids: dict[str, int] = {}
        self._unknown: dict[str, float] = {}
        self._loading: dict[int, asyncio.Task[CachedLicense | None]] = {}
        self._since: dt.datetime | None = None
        # Licenses a poll found changed and not yet written to the plane (retried at every poll).
        self._pending: set[int] = set()
        # The audit rows the previous poll read: the next one looks back over most of them again (the
        # overlap), and a change is written once, not at each poll that sees it.
        self._seen_changes: set[int] = set()
        self.poll_overlap = POLL_OVERLAP

    def known_id(self, license_key: str) -> int | None:
        """The id of a license key already looked up, else None (then `license_id` asks PostgreSQL)."""
        return self._ids.get(license_key)

    async def license_id(self, license_key: str) -> int | None:
        """The id of a license key; no I/O once known."""
        found = self._ids.get(license_key)
        if found is not None:
            return found
        now = time.monotonic()
        if self._unknown.get(license_key, 0.0) > now:
            return None
        found = await self.pool.fetchval(LICENSE_ID_BY_KEY, license_key)
        if found is None:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[license_key] = now + UNKNOWN_KEY_TTL_S
            return None
        self._ids[license_key] = found
        return int(found)

    async def load(self, license_id: int, *, fresh: bool = False) -> CachedLicense | None:
        """Read the license and its active devices from PostgreSQL into the plane.

        Concurrent loads of one license share one query (500 clients of a cold license cost one read);
        the load runs as a task of its own, so a caller that goes away cancels nobody else's wait.
        Returns None when the license no longer exists (its cache and sessions are then dropped).
        `fresh`: the load must read PostgreSQL after the call (the poll, for a change it has just found):
        a load already running may have read before the change, so it is waited out, not joined.
        """
        task = self._loading.get(license_id)
        if fresh and task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            # a load started since began after the one waited for ended, so after this call
            task = self._loading.get(license_id)
        if task is None:
            task = asyncio.create_task(self._load(license_id), name=f"license-load-{license_id}")
            self._loading[license_id] = task
            task.add_done_callback(lambda t: self._loading.pop(license_id, None))
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _load(self, license_id: int) -> CachedLicense | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOAD_LICENSE, license_id)
            if row is None:
                await self._forget_deleted(license_id)
                return None
            devices = {r["hardware_fingerprint"]: r["id"] for r in await conn.fetch(ACTIVE_DEVICES, license_id)}
            try:
                cached = to_cached(row, self.settings)
            except LicenseMisconfigured:
                # an older, consistent copy must not keep serving: the license is refused until fixed
                await self.plane.invalidate_license(license_id)
                log.warning("license.misconfigured license_id=%s interval_s=%s timeout_s=%s", license_id,
                            row["heartbeat_interval_s"], row["heartbeat_timeout_s"])
                raise
            await self.plane.cache_license(cached, devices)
            for key in [k for k, v in self._ids.items() if v == license_id and k != row["license_key"]]:
                del self._ids[key]
            self._ids[row["license_key"]] = license_id
        log.debug("license.cache.loaded license_id=%s version=%s devices=%s", license_id, cached.version,
                  len(devices))
        return cached

    async def _forget_deleted(self, license_id: int) -> None:
        for key in [k for k, v in self._ids.items() if v == license_id]:
            del self._ids[key]
        await self.plane.invalidate_license(license_id)
        ended = await self.plane.end_license_sessions(license_id, EndReason.ADMIN_TERMINATED)
        log.info("license.cache.deleted license_id=%s sessions_ended=%s", license_id, ended)

    async def refresh_changed(self) -> int:
        """Write every license changed since the previous poll into the plane again; returns how many.

        The licenses a poll finds wait in a retry set until they are written: the poll marker moves on
        at once, and a license whose reload failed (Redis unreachable) is written at the next poll that
        can, however long the outage lasted.  Each poll looks back `poll_overlap` beyond the previous one
        (a row committed late can carry an earlier time), so it reads most of the previous poll's audit
        rows again; only rows it has not read before (by id: a late row has one the previous poll did not
        see) reload their licenses, so a change is written once per edge, not at each of the ~4 polls
        whose window holds it (a product's change reloads each of its licenses once)."""
        async with self.pool.acquire() as conn:
            db_now: dt.datetime = await conn.fetchval("SELECT now()")
            since = (self._since or db_now) - self.poll_overlap
            rows = await conn.fetch(CHANGED_LICENSES, since, list(self._seen_changes))
        self._pending.update(r["license_id"] for r in rows if r["change_id"] is None)
        # the next poll's window starts no earlier than this one's: what it reads that was already
        # visible here is among these rows
        self._seen_changes = {r["change_id"] for r in rows if r["change_id"] is not None}
        self._since = db_now
        written = 0
        pending = sorted(self._pending)
        # a few licenses at a time: each reload is a transaction and a plane write, mostly waiting on
        # round trips; the pool keeps connections for requests that need PostgreSQL
        for at in range(0, len(pending), REFRESH_CONCURRENCY):
            chunk = pending[at:at + REFRESH_CONCURRENCY]
            outcomes = await asyncio.gather(*(self._refresh_one(license_id) for license_id in chunk),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome  # the rest stay pending for the next poll
                written += outcome
        self._unknown.clear()
        return written

    async def _refresh_one(self, license_id: int) -> int:
        """Write one changed license into the plane (1), or give it up as misconfigured (0)."""
        # The key may have been edited: the reload (_load) drops other keys of this license.  Forgetting
        # them before it would send the license's heartbeats to PostgreSQL if the reload failed.
        try:
            cached = await self.load(license_id, fresh=True)
        except LicenseMisconfigured:
            self._pending.discard(license_id)  # refused on every use until an edit fixes it
            return 0
        if cached is not None and cached.status != "active":
            # the license was written suspended above; the sessions end in the same script that
            # (again) switches the status, as the admin's suspension does
            ended = await self.plane.suspend_license(license_id, cached.status, cached.version)
            if ended > 0:
                log.info("license.sessions.ended license_id=%s status=%s count=%s", license_id,
                         cached.status, ended)
        self._pending.discard(license_id)
        return 1

    async def run_refresher(self) -> None:
        """Background task of the edge: poll for edits every `license_cache_s` until cancelled."""
        while True:
            try:
                count = await self.refresh_changed()
                if count:
                    log.debug("license.cache.refreshed count=%s", count)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: serve from the cache, retry later
                log.warning("license.cache.refresh_failed error=%s", type(exc).__name__)
            await asyncio.sleep(self.settings.license_cache_s)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's exception as seen: every waiter re-raises it, even if none is left."""
    if not task.cancelled():
        task.exception()
