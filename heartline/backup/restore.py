"""Restoring a backup: verified first, replayed in one transaction, row counts proven before commit."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
from pathlib import Path

import psycopg

from heartline.backup.archive import DUMP, NAME_PATTERN, NAME_PREFIX, SUFFIX, Archive, Manifest
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.backup.pgtools import (
    database_url,
    display_target,
    find_pg_tool,
    libpq_target,
    scratch_dir,
    server_major,
)
from heartline.backup.remotes import remote_of
from heartline.plane import redis as plane_redis
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings

log = logging.getLogger("heartline.backup")

# A restore waits this long for sessions of running processes to release their locks, then gives up
# instead of hanging behind them (stop worker and admin before restoring).
RESTORE_LOCK_TIMEOUT = "30s"


def find_archive(settings: Settings, name: str) -> Archive:
    """A local archive by name (or path); fetched from the remote into the backup folder if only there."""
    as_path = Path(name)
    if as_path.suffix == SUFFIX and as_path.is_file():
        return Archive(as_path)
    name = name.removesuffix(SUFFIX)
    if not NAME_PATTERN.match(name):
        raise BackupError(BackupErrorCode.NOT_FOUND,
                          f"{name!r} is not a backup name (expected {NAME_PREFIX}YYYYMMDD_HHMMSS)")
    local = settings.backup_dir / f"{name}{SUFFIX}"
    if local.is_file():
        return Archive(local)
    remote = remote_of(settings)
    if remote is None:
        raise BackupError(BackupErrorCode.NOT_FOUND, f"no backup {name} in {settings.backup_dir}")
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return Archive(remote.fetch(name, settings.backup_dir))


def _count_check_sql(tables: dict[str, int]) -> str:
    """A statement that aborts the restore's transaction unless every table has the manifest's rows."""
    checks = "\n".join(
        f"  IF (SELECT count(*) FROM public.{_ident(t)}) <> {int(n)} THEN "
        f"RAISE EXCEPTION 'restored table % has % rows, the backup had %', {_literal(t)}, "
        f"(SELECT count(*) FROM public.{_ident(t)}), {int(n)}; END IF;"
        for t, n in sorted(tables.items()))
    return f"DO $heartline$\nBEGIN\n{checks}\nEND\n$heartline$;"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_backup(settings: Settings, archive: Archive) -> Manifest:
    """Replace the configured database's public schema with the archive's, in one transaction.

    Verifies the archive first (a bad one is refused before anything is touched), then runs
    pg_restore's script through psql with --single-transaction: drop the public schema, recreate it
    from the dump, check every table's row count against the manifest, commit. Any error rolls all back.
    """
    dsn = database_url(settings)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=scratch_dir(settings)) as tmp_name:
        tmp = Path(tmp_name)
        manifest = archive.verify(extract_to=tmp)
        with psycopg.connect(dsn, autocommit=True) as conn:
            _version, major = server_major(conn)
        if manifest.server_major > major:
            raise BackupError(BackupErrorCode.VERSION,
                              f"{archive.name} was dumped from PostgreSQL {manifest.server_major}; it cannot "
                              f"be restored into PostgreSQL {major}")
        pg_restore = find_pg_tool("pg_restore", major)
        psql = find_pg_tool("psql", major)
        license_ids = _license_ids(dsn)
        (tmp / "check.sql").write_text(_count_check_sql(manifest.tables))
        target, env = libpq_target(dsn)
        env["PGOPTIONS"] = f"-c lock_timeout={RESTORE_LOCK_TIMEOUT}"
        script = subprocess.Popen([str(pg_restore), "--no-owner", "--file=-", str(tmp / DUMP)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        apply = subprocess.run(
            [str(psql), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
             "--single-transaction", f"--dbname={target}",
             "--command=DROP SCHEMA IF EXISTS public CASCADE",
             "--command=CREATE SCHEMA public",
             # the default schema's usage right; any other ACL of the backup comes with the dump
             "--command=GRANT USAGE ON SCHEMA public TO PUBLIC",
             "--file=-", f"--file={tmp / 'check.sql'}"],
            stdin=script.stdout, capture_output=True, text=True, env=env, check=False)
        assert script.stdout is not None and script.stderr is not None
        script.stdout.close()
        script_err = script.stderr.read().decode(errors="replace")
        script.stderr.close()
        script_code = script.wait()
        # psql's failure first: when it stops early (a lock timeout, say) pg_restore dies of the closed
        # pipe too, and the cause worth reporting is psql's.
        if apply.returncode != 0:
            raise BackupError(BackupErrorCode.RESTORE_FAILED,
                              f"restore of {archive.name} failed and was rolled back, the database is "
                              f"unchanged: {apply.stderr.strip()}")
        if script_code != 0:
            raise BackupError(BackupErrorCode.RESTORE_FAILED,
                              f"pg_restore could not read {archive.name}: {script_err.strip()}; "
                              "the database was not changed")
    log.info("backup.restored name=%s target=%s tables=%d", archive.name, display_target(dsn),
             len(manifest.tables))
    license_ids |= _license_ids(dsn)
    if settings.redis_url:
        dropped = drop_license_caches(settings, license_ids)
        log.info("backup.restored.plane_caches_dropped licenses=%d", dropped)
    else:
        log.warning("backup.restored.plane_caches_kept reason=no_redis_url")
    return manifest


def _license_ids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('public.licenses') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return set()
        return {int(r[0]) for r in conn.execute("SELECT id FROM licenses").fetchall()}


def drop_license_caches(settings: Settings, license_ids: set[int]) -> int:
    """Drop the plane's cached copies of these licenses, so that the edges reload them from PostgreSQL.

    Needed after a restore: the restored rows may carry *older* versions than the cached ones, which the
    plane would otherwise keep serving (it never replaces a cached license with an older version), and
    restored ids may be reused by new licenses.
    """
    async def run() -> None:
        client = plane_redis.connect(settings.redis_url or "")
        try:
            plane = SessionPlane(client, settings)
            await plane.load_scripts()
            ordered = sorted(license_ids)
            for start in range(0, len(ordered), 500):
                await asyncio.gather(*(plane.invalidate_license(i) for i in ordered[start:start + 500]))
        finally:
            await client.aclose()

    asyncio.run(run())
    return len(license_ids)
