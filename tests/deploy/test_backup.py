"""Backups on real PostgreSQL: create -> change -> restore gives back exactly the data at backup time."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from shared_support import one, process_env

from heartline import backup
from heartline.backup import Archive, BackupError, BackupErrorCode, pgtools, restore
from heartline.license_cache import to_cached
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings

T0 = datetime(2026, 3, 1, 3, 0, 0, tzinfo=UTC)


def _connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT set_config('heartline.actor', 'test', false)")
    return conn


def seed(url: str, customers: int = 5) -> None:
    """Rows in every kind of table: audited ones, the partitioned heartbeats, history, CRM, migrations."""
    with _connect(url) as conn:
        for i in range(customers):
            cid = one(conn.execute("INSERT INTO customers (name, email, notes) VALUES (%s, %s, %s) RETURNING id",
                               (f"Customer {i}", f"c{i}@example.com", "quote ' and \\ backslash")))[0]
            lid = one(conn.execute(
                "INSERT INTO licenses (customer_id, license_key, device_limit, concurrent_sessions_limit, "
                "valid_until) VALUES (%s, %s, 3, 2, now() + interval '30 days') RETURNING id",
                (cid, f"HL-TEST-KEY-{i:04d}")))[0]
            did = one(conn.execute(
                "INSERT INTO device_registrations (license_id, hardware_fingerprint, device_name) "
                "VALUES (%s, %s, %s) RETURNING id", (lid, f"fp-{i}", f"Device ünïcødé {i}")))[0]
            conn.execute("SELECT ensure_heartbeat_partition(now()::date)")
            conn.execute(
                "INSERT INTO session_history (session_token, license_id, device_id, started_at, ended_at, "
                "end_reason, heartbeat_count, client_ip) VALUES (gen_random_uuid(), %s, %s, "
                "now() - interval '1 hour', now(), 'timeout', 7, '10.0.0.1')", (lid, did))
            conn.execute(
                "INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token, device_id) "
                "SELECT now() - make_interval(secs => g), %s || '-' || g, %s, gen_random_uuid(), %s "
                "FROM generate_series(1, 50) g", (f"{i}", lid, did))
        conn.execute("INSERT INTO crm_institutions (name) VALUES ('Lead Institute')")


def snapshot(url: str) -> dict[str, tuple[int, str]]:
    """Per table in public: row count and md5 of all rows' text in a fixed order."""
    with _connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()]
        result = {}
        for t in tables:
            count, digest = one(conn.execute(
                f'SELECT count(*), md5(coalesce(string_agg(x::text, E\'\\n\' ORDER BY x::text), \'\')) '
                f'FROM public."{t}" x'))
            result[t] = (count, digest)
        return result


def change_everything(url: str) -> None:
    """Inserts, updates, deletes, a new partition and a table that did not exist at backup time."""
    with _connect(url) as conn:
        conn.execute("UPDATE licenses SET status = 'suspended' WHERE id = (SELECT min(id) FROM licenses)")
        conn.execute("DELETE FROM license_heartbeats WHERE event_id LIKE '1-%'")
        conn.execute("DELETE FROM session_history WHERE license_id = (SELECT max(id) FROM licenses)")
        conn.execute("INSERT INTO customers (name) VALUES ('Added after the backup')")
        conn.execute("SELECT ensure_heartbeat_partition((now() + interval '2 months')::date)")
        conn.execute("CREATE TABLE scratch_after_backup (x int)")
        conn.execute("TRUNCATE crm_institutions CASCADE")


def test_restore_gives_back_exactly_the_data_at_backup_time(backup_settings: Settings,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = backup_settings.database_url
    assert url
    seed(url)
    before = snapshot(url)
    assert before["license_heartbeats"][0] == 250 and before["audit_log"][0] > 0
    assert backup.main(backup_settings, ["create"]) == 0
    name = backup.local_archives(backup_settings)[-1].name
    change_everything(url)
    changed = snapshot(url)
    assert changed != before and "scratch_after_backup" in changed

    assert backup.main(backup_settings, ["restore", name, "--yes"]) == 0
    assert "row counts match the backup" in capsys.readouterr().out
    assert snapshot(url) == before


def test_restored_database_keeps_working_audit_and_partitions(backup_settings: Settings) -> None:
    url = backup_settings.database_url
    assert url
    seed(url, customers=1)
    archive = backup.create_backup(backup_settings)
    change_everything(url)
    backup.restore_backup(backup_settings, archive)
    with _connect(url) as conn:
        audits = one(conn.execute("SELECT count(*) FROM audit_log"))[0]
        conn.execute("UPDATE customers SET name = 'after restore'")
        assert one(conn.execute("SELECT count(*) FROM audit_log"))[0] == audits + 1
        # sequences come back too: a new row does not collide with a restored id
        conn.execute("INSERT INTO customers (name) VALUES ('new')")
        conn.execute("SELECT ensure_heartbeat_partition((now() + interval '3 months')::date)")


def test_manifest_records_checksums_schema_version_and_row_counts(backup_settings: Settings) -> None:
    url = backup_settings.database_url
    assert url
    seed(url, customers=2)
    archive = backup.create_backup(backup_settings, now=T0)
    assert archive.path.name == "server_backup_20260301_030000.tar"
    manifest = archive.verify()
    with _connect(url) as conn:
        newest = one(conn.execute("SELECT max(name) FROM schema_migrations"))[0]
        major = int(one(conn.execute("SHOW server_version_num"))[0]) // 10000
    assert manifest.schema_version == newest
    assert manifest.server_major == major
    assert f"(PostgreSQL) {major}." in manifest.pg_dump_version
    assert manifest.tables["customers"] == 2 and manifest.tables["license_heartbeats"] == 100
    assert "license_heartbeats_" + datetime.now(UTC).strftime("%Y_%m") not in manifest.tables
    with tarfile.open(archive.path) as tar:
        names = tar.getnames()
        raw = tar.extractfile(names[0]).read()  # type: ignore[union-attr]
    assert names == ["server_backup_20260301_030000/manifest.json", "server_backup_20260301_030000/database.dump"]
    assert set(json.loads(raw)["files"]) == {"database.dump"}


def test_backup_names_are_not_reused(backup_settings: Settings) -> None:
    backup.create_backup(backup_settings, now=T0)
    with pytest.raises(BackupError) as err:
        backup.create_backup(backup_settings, now=T0)
    assert err.value.code is BackupErrorCode.EXISTS


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_archive_is_refused_and_nothing_is_touched(backup_settings: Settings,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = backup_settings.database_url
    assert url
    seed(url, customers=2)
    archive = backup.create_backup(backup_settings)
    change_everything(url)
    changed = snapshot(url)
    _truncate(archive.path, 0.6)

    assert backup.main(backup_settings, ["restore", archive.name, "--yes"]) == 1
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "BACKUP_CORRUPT" in err
    assert snapshot(url) == changed


def test_archive_with_a_changed_byte_is_refused(backup_settings: Settings) -> None:
    archive = backup.create_backup(backup_settings)
    data = bytearray(archive.path.read_bytes())
    # flip one byte inside the dump (after the manifest's and the dump's tar headers)
    data[4096] ^= 0xFF
    archive.path.write_bytes(bytes(data))
    with pytest.raises(BackupError) as err:
        backup.restore_backup(backup_settings, archive)
    assert err.value.code is BackupErrorCode.CORRUPT
    assert "checksum" in str(err.value)


def test_archive_cut_inside_the_manifest_is_refused(backup_settings: Settings) -> None:
    archive = backup.create_backup(backup_settings)
    _truncate(archive.path, 0.001)
    with pytest.raises(BackupError) as err:
        archive.manifest()
    assert err.value.code is BackupErrorCode.CORRUPT


def test_restore_refuses_without_confirmation_when_not_interactive(
        backup_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = backup_settings.database_url
    assert url
    archive = backup.create_backup(backup_settings)
    seed(url, customers=1)
    changed = snapshot(url)
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    assert backup.main(backup_settings, ["restore", archive.name]) == 1
    assert "RESTORE_NOT_CONFIRMED" in capsys.readouterr().err
    assert snapshot(url) == changed


def test_a_failing_restore_rolls_back_completely(backup_settings: Settings) -> None:
    url = backup_settings.database_url
    assert url
    seed(url, customers=2)
    archive = backup.create_backup(backup_settings)
    change_everything(url)
    changed = snapshot(url)
    # another session holds a lock on a table the restore must drop: it times out and rolls back
    with _connect(url) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE customers IN ACCESS SHARE MODE")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(restore, "RESTORE_LOCK_TIMEOUT", "1s")
            with pytest.raises(BackupError) as err:
                backup.restore_backup(backup_settings, archive)
        blocker.execute("ROLLBACK")
    assert err.value.code is BackupErrorCode.RESTORE_FAILED
    assert "rolled back" in str(err.value)
    assert snapshot(url) == changed


def test_restore_of_unknown_name_says_so(backup_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert backup.main(backup_settings, ["restore", "server_backup_20990101_000000", "--yes"]) == 1
    assert "BACKUP_NOT_FOUND" in capsys.readouterr().err
    assert backup.main(backup_settings, ["restore", "../../etc/passwd", "--yes"]) == 1
    assert "not a backup name" in capsys.readouterr().err


def test_pg_dump_is_found_for_the_servers_major_version(backup_settings: Settings) -> None:
    with _connect(backup_settings.database_url or "") as conn:
        major = int(one(conn.execute("SHOW server_version_num"))[0]) // 10000
    path = backup.find_pg_tool("pg_dump", major)
    assert pgtools._tool_major(path) == major
    with pytest.raises(BackupError) as err:
        backup.find_pg_tool("pg_dump", 9)
    assert err.value.code is BackupErrorCode.NO_PG_TOOL


def test_list_shows_local_and_remote_backups(backup_settings: Settings, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = backup_settings.replace(backup_remote=str(tmp_path / "remote"))
    first = backup.create_backup(settings, now=T0)
    second = backup.create_backup(settings, now=T0 + timedelta(days=1))
    backup.push_backup(settings, first)
    _truncate(second.path, 0.5)
    assert backup.main(settings, ["list", "--verify"]) == 0
    out = capsys.readouterr().out
    line_first = next(line for line in out.splitlines() if first.name in line)
    line_second = next(line for line in out.splitlines() if second.name in line)
    assert "local+remote" in line_first and line_first.endswith("ok")
    assert "CORRUPT" in line_second


def test_password_is_passed_in_the_environment_not_the_command_line() -> None:
    target, env = pgtools.libpq_target("postgresql://app:s%40cret@db.example:6543/heartline?sslmode=require")
    assert target == "postgresql://app@db.example:6543/heartline?sslmode=require"
    assert env["PGPASSWORD"] == "s@cret"


def test_archive_verify_rejects_a_tar_that_is_not_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "server_backup_20260101_000000.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("something/else.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(BackupError) as err:
        Archive(path).verify()
    assert err.value.code is BackupErrorCode.CORRUPT


def test_heartline_backup_command_creates_lists_and_guards_restore(backup_settings: Settings) -> None:
    env = process_env()
    env.update(HEARTLINE_DATABASE_URL=backup_settings.database_url or "",
               HEARTLINE_BACKUP_DIR=str(backup_settings.backup_dir),
               HEARTLINE_DATA_DIR=str(backup_settings.data_dir))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "heartline", "backup", *args], capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL, timeout=120, check=False)

    created = run("create")
    assert created.returncode == 0, created.stderr
    name = backup.local_archives(backup_settings)[-1].name
    assert name in created.stdout
    listed = run("list", "--verify")
    assert listed.returncode == 0 and name in listed.stdout and listed.stdout.rstrip().endswith("ok")
    refused = run("restore", name)
    assert refused.returncode == 1
    assert "RESTORE_NOT_CONFIRMED" in refused.stderr
    pushed = run("create", "--push")
    assert pushed.returncode == 1 and "HEARTLINE_BACKUP_REMOTE is not set" in pushed.stderr


def test_archive_naming_a_path_outside_is_refused(tmp_path: Path) -> None:
    name = "server_backup_20260101_000000"
    evil = b"not a dump"
    manifest = backup.Manifest(name=name, created_at="2026-01-01T00:00:00+00:00", schema_version=None,
                               server_version="15.0", server_major=15, pg_dump_version="",
                               files={"../evil": {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}},
                               tables={})
    path = tmp_path / "archives" / f"{name}.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        for member, data in ((f"{name}/manifest.json", manifest.to_json()), (f"{name}/../evil", evil)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BackupError) as err:
        Archive(path).verify(extract_to=out)
    assert err.value.code is BackupErrorCode.CORRUPT
    assert not (tmp_path / "evil").exists()



def test_restore_into_an_empty_database_rebuilds_everything(backup_settings: Settings,
                                                            empty_database_url: str) -> None:
    # disaster recovery: a new server whose database is empty gets the backup's schema and data
    url = backup_settings.database_url
    assert url
    seed(url, customers=3)
    archive = backup.create_backup(backup_settings)
    target = backup_settings.replace(database_url=empty_database_url)
    backup.restore_backup(target, archive)
    assert snapshot(empty_database_url) == snapshot(url)


async def test_restore_drops_the_planes_cached_licenses(backup_settings: Settings, redis: aioredis.Redis) -> None:
    # the cache holds a newer version than the restored row: left alone, the plane would keep serving it
    url = backup_settings.database_url
    assert url
    seed(url, customers=2)
    archive = backup.create_backup(backup_settings)
    with _connect(url) as conn:
        conn.execute("UPDATE licenses SET status = 'suspended'")
        rows = conn.execute("SELECT * FROM licenses ORDER BY id").fetchall()
        columns = [c.name for c in conn.execute("SELECT * FROM licenses LIMIT 0").description or []]
        added = conn.execute(
            "INSERT INTO licenses (customer_id, license_key) SELECT min(id), 'HL-TEST-KEY-AFTER' FROM customers "
            "RETURNING *").fetchone()
    plane = SessionPlane(redis, backup_settings)
    await plane.load_scripts()
    for row in [*rows, added]:
        cached = to_cached(dict(zip(columns, row, strict=True)), backup_settings)
        assert await plane.cache_license(cached, {})
    ids = [row[0] for row in [*rows, added]]
    assert all([(await plane.cached_license(i)) is not None for i in ids])

    await asyncio.to_thread(backup.restore_backup, backup_settings, archive)

    # both the licenses that came back and the one the restore removed are reloaded from PostgreSQL
    assert all([(await plane.cached_license(i)) is None for i in ids])
