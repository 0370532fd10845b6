"""`heartline migrate` takes a verified backup before changing the schema of a database that holds data,
and changes nothing when that backup fails.  Run as an operator runs it: the console script, real
PostgreSQL, real pg_dump."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from shared_support import process_env

from heartline.backup import Archive, local_archives
from heartline.migrations import SQL_DIR, load_migrations, migrate
from heartline.settings import Settings

MakeDatabase = Callable[[str], Awaitable[str]]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = process_env(sealing_secrets=False)
    return subprocess.run([sys.executable, "-m", "heartline", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=300, check=False)


async def _one_migration_behind(make_database: MakeDatabase, name: str, tmp_path: Path) -> tuple[str, list[str]]:
    """A database migrated up to the second newest file, with a customer in it; returns (url, applied)."""
    url = await make_database(name)
    older = tmp_path / "sql-older"
    older.mkdir()
    files = sorted(SQL_DIR.glob("*.sql"))[:-1]
    for f in files:
        shutil.copy(f, older / f.name)
    applied = await migrate(url, older)
    conn = await asyncpg.connect(url, server_settings={"heartline.actor": "test"})
    try:
        await conn.execute("INSERT INTO customers (name) VALUES ('Customer before the upgrade')")
    finally:
        await conn.close()
    return url, applied


async def _schema(url: str) -> tuple[list[str], list[tuple[str, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        columns = [tuple(r.values()) for r in await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2")]
        return applied, columns
    finally:
        await conn.close()


async def test_failing_backup_to_an_unwritable_folder_stops_migrate_before_any_change(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url, applied = await _one_migration_behind(make_database, "heartline_upgrade_unwritable", tmp_path)
    before = await _schema(url)
    # a folder beneath a regular file can be created by nobody, root included
    (tmp_path / "a-file").write_text("not a folder")
    res = _run(["migrate"], {"HEARTLINE_DATABASE_URL": url, "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
                             "HEARTLINE_BACKUP_DIR": str(tmp_path / "a-file" / "backups")})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "backup before migrating failed at 'create'" in res.stderr
    assert "Nothing was migrated" in res.stderr and "[BACKUP_BEFORE_MIGRATE_FAILED]" in res.stderr
    assert "applied" not in res.stdout
    assert await _schema(url) == before
    assert before[0] == applied


async def test_failing_push_to_the_remote_stops_migrate_before_any_change(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url, _applied = await _one_migration_behind(make_database, "heartline_upgrade_bad_remote", tmp_path)
    before = await _schema(url)
    (tmp_path / "a-file").write_text("not a folder")
    res = _run(["migrate"], {"HEARTLINE_DATABASE_URL": url, "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
                             "HEARTLINE_BACKUP_DIR": str(tmp_path / "backups"),
                             "HEARTLINE_BACKUP_REMOTE": str(tmp_path / "a-file" / "remote")})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "backup before migrating failed at 'push'" in res.stderr
    assert await _schema(url) == before


async def test_backup_is_taken_and_pushed_then_the_migration_applied(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url, applied = await _one_migration_behind(make_database, "heartline_upgrade_backs_up", tmp_path)
    remote = tmp_path / "remote"
    res = _run(["migrate"], {"HEARTLINE_DATABASE_URL": url, "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
                             "HEARTLINE_BACKUP_DIR": str(tmp_path / "backups"),
                             "HEARTLINE_BACKUP_REMOTE": str(remote)})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    steps = [next(i for i, line in enumerate(lines) if line.startswith(prefix))
             for prefix in ("backup   created", "backup   pushed", "backup   verified", "applied 1 migration")]
    assert steps == sorted(steps), res.stdout
    archives = local_archives(Settings(backup_dir=tmp_path / "backups"))
    assert len(archives) == 1
    manifest = archives[0].verify()
    # the backup holds the database as it was before the migration: old schema, the customer
    assert manifest.schema_version == applied[-1]
    assert manifest.tables["customers"] == 1
    assert Archive(remote / archives[0].path.name).verify() == manifest
    assert (await _schema(url))[0] == [m.name for m in load_migrations()]


async def test_no_backup_flag_migrates_without_one(make_database: MakeDatabase, tmp_path: Path) -> None:
    url, _applied = await _one_migration_behind(make_database, "heartline_upgrade_no_backup", tmp_path)
    res = _run(["migrate", "--no-backup"], {"HEARTLINE_DATABASE_URL": url,
                                            "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
                                            "HEARTLINE_BACKUP_DIR": str(tmp_path / "backups")})
    assert res.returncode == 0, res.stderr
    assert "backup   skipped (--no-backup)" in res.stdout
    assert not (tmp_path / "backups").exists()
    assert (await _schema(url))[0] == [m.name for m in load_migrations()]


async def test_a_database_without_data_is_migrated_without_a_backup(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    url = await make_database("heartline_upgrade_empty")
    res = _run(["migrate"], {"HEARTLINE_DATABASE_URL": url, "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
                             "HEARTLINE_BACKUP_DIR": str(tmp_path / "backups")})
    assert res.returncode == 0, res.stderr
    assert "backup   not needed: the database holds no data yet" in res.stdout
    assert not (tmp_path / "backups").exists()
