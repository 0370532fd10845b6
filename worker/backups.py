"""Scheduled database backups: an arq cron job around heartline.backup.

The worker registers `backup_cron(settings)` in its cron jobs; ctx["settings"] holds the Settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from arq.cron import CronJob, cron

from heartline import backup
from heartline.backup_events import BackupEventKind, BackupTrigger, record
from heartline.settings import Settings
from heartline.webhooks import store
from heartline.webhooks.catalogue import EventType

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
        await announce_failure(ctx, "create", exc)
        await _record(settings, BackupEventKind.FAILED, detail=f"create: {exc} [{exc.code}]")
        raise
    except OSError as exc:
        log.error("backup.scheduled.failed error=%s", exc)
        await _record(settings, BackupEventKind.FAILED, detail=f"create: {type(exc).__name__}: {exc}")
        raise
    await _record(settings, BackupEventKind.CREATED, name=archive.name)
    if backup.remote_of(settings) is None:
        log.warning("backup.scheduled.not_pushed name=%s reason=no_remote_configured", archive.name)
        return archive.name
    try:
        await asyncio.to_thread(backup.push_backup, settings, archive)
    except backup.BackupError as exc:
        # the local copy stays, and nothing is pruned: the next run pushes again (see `backup push`)
        log.error("backup.scheduled.push_failed name=%s code=%s error=%s", archive.name, exc.code, exc)
        await announce_failure(ctx, "push", exc)
        await _record(settings, BackupEventKind.FAILED, name=archive.name, detail=f"push: {exc} [{exc.code}]")
        raise
    except OSError as exc:
        log.error("backup.scheduled.push_failed name=%s error=%s", archive.name, exc)
        await _record(settings, BackupEventKind.FAILED, name=archive.name,
                      detail=f"push: {type(exc).__name__}: {exc}")
        raise
    await _record(settings, BackupEventKind.UPLOADED, name=archive.name)
    result = await asyncio.to_thread(backup.prune_backups, settings)
    log.info("backup.scheduled.done name=%s pruned=%d kept_not_uploaded=%d", archive.name,
             len(result.deleted), len(result.kept_not_uploaded))
    return archive.name


async def announce_failure(ctx: dict[str, Any], stage: str, exc: backup.BackupError) -> None:
    """The backup.failed webhook event (docs/webhooks.md); a database that is down loses only this event."""
    pool = ctx.get("pool")
    if pool is None:
        return
    try:
        async with pool.acquire() as conn:
            await store.add_to_outbox(conn, str(EventType.BACKUP_FAILED),
                                      {"stage": stage, "code": str(exc.code), "error": str(exc)[:500]})
    except (OSError, asyncpg.PostgresError) as err:
        log.warning("backup.failed.not_announced error=%s", type(err).__name__)


async def _record(settings: Settings, kind: BackupEventKind, *, name: str | None = None,
                  detail: str | None = None) -> None:
    assert settings.database_url
    await asyncio.to_thread(record, settings.database_url, kind, BackupTrigger.SCHEDULED, name=name, detail=detail)


def backup_cron(settings: Settings) -> CronJob:
    """Daily at HEARTLINE_BACKUP_CRON_HOUR:00 UTC, on one worker only (arq's unique cron job id)."""
    return cron(create_scheduled_backup, hour={settings.backup_cron_hour}, minute={0}, second={0},
                run_at_startup=False, unique=True, timeout=6 * 3600, max_tries=1)
