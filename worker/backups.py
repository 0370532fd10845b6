"""Scheduled database backups: an arq cron job around heartline.backup.

The worker registers `backup_cron(settings)` in its cron jobs; ctx["settings"] holds the Settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.cron import CronJob, cron

from heartline import backup
from heartline.settings import Settings

log = logging.getLogger("worker.backups")


async def create_scheduled_backup(ctx: dict[str, Any]) -> str | None:
    """Create a backup; when a remote is configured push it, then prune local copies the remote holds."""
    settings: Settings = ctx["settings"]
    # pg_dump, hashing and the upload block for a while: keep the worker's event loop free for flushes.
    try:
        archive = await asyncio.to_thread(backup.create_backup, settings)
    except backup.BackupError as exc:
        if exc.code is backup.BackupErrorCode.BUSY:
            log.info("backup.scheduled.skipped reason=another_backup_running")
            return None
        log.error("backup.scheduled.failed code=%s error=%s", exc.code, exc)
        raise
    if backup.remote_of(settings) is None:
        log.warning("backup.scheduled.not_pushed name=%s reason=no_remote_configured", archive.name)
        return archive.name
    try:
        await asyncio.to_thread(backup.push_backup, settings, archive)
    except backup.BackupError as exc:
        # the local copy stays, and nothing is pruned: the next run pushes again (see `backup push`)
        log.error("backup.scheduled.push_failed name=%s code=%s error=%s", archive.name, exc.code, exc)
        raise
    result = await asyncio.to_thread(backup.prune_backups, settings)
    log.info("backup.scheduled.done name=%s pruned=%d kept_not_uploaded=%d", archive.name,
             len(result.deleted), len(result.kept_not_uploaded))
    return archive.name


def backup_cron(settings: Settings) -> CronJob:
    """Daily at HEARTLINE_BACKUP_CRON_HOUR:00 UTC, on one worker only (arq's unique cron job id)."""
    return cron(create_scheduled_backup, hour={settings.backup_cron_hour}, minute={0}, second={0},
                run_at_startup=False, unique=True, timeout=6 * 3600, max_tries=1)
