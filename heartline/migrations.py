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


async def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when the schema is current)."""
    migrations = load_migrations(sql_dir)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            applied = {r["name"]: r["checksum"] for r in await conn.fetch(
                "SELECT name, checksum FROM schema_migrations")}
            for m in migrations:
                recorded = applied.get(m.name)
                if recorded is not None and recorded != m.checksum:
                    raise MigrationError(
                        f"migration {m.name} was changed after it was applied "
                        f"(recorded checksum {recorded[:12]}…, file has {m.checksum[:12]}…); "
                        "add a new migration instead of editing an applied one")
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
    return await conn.fetchval("SELECT max(name) FROM schema_migrations")
