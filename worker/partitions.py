"""Monthly partitions of `license_heartbeats`: created ahead, retired after the retention period.

Run at worker start and daily.  `today` is a parameter so the month and year boundaries can be tested
without waiting.  The worker never creates a DEFAULT partition: one holding rows of a future month would
make creating that month's partition fail.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

log = logging.getLogger("worker.partitions")

PARENT = "license_heartbeats"
PARTITIONS_LOCK = 0x484C_5054  # "HLPT"
_NAME = re.compile(r"^license_heartbeats_(\d{4})_(\d{2})$")

LIST_PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = $1::regclass
 ORDER BY c.relname
"""


@dataclass
class PartitionChanges:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def add_months(month: date, n: int) -> date:
    """The first day of the month `n` months after the month of `month` (n may be negative)."""
    index = month.year * 12 + (month.month - 1) + n
    return date(index // 12, index % 12 + 1, 1)


def partition_month(name: str) -> date | None:
    match = _NAME.match(name)
    return date(int(match[1]), int(match[2]), 1) if match else None


async def maintain_partitions(conn: asyncpg.Connection, *, today: date, ahead_months: int,
                              retention_months: int) -> PartitionChanges:
    """Create the partitions of today's month and `ahead_months` after it; detach and drop every
    partition whose whole month ended more than `retention_months` before `today`.

    conn: a connection (not in a transaction); today: the UTC date to act as of.
    """
    changes = PartitionChanges()
    # Several workers run this at start and daily: one at a time, the others then find nothing to do.
    await conn.execute("SELECT pg_advisory_lock($1)", PARTITIONS_LOCK)
    try:
        await _maintain(conn, today, ahead_months, retention_months, changes)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", PARTITIONS_LOCK)
    return changes


async def _maintain(conn: asyncpg.Connection, today: date, ahead_months: int, retention_months: int,
                    changes: PartitionChanges) -> None:
    existing = {r["relname"]: r["bound"] for r in await conn.fetch(LIST_PARTITIONS, PARENT)}
    for name, bound in existing.items():
        if bound == "DEFAULT":
            log.warning("worker.partitions.default_partition partition=%s: it blocks creating month "
                        "partitions for rows it holds; move its rows and drop it", name)
    current = date(today.year, today.month, 1)
    for n in range(ahead_months + 1):
        month = add_months(current, n)
        name = await _ensure(conn, month)
        if name not in existing:
            changes.created.append(name)
            log.info("worker.partitions.created partition=%s", name)
    # A month goes once it ended before the first day of (today's month - retention): with 12 months
    # on 2027-01-15, 2025-12 goes and 2026-01 stays.
    cutoff = add_months(current, -retention_months)
    for name in sorted(existing):
        first_day = partition_month(name)
        if first_day is None or add_months(first_day, 1) > cutoff:
            continue
        async with conn.transaction():
            # Short lock timeout: a flush holding the parent must not queue every later flush behind us.
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            await conn.execute(f'ALTER TABLE {PARENT} DETACH PARTITION "{name}"')
            await conn.execute(f'DROP TABLE "{name}"')
        changes.dropped.append(name)
        log.info("worker.partitions.dropped partition=%s retention_months=%s", name, retention_months)


async def _ensure(conn: asyncpg.Connection, month: date) -> str:
    try:
        return str(await conn.fetchval("SELECT ensure_heartbeat_partition($1)", month))
    except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
        # another worker created it between the check and the CREATE
        return f"{PARENT}_{month:%Y_%m}"


async def maintain_heartbeat_partitions(ctx: dict[str, Any], today: date | None = None) -> dict[str, Any]:
    """arq job: create heartbeat partitions ahead and drop those past retention."""
    settings = ctx["settings"]
    async with ctx["pool"].acquire() as conn:
        changes = await maintain_partitions(conn, today=today or datetime.now(UTC).date(),
                                            ahead_months=settings.partitions_ahead_months,
                                            retention_months=settings.retention_months)
    return {"created": changes.created, "dropped": changes.dropped}
