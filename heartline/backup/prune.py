"""Pruning local archives: only copies the remote holds identically, never the newest that verifies."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from heartline.backup.archive import local_archives
from heartline.backup.errors import BackupError
from heartline.backup.remotes import remote_of
from heartline.settings import Settings

log = logging.getLogger("heartline.backup")

@dataclass(frozen=True)
class PruneResult:
    deleted: list[str]
    kept_not_uploaded: list[str]
    last_good: str | None


def prune_backups(settings: Settings) -> PruneResult:
    """Delete local archives beyond `backup_keep_local` that the remote holds identically.

    Never deletes: anything remote, the newest local archive that verifies, an archive the remote does
    not hold (or holds with other content), or anything at all when no remote is configured.
    """
    archives = local_archives(settings)
    last_good: str | None = None
    for archive in reversed(archives):
        try:
            archive.verify()
        except BackupError as exc:
            log.warning("backup.prune.corrupt name=%s reason=%s", archive.name, exc)
            continue
        last_good = archive.name
        break
    remote = remote_of(settings)
    keep = max(settings.backup_keep_local, 0)
    candidates = archives[:-keep] if keep else archives
    deleted: list[str] = []
    kept: list[str] = []
    for archive in candidates:
        if archive.name == last_good:
            continue
        if remote is None or not remote.holds(archive):
            kept.append(archive.name)
            continue
        archive.path.unlink()
        deleted.append(archive.name)
        log.info("backup.pruned name=%s", archive.name)
    return PruneResult(deleted, kept, last_good)
