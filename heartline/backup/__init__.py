"""Backups of the PostgreSQL database: create, list, push, restore and prune, as `heartline backup ...`.

A backup is one tar archive `server_backup_YYYYMMDD_HHMMSS.tar` holding

    server_backup_YYYYMMDD_HHMMSS/manifest.json   name, created_at, schema version, server version,
                                                   sha256 and size of each file, row count per table
    server_backup_YYYYMMDD_HHMMSS/database.dump   pg_dump custom format (-Fc), by a pg_dump whose major
                                                   version is the server's

The row counts are taken in the very snapshot that pg_dump dumps (`pg_export_snapshot()` +
`pg_dump --snapshot`), so a restore can prove, before it commits, that it gave back exactly that data.

The remote (HEARTLINE_BACKUP_REMOTE) is a folder or a git repository; only ever added to, never pruned.
Local archives beyond HEARTLINE_BACKUP_KEEP_LOCAL are deleted only once the remote holds an identical
copy, and the newest local archive that verifies is never deleted.

One module per concern: `archive` (the format), `pgtools` (pg_dump and friends of the server's major
version), `create`, `remotes` (folder and git), `prune`, `restore`, `cli`; `errors` holds the codes.
"""

from __future__ import annotations

from heartline.backup.archive import (
    DUMP,
    MANIFEST,
    MANIFEST_FORMAT,
    NAME_FORMAT,
    NAME_PREFIX,
    SUFFIX,
    Archive,
    Manifest,
    backup_name,
    local_archives,
)
from heartline.backup.cli import main
from heartline.backup.create import create_backup
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.backup.pgtools import display_target, find_pg_tool
from heartline.backup.prune import PruneResult, prune_backups
from heartline.backup.remotes import (
    GIT_BRANCH,
    FolderRemote,
    GitRemote,
    Remote,
    mask_remote,
    push_backup,
    remote_of,
)
from heartline.backup.restore import RESTORE_LOCK_TIMEOUT, drop_license_caches, find_archive, restore_backup

__all__ = [
    "DUMP",
    "GIT_BRANCH",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "NAME_FORMAT",
    "NAME_PREFIX",
    "RESTORE_LOCK_TIMEOUT",
    "SUFFIX",
    "Archive",
    "BackupError",
    "BackupErrorCode",
    "FolderRemote",
    "GitRemote",
    "Manifest",
    "PruneResult",
    "Remote",
    "backup_name",
    "create_backup",
    "display_target",
    "drop_license_caches",
    "find_archive",
    "find_pg_tool",
    "local_archives",
    "main",
    "mask_remote",
    "prune_backups",
    "push_backup",
    "remote_of",
    "restore_backup",
]
