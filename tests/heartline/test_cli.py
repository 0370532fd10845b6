"""The `heartline` console script, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
from shared_support import found, process_env

from heartline.apikeys import hash_key, is_well_formed
from heartline.settings import Settings


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = process_env(sealing_secrets=False)
    return subprocess.run([sys.executable, "-m", "heartline", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_malformed_setting_stops_with_one_clear_line(tmp_path: Path) -> None:
    res = _run(["migrate"], {"HEARTLINE_FLUSH_BATCH_SIZE": "lots", "HEARTLINE_DATA_DIR": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "heartline: HEARTLINE_FLUSH_BATCH_SIZE='lots' is malformed: expected an integer"]


def test_migrate_without_a_database_says_what_to_do(tmp_path: Path) -> None:
    res = _run(["migrate"], {"HEARTLINE_DATA_DIR": str(tmp_path)})
    assert res.returncode == 2
    assert "HEARTLINE_DATABASE_URL is not set" in res.stderr


def test_migrate_via_cli_is_idempotent(database_url: str, tmp_path: Path) -> None:
    env = {"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_DATA_DIR": str(tmp_path)}
    res = _run(["migrate"], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "schema is up to date"


async def test_api_key_create_prints_it_once_and_stores_only_its_hash(
        database_url: str, tmp_path: Path, db: asyncpg.Connection) -> None:
    env = {"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_DATA_DIR": str(tmp_path)}
    res = _run(["api-key", "create", "billing system"], env)
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip().splitlines()[-1]
    assert is_well_formed(key)
    row = found(await db.fetchrow("SELECT name, key_hash, display_prefix FROM api_keys"))
    assert row["name"] == "billing system"
    assert bytes(row["key_hash"]) == hash_key(key)
    assert key[8:] not in row["display_prefix"]
    listing = _run(["api-key", "list"], env)
    assert "billing system" in listing.stdout and key not in listing.stdout
    key_id = await db.fetchval("SELECT id FROM api_keys")
    assert _run(["api-key", "revoke", str(key_id)], env).returncode == 0
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys") is True
    assert _run(["api-key", "revoke", str(key_id)], env).returncode == 1
    audit = await db.fetch("SELECT actor, operation FROM audit_log WHERE table_name = 'api_keys' ORDER BY id")
    assert [(r["actor"], r["operation"]) for r in audit] == [("cli", "INSERT"), ("cli", "UPDATE")]


def test_a_process_without_its_sealing_secret_stops_at_start_with_one_line(
        database_url: str, settings: Settings, tmp_path: Path) -> None:
    env = {"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_REDIS_URL": settings.redis_url or "",
           "HEARTLINE_DATA_DIR": str(tmp_path)}
    for part, variable in (("edge", "HEARTLINE_SIGNING_KEY_SECRET"), ("worker", "HEARTLINE_WEBHOOK_SECRET_KEY"),
                           ("admin", "HEARTLINE_WEBHOOK_SECRET_KEY")):
        res = _run([part], env, timeout=60)
        assert res.returncode == 2, (part, res.stderr)
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"heartline {part}: {variable} is not set: "), (part, line)
    # nothing made up in the data folder: only `heartline dev` does that
    assert not (tmp_path / "signing_key_secret").exists() and not (tmp_path / "webhook_secret_key").exists()
