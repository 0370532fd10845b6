"""Creating a backup: counts and dump taken in one snapshot, written whole or not at all."""

from __future__ import annotations

import logging
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from heartline.backup.archive import (
    DUMP,
    MANIFEST,
    SUFFIX,
    Archive,
    Manifest,
    backup_name,
    fsync_rename,
    sha256_of,
)
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.backup.pgtools import (
    database_url,
    find_pg_tool,
    libpq_target,
    row_counts,
    schema_version,
    server_major,
)
from heartline.settings import Settings

log = logging.getLogger("heartline.backup")

# Any fixed number: two workers whose crons fire together make one backup, not two half-speed ones.
_LOCK_ID = 0x4845_424B  # "HEBK"


def create_backup(settings: Settings, *, now: datetime | None = None) -> Archive:
    """Dump the configured database into a new archive in the backup folder and return it."""
    dsn = database_url(settings)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    name = backup_name(now)
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    final = settings.backup_dir / f"{name}{SUFFIX}"
    if final.exists():
        raise BackupError(BackupErrorCode.EXISTS, f"a backup named {name} already exists")
    with psycopg.connect(dsn, autocommit=True) as lock_conn:
        if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()[0]:  # type: ignore[index]
            raise BackupError(BackupErrorCode.BUSY, "another backup of this database is running")
        version, major = server_major(lock_conn)
        pg_dump = find_pg_tool("pg_dump", major)
        with tempfile.TemporaryDirectory(prefix=".partial-", dir=settings.backup_dir) as tmp_name:
            tmp = Path(tmp_name)
            # The snapshot is exported by a transaction that stays open while pg_dump reads it, so the
            # row counts in the manifest are exactly the rows in the dump.
            with psycopg.connect(dsn) as snap_conn:
                snap_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                snapshot = str(snap_conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
                tables = row_counts(snap_conn)
                schema = schema_version(snap_conn)
                target, env = libpq_target(dsn)
                res = subprocess.run([str(pg_dump), "--format=custom", f"--snapshot={snapshot}",
                                      "--no-password", f"--file={tmp / DUMP}", f"--dbname={target}"],
                                     capture_output=True, text=True, env=env, check=False)
                snap_conn.rollback()
            if res.returncode != 0:
                raise BackupError(BackupErrorCode.DUMP_FAILED, f"pg_dump failed: {res.stderr.strip()}")
            manifest = Manifest(
                name=name, created_at=now.isoformat(),
                schema_version=schema, server_version=version, server_major=major,
                pg_dump_version=subprocess.run([str(pg_dump), "--version"], capture_output=True,
                                               text=True, check=False).stdout.strip(),
                files={DUMP: {"sha256": sha256_of(tmp / DUMP), "bytes": (tmp / DUMP).stat().st_size}},
                tables=tables)
            (tmp / MANIFEST).write_bytes(manifest.to_json())
            partial = tmp / f"{name}{SUFFIX}"
            with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
                # manifest first: `list` reads it without scanning the dump
                tar.add(tmp / MANIFEST, arcname=f"{name}/{MANIFEST}")
                tar.add(tmp / DUMP, arcname=f"{name}/{DUMP}")
            fsync_rename(partial, final)
        lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    archive = Archive(final)
    log.info("backup.created name=%s bytes=%d schema=%s tables=%d", name, final.stat().st_size,
             manifest.schema_version, len(tables))
    return archive
