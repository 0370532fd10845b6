"""Backups as they happen (created, uploaded, failed), recorded in PostgreSQL's `backup_events`, and
the freshness read back from it: the time of the newest successful backup, upload and failure.

Recorded by each path that backs up (the worker's daily job, `heartline backup create|push`, `heartline
migrate`); read by the worker's /metrics, `heartline status` and the admin's banner.  Recording never
fails the backup it describes: a database that cannot take the row is logged and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg

log = logging.getLogger("heartline.backup_events")

# The alert `HeartlineBackupStale` and the admin banner use the same age: a daily backup plus two hours
# of slack for a slow dump or a late cron.
STALE_AFTER = timedelta(hours=26)


class BackupEventKind(StrEnum):
    CREATED = "created"
    UPLOADED = "uploaded"
    FAILED = "failed"


class BackupTrigger(StrEnum):
    SCHEDULED = "scheduled"
    MIGRATE = "migrate"
    MANUAL = "manual"


def record(dsn: str, kind: BackupEventKind, trigger: BackupTrigger, *, name: str | None = None,
           detail: str | None = None) -> None:
    """Insert one event; a failure to record is logged, never raised (the backup itself already ended)."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("INSERT INTO backup_events (kind, trigger, name, detail) VALUES (%s, %s, %s, %s)",
                         (str(kind), str(trigger), name, detail))
    except psycopg.Error as exc:
        log.warning("backup.event.not_recorded kind=%s name=%s error=%s", kind, name, exc)


FRESHNESS_SQL = """
SELECT max(occurred_at) FILTER (WHERE kind = 'created')  AS last_created,
       max(occurred_at) FILTER (WHERE kind = 'uploaded') AS last_uploaded,
       max(occurred_at) FILTER (WHERE kind = 'failed')   AS last_failed,
       (SELECT detail FROM backup_events WHERE kind = 'failed' ORDER BY occurred_at DESC, id DESC LIMIT 1)
                                                         AS last_failure
FROM backup_events
"""


@dataclass(frozen=True)
class Freshness:
    """The newest backup event of each kind (None: never)."""

    last_created: datetime | None
    last_uploaded: datetime | None
    last_failed: datetime | None
    last_failure: str | None

    @classmethod
    def from_row(cls, row: Any) -> Freshness:
        return cls(row[0], row[1], row[2], row[3])

    def problems(self, now: datetime, *, remote_configured: bool) -> list[str]:
        """What an operator must hear about; empty when the backups are fresh."""
        found: list[str] = []
        if self.last_created is None:
            found.append("no backup was ever taken")
        elif now - self.last_created > STALE_AFTER:
            found.append(f"the newest backup is {_age(now - self.last_created)} old")
        if self.last_failed is not None and (self.last_created is None or self.last_failed > self.last_created):
            found.append(f"the last backup attempt failed {_age(now - self.last_failed)} ago: {self.last_failure}")
        if remote_configured and self.last_created is not None:
            if self.last_uploaded is None:
                found.append("no backup was ever uploaded to the remote")
            elif now - self.last_uploaded > STALE_AFTER:
                found.append(f"the newest upload to the remote is {_age(now - self.last_uploaded)} old")
        return found


def read(dsn: str) -> Freshness:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return Freshness.from_row(conn.execute(FRESHNESS_SQL).fetchone())


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min"


def utcnow() -> datetime:
    return datetime.now(UTC)
