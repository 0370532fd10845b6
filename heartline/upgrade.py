"""What `heartline migrate` does: a verified backup before any schema change, then the migrations.

When migrations are pending on a database that holds data, a backup is created, pushed to
HEARTLINE_BACKUP_REMOTE when one is configured (and the remote's copy checked to be identical), and
verified against its checksums; only then does the first migration run.  If any of these steps fails,
`BackupBeforeMigrateFailed` is raised before anything is migrated: the schema is untouched and the message
names the step and its cause.  `skip_backup=True` (`heartline migrate --no-backup`) is the explicit way
round it.  See docs/operations.md, "Backup before every schema change".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from heartline import backup, migrations
from heartline.backup_events import BackupEventKind, BackupTrigger, record
from heartline.errors import HeartlineError
from heartline.settings import PREFIX, Settings

log = logging.getLogger("heartline.upgrade")


class BackupBeforeMigrateFailed(HeartlineError):
    status = 503
    code = "BACKUP_BEFORE_MIGRATE_FAILED"
    message = "The backup before the migration failed; nothing was migrated."


@dataclass(frozen=True)
class UpgradeResult:
    applied: list[str]
    # The archive taken before migrating; None when nothing was pending, the database held no data, or
    # the backup was skipped on purpose.
    backup: backup.Archive | None
    pushed: bool
    skipped_reason: str | None


def upgrade(settings: Settings, *, skip_backup: bool = False,
            say: Callable[[str], None] = lambda _line: None,
            sql_dir: Path = migrations.SQL_DIR) -> UpgradeResult:
    """Back up (unless skipped or pointless), then apply pending migrations.

    settings: database_url must be set; backup_dir / backup_remote say where the backup goes.
    skip_backup: migrate without a backup (the operator said --no-backup).
    say: receives one line per step, for the command's output.
    """
    dsn = settings.database_url
    assert dsn
    pending = asyncio.run(migrations.pending(dsn, sql_dir))
    archive: backup.Archive | None = None
    pushed = False
    reason: str | None = None
    if not pending:
        reason = "no migration pending"
    elif skip_backup:
        reason = "--no-backup"
        log.warning("migrate.backup.skipped reason=no_backup_flag pending=%d", len(pending))
        say(f"backup   skipped (--no-backup); {len(pending)} migration(s) pending")
    elif not asyncio.run(migrations.holds_data(dsn)):
        reason = "the database holds no data"
        say("backup   not needed: the database holds no data yet")
    else:
        say(f"{len(pending)} migration(s) pending ({', '.join(pending)}); backing up first")
        archive, pushed = _backup(settings, say)
    applied = asyncio.run(migrations.migrate(dsn, sql_dir))
    return UpgradeResult(applied, archive, pushed, reason)


def _backup(settings: Settings, say: Callable[[str], None]) -> tuple[backup.Archive, bool]:
    dsn = settings.database_url or ""
    step = "create"
    name: str | None = None
    try:
        archive = backup.create_backup(settings)
        name = archive.name
        record(dsn, BackupEventKind.CREATED, BackupTrigger.MIGRATE, name=name)
        say(f"backup   created {archive.path}")
        remote = backup.remote_of(settings)
        if remote is not None:
            step = "push"
            backup.push_backup(settings, archive)
            if not remote.holds(archive):
                raise backup.BackupError(backup.BackupErrorCode.REMOTE_FAILED,
                                         f"{backup.mask_remote(settings.backup_remote)} does not hold an identical copy after the push")
            record(dsn, BackupEventKind.UPLOADED, BackupTrigger.MIGRATE, name=name)
            say(f"backup   pushed to {backup.mask_remote(settings.backup_remote)}")
        step = "verify"
        manifest = archive.verify()
        say(f"backup   verified: {sum(manifest.tables.values())} rows in {len(manifest.tables)} tables, "
            f"schema {manifest.schema_version}")
    except (backup.BackupError, OSError, psycopg.Error) as exc:
        detail = f"{exc} [{exc.code}]" if isinstance(exc, backup.BackupError) else f"{type(exc).__name__}: {exc}"
        log.error("migrate.backup.failed step=%s error=%s", step, detail)
        record(dsn, BackupEventKind.FAILED, BackupTrigger.MIGRATE, name=name, detail=f"{step}: {detail}")
        raise BackupBeforeMigrateFailed(
            f"backup before migrating failed at {step!r}: {detail}. Nothing was migrated. Fix the cause "
            f"({PREFIX}BACKUP_DIR={settings.backup_dir}"
            + (f", {PREFIX}BACKUP_REMOTE={backup.mask_remote(settings.backup_remote)}" if settings.backup_remote else "")
            + ") and run `heartline migrate` again, or pass --no-backup to migrate without one") from exc
    return archive, remote is not None
