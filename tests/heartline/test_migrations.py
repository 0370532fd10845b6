"""`heartline migrate`: ordered, recorded, idempotent, and refusing edited history."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from heartline.migrations import SQL_DIR, MigrationError, load_migrations, migrate

MakeDatabase = Callable[[str], Awaitable[str]]


async def _schema_fingerprint(url: str) -> list[tuple[str, ...]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2")
        return [tuple(r.values()) for r in rows]
    finally:
        await conn.close()


async def test_migrate_applies_all_in_order_and_twice_changes_nothing(make_database: MakeDatabase) -> None:
    url = await make_database("heartline_migrate_twice")
    names = [m.name for m in load_migrations()]
    assert names == sorted(names)
    assert await migrate(url) == names
    schema = await _schema_fingerprint(url)
    assert await migrate(url) == []
    assert await _schema_fingerprint(url) == schema
    conn = await asyncpg.connect(url)
    try:
        recorded = await conn.fetch("SELECT name, checksum FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in recorded] == names
        assert [r["checksum"] for r in recorded] == [m.checksum for m in load_migrations()]
    finally:
        await conn.close()


async def test_changed_applied_migration_is_refused(make_database: MakeDatabase, tmp_path: Path) -> None:
    url = await make_database("heartline_migrate_changed")
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(url, sql_dir)
    first = min(sql_dir.glob("*.sql"))
    first.write_text(first.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match=f"migration {first.name} was changed after it was applied"):
        await migrate(url, sql_dir)


async def test_failed_migration_leaves_nothing_behind(make_database: MakeDatabase, tmp_path: Path) -> None:
    url = await make_database("heartline_migrate_failed")
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT * FROM nowhere;\n")
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(url, sql_dir)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '9999_broken.sql'") == 0
    finally:
        await conn.close()
