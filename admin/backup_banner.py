"""The banner every admin page shows while backups need attention: the newest backup older than 26 hours,
a failure newer than the last success, or nothing uploaded to a configured remote (heartline/backup_events.py
decides; docs/operations.md#backup-freshness explains)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from heartline import backup_events
from heartline.settings import Settings

log = logging.getLogger("admin.backup_banner")


def backup_problems(engine: Any, settings: Settings) -> list[str]:
    """What the banner says; empty when the backups are fresh.

    engine: the admin's SQLAlchemy engine (its own connection, so the request's session is untouched).
    The admin may run without HEARTLINE_BACKUP_REMOTE (compose gives it to the worker); a remote counts as
    configured when the setting says so or when a backup was ever uploaded.
    """
    try:
        with engine.connect() as conn:
            fresh = backup_events.Freshness.from_row(conn.execute(text(backup_events.FRESHNESS_SQL)).one())
    except SQLAlchemyError as exc:
        log.warning("admin.backup_banner.unavailable error=%s", exc)
        return ["backup freshness is unknown: the backup_events table cannot be read (run `heartline migrate`)"]
    remote = bool(settings.backup_remote) or fresh.last_uploaded is not None
    return fresh.problems(backup_events.utcnow(), remote_configured=remote)
