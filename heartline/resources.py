"""Resource pools: domains, IPv4 addresses and phone numbers, imported centrally and allocated per license.

One module for both callers: the admin (Flask, sync) calls the functions below with a psycopg connection,
the edge (asyncpg) only reads a license's resources with `license_resources`.  Every writing function is
one transaction (a savepoint when the caller already has one open) that first sets `heartline.actor`, so
the audit trigger records who did it.

Lifecycle of a resource: available → allocated (to one license) → quarantined (for
`resource_quarantine_days`, so a released address is not handed to the next customer at once) →
available again; `retired` takes it out of service.  Every allocation and release is a row in
`resource_allocations`.  Times are injectable (`now=`) so tests move the clock instead of waiting.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import idna
import phonenumbers
import psycopg
from psycopg.rows import dict_row

from heartline.db import Conn
from heartline.errors import HeartlineError
from heartline.settings import Settings

log = logging.getLogger("heartline.resources")


class ResourceType(StrEnum):
    DOMAIN = "domain"
    IPV4 = "ipv4"
    PHONE = "phone"

    @property
    def quota_column(self) -> str:
        return _QUOTA_COLUMNS[self]

    @property
    def plural(self) -> str:
        """The key of this type in the API response and the unit in messages."""
        return _PLURALS[self]

    @property
    def label(self) -> str:
        """How screens name this type: "Domains", "IPv4 addresses", "Phone numbers"."""
        return _LABELS[self]


_QUOTA_COLUMNS = {ResourceType.DOMAIN: "quota_domains", ResourceType.IPV4: "quota_ipv4",
                  ResourceType.PHONE: "quota_phones"}
_PLURALS = {ResourceType.DOMAIN: "domains", ResourceType.IPV4: "ipv4", ResourceType.PHONE: "phones"}
_LABELS = {ResourceType.DOMAIN: "Domains", ResourceType.IPV4: "IPv4 addresses",
           ResourceType.PHONE: "Phone numbers"}


class ResourceStatus(StrEnum):
    AVAILABLE = "available"
    ALLOCATED = "allocated"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


class ImportOutcome(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


# --- errors ---------------------------------------------------------------------------------------------

class ResourceError(HeartlineError):
    """Base of resource refusals."""

    code = "RESOURCE_ERROR"
    status = 400


class LicenseNotFound(ResourceError):
    code = "LICENSE_NOT_FOUND"
    status = 404


class ResourceNotFound(ResourceError):
    code = "RESOURCE_NOT_FOUND"
    status = 404


class QuotaExceeded(ResourceError):
    code = "RESOURCE_QUOTA_EXCEEDED"
    status = 409


class PoolExhausted(ResourceError):
    code = "RESOURCE_POOL_EXHAUSTED"
    status = 409


class ResourceNotAllocated(ResourceError):
    code = "RESOURCE_NOT_ALLOCATED"
    status = 409


class InvalidResource(ResourceError):
    """A value that is not a valid domain / IPv4 address / E.164 number; the message says why."""

    code = "RESOURCE_INVALID"
    status = 422


# --- validation (pure) ----------------------------------------------------------------------------------

def normalize_domain(raw: str) -> str:
    """The canonical (lower-case ASCII, IDNA A-label) form of a host name, e.g. Bücher.example →
    xn--bcher-kva.example, so the Unicode and punycode spellings of one name are one pool entry."""
    value = raw.strip().rstrip(".")
    if not value:
        raise InvalidResource("empty domain")
    if "://" in value or "/" in value:
        raise InvalidResource("a host name only, without scheme or path")
    try:
        ascii_name = idna.encode(value, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidResource(f"not a valid IDNA host name: {exc}") from None
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidResource("a domain needs at least two labels (name.tld)")
    if labels[-1].isdigit():
        raise InvalidResource("the top-level label must not be numeric (an IP address is not a domain)")
    if len(ascii_name) > 253:
        raise InvalidResource("longer than 253 characters")
    return ascii_name


def normalize_ipv4(raw: str, *, allow_private: bool = False) -> str:
    """A public IPv4 address in dotted-quad form.  `allow_private` admits private, shared (CGNAT) and
    documentation ranges; loopback, link-local, multicast, reserved and 0.0.0.0 are never allocatable."""
    value = raw.strip()
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise InvalidResource(f"not an IPv4 address: {exc}") from None
    for flag, what in ((address.is_unspecified, "the unspecified address"),
                       (address.is_loopback, "a loopback address"),
                       (address.is_link_local, "a link-local address"),
                       (address.is_multicast, "a multicast address"),
                       (address.is_reserved, "in a reserved range")):
        if flag:
            raise InvalidResource(f"{address} is {what}")
    if not address.is_global and not allow_private:
        raise InvalidResource(f"{address} is in a private or special-purpose range "
                              "(HEARTLINE_RESOURCE_ALLOW_PRIVATE_IPV4=true admits it)")
    return str(address)


def normalize_phone(raw: str) -> str:
    """The E.164 form (+<country><number>) of an international phone number."""
    value = raw.strip()
    if not value.startswith("+"):
        raise InvalidResource("a phone number must be in international form, starting with + and the country code")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidResource(f"not a phone number: {exc._msg}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidResource("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize(resource_type: ResourceType | str, raw: str, *, allow_private_ipv4: bool = False) -> str:
    """Validate one value of the given type and return its canonical form; InvalidResource says why not."""
    kind = ResourceType(resource_type)
    if kind is ResourceType.DOMAIN:
        return normalize_domain(raw)
    if kind is ResourceType.IPV4:
        return normalize_ipv4(raw, allow_private=allow_private_ipv4)
    return normalize_phone(raw)


# --- bulk import ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportLine:
    line_no: int           # 1-based line of the pasted text / CSV file
    raw: str               # the value as given
    outcome: ImportOutcome
    value: str | None      # canonical form (added and duplicate lines)
    reason: str | None     # why it was refused or skipped


@dataclass(frozen=True)
class ImportReport:
    resource_type: ResourceType
    lines: tuple[ImportLine, ...]
    dry_run: bool

    def count(self, outcome: ImportOutcome) -> int:
        return sum(1 for line in self.lines if line.outcome is outcome)

    @property
    def added(self) -> int:
        return self.count(ImportOutcome.ADDED)

    @property
    def duplicates(self) -> int:
        return self.count(ImportOutcome.DUPLICATE)

    @property
    def refused(self) -> int:
        return self.count(ImportOutcome.REFUSED)


HEADER_NAMES = {"value", "domain", "domains", "ipv4", "ip", "address", "phone", "phones", "number"}


def parse_import(text: str) -> list[tuple[int, str]]:
    """(line number, value) pairs from pasted text or a CSV file: the first column of each row; blank
    rows and rows starting with '#' are skipped, and so is a first row that is a header ('value', ...)."""
    rows: list[tuple[int, str]] = []
    first = True
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    for row in reader:
        cell = row[0].strip() if row else ""
        if not cell or cell.startswith("#"):
            continue
        if first and cell.lower() in HEADER_NAMES:
            first = False
            continue
        first = False
        rows.append((reader.line_num, cell))
    return rows


def import_resources(conn: psycopg.Connection[Any], resource_type: ResourceType | str, text: str, *,
                     actor: str, settings: Settings, dry_run: bool = False) -> ImportReport:
    """Validate every line and add the valid, new values to the pool in one transaction.

    Each line is reported as added, duplicate (already in the pool, or earlier in the same file) or
    refused with the reason.  Refused lines do not stop the good ones; a database error rolls the whole
    import back (nothing half-imported).  `dry_run` validates and reports without keeping anything.
    """
    kind = ResourceType(resource_type)
    lines: list[ImportLine] = []
    seen: dict[str, int] = {}
    candidates: list[tuple[int, str, str]] = []
    for line_no, raw in parse_import(text):
        try:
            value = normalize(kind, raw, allow_private_ipv4=settings.resource_allow_private_ipv4)
        except InvalidResource as exc:
            lines.append(ImportLine(line_no, raw, ImportOutcome.REFUSED, None, exc.message))
            continue
        if value in seen:
            lines.append(ImportLine(line_no, raw, ImportOutcome.DUPLICATE, value,
                                    f"repeats line {seen[value]}"))
            continue
        seen[value] = line_no
        candidates.append((line_no, raw, value))

    with conn.transaction(force_rollback=dry_run):
        _set_actor(conn, actor)
        # ON CONFLICT keeps a concurrent import of the same value from failing this one: whoever
        # commits second simply sees a duplicate.
        inserted = {row[0] for row in conn.execute(
            "INSERT INTO resource_pools (resource_type, value)"
            " SELECT %s, v FROM unnest(%s::text[]) AS v"
            " ON CONFLICT (resource_type, value) DO NOTHING RETURNING value",
            (kind.value, [value for _, _, value in candidates])).fetchall()}
        for line_no, raw, value in candidates:
            if value in inserted:
                lines.append(ImportLine(line_no, raw, ImportOutcome.ADDED, value, None))
            else:
                lines.append(ImportLine(line_no, raw, ImportOutcome.DUPLICATE, value, "already in the pool"))
    lines.sort(key=lambda line: line.line_no)
    report = ImportReport(kind, tuple(lines), dry_run)
    log.info("resource.import.done type=%s added=%d duplicates=%d refused=%d dry_run=%s actor=%s",
             kind, report.added, report.duplicates, report.refused, dry_run, actor)
    return report


# --- allocation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Allocation:
    resource_id: int
    resource_type: ResourceType
    value: str
    license_id: int
    at: dt.datetime   # allocated_at, or released_at for releases


def _set_actor(conn: psycopg.Connection[Any], actor: str) -> None:
    conn.execute("SELECT set_config('heartline.actor', %s, true)", (actor,))


def _now(conn: psycopg.Connection[Any], now: dt.datetime | None) -> dt.datetime:
    if now is not None:
        return now
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _lock_license(conn: psycopg.Connection[Any], license_id: int) -> dict[str, Any]:
    # Locking the license row serialises allocations for one license, which makes "held + n <= quota"
    # race-free; allocations for different licenses still run in parallel.
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT id, quota_domains, quota_ipv4, quota_phones FROM licenses"
                          " WHERE id = %s FOR UPDATE", (license_id,)).fetchone()
    if row is None:
        raise LicenseNotFound(f"license {license_id} does not exist")
    return row


def allocate(conn: psycopg.Connection[Any], license_id: int, resource_type: ResourceType | str,
             count: int = 1, *, actor: str, now: dt.datetime | None = None) -> list[Allocation]:
    """Give `count` free resources of a type to a license, all or none.

    Refused with QuotaExceeded when the license would hold more than its quota, PoolExhausted when too
    few free resources are left.  Free means available, or quarantined with its quarantine over.  Rows
    are taken with FOR UPDATE SKIP LOCKED, so concurrent allocations never get the same resource and do
    not queue behind each other.
    """
    kind = ResourceType(resource_type)
    if count < 1:
        raise ResourceError("allocate at least one resource")
    with conn.transaction():
        _set_actor(conn, actor)
        at = _now(conn, now)
        quota = int(_lock_license(conn, license_id)[kind.quota_column])
        held_row = conn.execute(
            "SELECT count(*) FROM resource_pools WHERE license_id = %s AND resource_type = %s"
            " AND status = 'allocated'", (license_id, kind.value)).fetchone()
        held = int(held_row[0]) if held_row else 0
        if held + count > quota:
            log.info("resource.allocate.refused license_id=%d type=%s code=%s held=%d quota=%d",
                     license_id, kind, QuotaExceeded.code, held, quota)
            raise QuotaExceeded(
                f"License {license_id} may hold {quota} {kind.plural} and holds {held}: "
                f"allocating {count} more would exceed its quota")
        rows = conn.execute(
            "SELECT id, value FROM resource_pools WHERE resource_type = %s"
            " AND (status = 'available' OR (status = 'quarantined' AND quarantined_until <= %s))"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (kind.value, at, count)).fetchall()
        if len(rows) < count:
            log.info("resource.allocate.refused license_id=%d type=%s code=%s free=%d wanted=%d",
                     license_id, kind, PoolExhausted.code, len(rows), count)
            raise PoolExhausted(f"Only {len(rows)} free {kind.plural} left in the pool; {count} requested")
        ids = [row[0] for row in rows]
        conn.execute(
            "UPDATE resource_pools SET status = 'allocated', license_id = %s, allocated_at = %s,"
            " quarantined_until = NULL WHERE id = ANY(%s)", (license_id, at, ids))
        conn.execute(
            "INSERT INTO resource_allocations (resource_id, license_id, allocated_at, allocated_by)"
            " SELECT r, %s, %s, %s FROM unnest(%s::bigint[]) AS r", (license_id, at, actor, ids))
    log.info("resource.allocate.done license_id=%d type=%s count=%d actor=%s", license_id, kind, count, actor)
    return [Allocation(rid, kind, value, license_id, at) for rid, value in rows]


def release(conn: psycopg.Connection[Any], license_id: int, resource_ids: Iterable[int], *, actor: str,
            settings: Settings, now: dt.datetime | None = None) -> list[Allocation]:
    """Take resources back from a license into quarantine for settings.resource_quarantine_days.

    All or none: a resource that this license does not hold refuses the whole release.
    """
    ids = sorted(set(resource_ids))
    if not ids:
        return []
    with conn.transaction():
        _set_actor(conn, actor)
        at = _now(conn, now)
        rows = conn.execute(
            "SELECT id, resource_type, value FROM resource_pools WHERE id = ANY(%s)"
            " AND license_id = %s AND status = 'allocated' ORDER BY id FOR UPDATE",
            (ids, license_id)).fetchall()
        missing = sorted(set(ids) - {row[0] for row in rows})
        if missing:
            raise ResourceNotAllocated(
                f"License {license_id} does not hold resource(s) {', '.join(map(str, missing))}")
        until = at + dt.timedelta(days=settings.resource_quarantine_days)
        conn.execute(
            "UPDATE resource_pools SET status = 'quarantined', license_id = NULL, allocated_at = NULL,"
            " quarantined_until = %s WHERE id = ANY(%s)", (until, ids))
        conn.execute(
            "UPDATE resource_allocations SET released_at = greatest(allocated_at, %s), released_by = %s"
            " WHERE resource_id = ANY(%s) AND license_id = %s AND released_at IS NULL",
            (at, actor, ids, license_id))
    log.info("resource.release.done license_id=%d count=%d until=%s actor=%s",
             license_id, len(rows), until.isoformat(), actor)
    return [Allocation(rid, ResourceType(kind), value, license_id, at) for rid, kind, value in rows]


def release_license_resources(conn: psycopg.Connection[Any], license_id: int, *, actor: str,
                              settings: Settings, now: dt.datetime | None = None) -> list[Allocation]:
    """Release everything a license holds into quarantine (before the license is deleted: the schema
    refuses to delete a license that still holds resources)."""
    with conn.transaction():
        held = [row[0] for row in conn.execute(
            "SELECT id FROM resource_pools WHERE license_id = %s AND status = 'allocated' FOR UPDATE",
            (license_id,)).fetchall()]
        return release(conn, license_id, held, actor=actor, settings=settings, now=now)


def release_quarantined(conn: psycopg.Connection[Any], *, actor: str, now: dt.datetime | None = None) -> int:
    """Return resources whose quarantine is over to `available`; the number returned.

    Allocation already treats them as free, so this only keeps the pool's status column honest (a cron
    job or the dashboard calls it)."""
    with conn.transaction():
        _set_actor(conn, actor)
        at = _now(conn, now)
        cur = conn.execute(
            "UPDATE resource_pools SET status = 'available', quarantined_until = NULL"
            " WHERE status = 'quarantined' AND quarantined_until <= %s", (at,))
        released = cur.rowcount
    if released:
        log.info("resource.quarantine.ended count=%d", released)
    return released


def retire(conn: psycopg.Connection[Any], resource_ids: Sequence[int], *, actor: str) -> int:
    """Take free (available or quarantined) resources out of service; allocated ones are left alone."""
    with conn.transaction():
        _set_actor(conn, actor)
        cur = conn.execute(
            "UPDATE resource_pools SET status = 'retired', quarantined_until = NULL"
            " WHERE id = ANY(%s) AND status IN ('available', 'quarantined')", (list(resource_ids),))
        return cur.rowcount


def reinstate(conn: psycopg.Connection[Any], resource_ids: Sequence[int], *, actor: str) -> int:
    """Put retired resources back into the pool as available."""
    with conn.transaction():
        _set_actor(conn, actor)
        cur = conn.execute("UPDATE resource_pools SET status = 'available' WHERE id = ANY(%s)"
                           " AND status = 'retired'", (list(resource_ids),))
        return cur.rowcount


# --- reading --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolStats:
    resource_type: ResourceType
    free: int          # available, plus quarantined whose quarantine is over
    allocated: int
    quarantined: int   # still in quarantine
    retired: int
    low: bool          # stocked (total > 0) and free below settings.resource_low_watermark

    @property
    def total(self) -> int:
        return self.free + self.allocated + self.quarantined + self.retired


def pool_stats(conn: psycopg.Connection[Any], *, settings: Settings,
               now: dt.datetime | None = None) -> list[PoolStats]:
    """Free / allocated / quarantined / retired per type, flagging types that run low.  A type never
    stocked is not "low": nothing ran out, there is simply no pool of it."""
    at = _now(conn, now)
    counts = {kind: dict.fromkeys(("free", "allocated", "quarantined", "retired"), 0) for kind in ResourceType}
    for kind, bucket, n in conn.execute(
            "SELECT resource_type, CASE WHEN status = 'available' THEN 'free'"
            " WHEN status = 'quarantined' AND quarantined_until <= %s THEN 'free' ELSE status END AS bucket,"
            " count(*) FROM resource_pools GROUP BY 1, 2", (at,)).fetchall():
        counts[ResourceType(kind)][bucket] += n
    return [PoolStats(kind, low=sum(c.values()) > 0 and c["free"] < settings.resource_low_watermark, **c)
            for kind, c in counts.items()]


@dataclass(frozen=True)
class QuotaUsage:
    resource_type: ResourceType
    held: int
    quota: int


def quota_usage(conn: psycopg.Connection[Any], license_id: int) -> list[QuotaUsage]:
    """How many resources of each type a license holds against its quota."""
    row = conn.execute("SELECT quota_domains, quota_ipv4, quota_phones FROM licenses WHERE id = %s",
                       (license_id,)).fetchone()
    if row is None:
        raise LicenseNotFound(f"license {license_id} does not exist")
    held = dict(conn.execute(
        "SELECT resource_type, count(*) FROM resource_pools WHERE license_id = %s AND status = 'allocated'"
        " GROUP BY 1", (license_id,)).fetchall())
    quotas = dict(zip(ResourceType, row, strict=True))
    return [QuotaUsage(kind, int(held.get(kind.value, 0)), int(quotas[kind])) for kind in ResourceType]


def allocation_history(conn: psycopg.Connection[Any], *, license_id: int | None = None,
                       resource_id: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Allocation rows, newest first, with the resource's type and value; filter by license or resource."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT a.id, a.resource_id, p.resource_type, p.value, a.license_id, l.license_key,"
            " a.allocated_at, a.allocated_by, a.released_at, a.released_by"
            " FROM resource_allocations a JOIN resource_pools p ON p.id = a.resource_id"
            " JOIN licenses l ON l.id = a.license_id"
            " WHERE (%(license)s::bigint IS NULL OR a.license_id = %(license)s)"
            " AND (%(resource)s::bigint IS NULL OR a.resource_id = %(resource)s)"
            " ORDER BY a.allocated_at DESC, a.id DESC LIMIT %(limit)s",
            {"license": license_id, "resource": resource_id, "limit": limit}).fetchall()


LICENSE_RESOURCES_SQL = (
    "SELECT resource_type, value FROM resource_pools WHERE license_id = $1 AND status = 'allocated'"
    " ORDER BY resource_type, value")


async def license_resources(conn: Conn, license_id: int) -> dict[str, list[str]]:
    """The resources a license holds, for POST /v1/licenses/resources: {"domains", "ipv4", "phones"}."""
    result: dict[str, list[str]] = {kind.plural: [] for kind in ResourceType}
    for record in await conn.fetch(LICENSE_RESOURCES_SQL, license_id):
        result[ResourceType(record["resource_type"]).plural].append(record["value"])
    return result
