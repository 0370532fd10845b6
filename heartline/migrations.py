"""Applies the numbered SQL files in sql/ in order, each in its own transaction, recorded with a checksum.

An applied file whose content changed is refused with a message naming it: migrations are history, and a
changed one means the database and the repository disagree about the schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

log = logging.getLogger("heartline.migrations")

# sql/ at the top of the repository, installed as the package heartline.sql (setup.py maps it).
SQL_DIR = Path(str(resources.files("heartline.sql")))
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any fixed number: serialises concurrent `heartline migrate` runs (several containers starting at once).
_LOCK_ID = 0x4845_4152  # "HEAR"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and those recorded in the database disagree."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    files = sorted(p for p in sql_dir.glob("*.sql") if _NAME.match(p.name))
    if not files:
        raise MigrationError(f"no migrations found in {sql_dir}")
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def _check_history(migrations: list[Migration], applied: dict[str, str]) -> None:
    for m in migrations:
        recorded = applied.get(m.name)
        if recorded is not None and recorded != m.checksum:
            raise MigrationError(
                f"migration {m.name} was changed after it was applied "
                f"(recorded checksum {recorded[:12]}…, file has {m.checksum[:12]}…); "
                "add a new migration instead of editing an applied one")


async def _applied(conn: asyncpg.Connection) -> dict[str, str]:
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    return {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}


async def pending(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Names of the migrations `migrate` would apply now; refuses edited history as `migrate` does."""
    migrations = load_migrations(sql_dir)
    conn = await asyncpg.connect(dsn)
    try:
        applied = await _applied(conn)
    finally:
        await conn.close()
    _check_history(migrations, applied)
    return [m.name for m in migrations if m.name not in applied]


async def holds_data(dsn: str) -> bool:
    """True when any table in the public schema other than schema_migrations has a row.

    One `EXISTS` per table, so it costs the same on a large database as on a small one."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND c.relname <> 'schema_migrations'")
        for row in tables:
            name = row["relname"].replace('"', '""')
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM public."{name}")'):
                return True
        return False
    finally:
        await conn.close()


async def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when the schema is current)."""
    migrations = load_migrations(sql_dir)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            applied = await _applied(conn)
            _check_history(migrations, applied)
            done: list[str] = []
            for m in migrations:
                if m.name in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", m.name, m.checksum)
                log.info("migration.applied name=%s", m.name)
                done.append(m.name)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()


async def schema_version(conn: asyncpg.Connection) -> str | None:
    """Name of the newest applied migration, or None on an empty database."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    newest: str | None = await conn.fetchval("SELECT max(name) FROM schema_migrations")
    return newest
