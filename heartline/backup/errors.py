"""Backup errors: one code per way a backup, restore or push can fail."""

from __future__ import annotations

from enum import StrEnum


class BackupErrorCode(StrEnum):
    NOT_FOUND = "BACKUP_NOT_FOUND"
    CORRUPT = "BACKUP_CORRUPT"
    EXISTS = "BACKUP_EXISTS"
    BUSY = "BACKUP_IN_PROGRESS"
    NO_PG_TOOL = "PG_TOOL_NOT_FOUND"
    VERSION = "SERVER_VERSION_MISMATCH"
    DUMP_FAILED = "DUMP_FAILED"
    RESTORE_FAILED = "RESTORE_FAILED"
    NOT_CONFIRMED = "RESTORE_NOT_CONFIRMED"
    NO_REMOTE = "REMOTE_NOT_CONFIGURED"
    REMOTE_FAILED = "REMOTE_FAILED"


class BackupError(RuntimeError):
    """A backup operation failed; `code` is stable, the message says what to do."""

    def __init__(self, code: BackupErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
