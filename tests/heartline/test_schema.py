"""The schema of sql/: CHECK constraints, the audit trigger, heartbeat partitions."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from shared_support import found


async def test_device_limit_must_be_between_1_and_10(make_license: Callable[..., Any]) -> None:
    for bad in (0, 11, -1):
        with pytest.raises(asyncpg.CheckViolationError, match="licenses_device_limit_range"):
            await make_license(device_limit=bad, concurrent_sessions_limit=1)
    for good in (1, 10):
        row = await make_license(device_limit=good, concurrent_sessions_limit=1)
        assert row["device_limit"] == good


async def test_sessions_limit_must_not_exceed_device_limit(make_license: Callable[..., Any]) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="licenses_sessions_limit_range"):
        await make_license(device_limit=2, concurrent_sessions_limit=3)
    with pytest.raises(asyncpg.CheckViolationError, match="licenses_sessions_limit_range"):
        await make_license(device_limit=2, concurrent_sessions_limit=0)
    row = await make_license(device_limit=3, concurrent_sessions_limit=3)
    assert row["concurrent_sessions_limit"] == 3


async def test_lowering_device_limit_below_sessions_limit_is_refused(
        db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    row = await make_license(device_limit=5, concurrent_sessions_limit=4)
    with pytest.raises(asyncpg.CheckViolationError, match="licenses_sessions_limit_range"):
        await db.execute("UPDATE licenses SET device_limit = 3 WHERE id = $1", row["id"])


async def test_heartbeat_timeout_must_exceed_interval(make_license: Callable[..., Any]) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="licenses_timeout_exceeds_interval"):
        await make_license(heartbeat_interval_s=30, heartbeat_timeout_s=30)
    # an interval override alone must still stay under the default timeout of 60 s
    with pytest.raises(asyncpg.CheckViolationError, match="licenses_timeout_exceeds_interval"):
        await make_license(heartbeat_interval_s=90)
    row = await make_license(heartbeat_interval_s=2, heartbeat_timeout_s=5)
    assert (row["heartbeat_interval_s"], row["heartbeat_timeout_s"]) == (2, 5)


async def test_license_status_and_key_are_checked(make_license: Callable[..., Any]) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await make_license(status="paused")
    await make_license(license_key="HL-SAME-KEY-0001")
    with pytest.raises(asyncpg.UniqueViolationError):
        await make_license(license_key="HL-SAME-KEY-0001")


async def test_fingerprint_is_unique_per_license(db: asyncpg.Connection,
                                                 make_license: Callable[..., Any]) -> None:
    a, b = await make_license(), await make_license()
    insert = "INSERT INTO device_registrations (license_id, hardware_fingerprint) VALUES ($1, $2)"
    await db.execute(insert, a["id"], "fp-1")
    await db.execute(insert, b["id"], "fp-1")  # another license may use the same machine
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, a["id"], "fp-1")


async def test_session_history_refuses_unknown_end_reason(db: asyncpg.Connection,
                                                          make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO session_history (session_token, license_id, started_at, ended_at, end_reason)"
            " VALUES (gen_random_uuid(), $1, now(), now(), 'bored')", lic["id"])


async def test_resource_and_crm_checks(db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    with pytest.raises(asyncpg.CheckViolationError, match="resource_pools_allocation_consistent"):
        await db.execute("INSERT INTO resource_pools (resource_type, value, status) "
                         "VALUES ('domain', 'a.example', 'allocated')")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO resource_pools (resource_type, value) VALUES ('fax', '1')")
    await db.execute("INSERT INTO resource_pools (resource_type, value, status, license_id) "
                     "VALUES ('domain', 'a.example', 'allocated', $1)", lic["id"])
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO resource_pools (resource_type, value) VALUES ('domain', 'a.example')")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO crm_institutions (name, stage) VALUES ('Uni', 'dreaming')")
    inst = await db.fetchval("INSERT INTO crm_institutions (name) VALUES ('Uni') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError, match="crm_activities_due_only_for_tasks"):
        await db.execute("INSERT INTO crm_activities (institution_id, kind, subject, due_at) "
                         "VALUES ($1, 'call', 'hello', now())", inst)


async def test_audit_trigger_records_insert_update_delete_with_actor(db: asyncpg.Connection) -> None:
    async with db.transaction():
        await db.execute("SELECT set_config('heartline.actor', 'admin:alice', true)")
        cid = await db.fetchval("INSERT INTO customers (name) VALUES ('Old name') RETURNING id")
    async with db.transaction():
        await db.execute("SELECT set_config('heartline.actor', 'admin:bob', true)")
        await db.execute("UPDATE customers SET name = 'New name' WHERE id = $1", cid)
    await db.execute("DELETE FROM customers WHERE id = $1", cid)  # connection-level actor: 'test'
    rows = await db.fetch("SELECT actor, operation, row_id, old_values, new_values FROM audit_log "
                          "WHERE table_name = 'customers' ORDER BY id")
    assert [(r["actor"], r["operation"], r["row_id"]) for r in rows] == [
        ("admin:alice", "INSERT", str(cid)), ("admin:bob", "UPDATE", str(cid)), ("test", "DELETE", str(cid))]
    changes: list[tuple[Any, Any]] = [
        (json.loads(r["old_values"]) if r["old_values"] else None,
         json.loads(r["new_values"]) if r["new_values"] else None) for r in rows]
    ins, upd, dele = changes
    assert ins[0] is None and ins[1]["name"] == "Old name"
    assert upd[0]["name"] == "Old name" and upd[1]["name"] == "New name"
    assert dele[0]["name"] == "New name" and dele[1] is None


async def test_audit_skips_updates_that_only_touch_ignored_columns(
        db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    dev = await db.fetchval("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                            "VALUES ($1, 'fp') RETURNING id", lic["id"])
    before = await db.fetchval("SELECT count(*) FROM audit_log WHERE table_name = 'device_registrations'")
    await db.execute("UPDATE device_registrations SET last_seen_at = now() WHERE id = $1", dev)
    assert await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE table_name = 'device_registrations'") == before
    await db.execute("UPDATE device_registrations SET device_name = 'laptop' WHERE id = $1", dev)
    assert await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE table_name = 'device_registrations'") == before + 1


async def test_device_audit_trigger_names_every_column_but_last_seen_at(db: asyncpg.Connection) -> None:
    # sql/0014: the audit trigger fires only for UPDATEs naming one of its columns, so a column added to
    # device_registrations without being added there would change unaudited.
    columns = {r["attname"] for r in await db.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'device_registrations'::regclass "
        "AND attnum > 0 AND NOT attisdropped")}
    watched = {r["attname"] for r in await db.fetch(
        "SELECT a.attname FROM pg_trigger t JOIN pg_attribute a "
        "ON a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[]) "
        "WHERE t.tgname = 'device_registrations_audit'")}
    assert watched == columns - {"last_seen_at"}


async def test_device_triggers_skip_last_seen_updates_and_keep_the_others(
        db: asyncpg.Connection, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    dev = await db.fetchval("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                            "VALUES ($1, 'fp') RETURNING id", lic["id"])

    async def counts() -> tuple[int, int, int]:
        row = found(await db.fetchrow(
            "SELECT (SELECT count(*) FROM audit_log WHERE table_name = 'device_registrations') AS a, "
            "(SELECT count(*) FROM webhook_outbox WHERE event_type LIKE 'device.%') AS w, "
            "(SELECT count(*) FROM device_changes) AS c"))
        return row["a"], row["w"], row["c"]

    before = await counts()
    await db.execute("UPDATE device_registrations SET last_seen_at = now() WHERE id = $1", dev)
    assert await counts() == before
    # an activation-like UPDATE naming last_seen_at among others is still audited; a deactivation
    # still makes its webhook event and its device change
    await db.execute("UPDATE device_registrations SET last_seen_at = now(), is_active = false, "
                     "deactivated_at = now() WHERE id = $1", dev)
    assert await counts() == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_license_version_moves_on_every_change(db: asyncpg.Connection,
                                                     make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    assert await db.fetchval("SELECT version FROM licenses WHERE id = $1", lic["id"]) == lic["version"] + 1


async def test_heartbeat_rows_route_to_their_monthly_partition(db: asyncpg.Connection,
                                                               make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    for month in ("2026-01-01", "2026-02-01", "2025-12-01"):
        await db.execute("SELECT ensure_heartbeat_partition($1::date)", dt.date.fromisoformat(month))
    # idempotent
    assert await db.fetchval("SELECT ensure_heartbeat_partition('2026-01-15')") == "license_heartbeats_2026_01"
    stamps = [dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
              dt.datetime(2025, 12, 31, 12, tzinfo=dt.UTC)]
    for i, at in enumerate(stamps):
        await db.execute("INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token) "
                         "VALUES ($1, $2, $3, gen_random_uuid())", at, f"0-{i}", lic["id"])
    rows = await db.fetch("SELECT tableoid::regclass::text AS part, received_at FROM license_heartbeats "
                          "ORDER BY received_at")
    assert [r["part"] for r in rows] == [
        "license_heartbeats_2025_12", "license_heartbeats_2026_01", "license_heartbeats_2026_02"]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token) "
                         "VALUES ($1, '0-0', $2, gen_random_uuid())", stamps[0], lic["id"])
    with pytest.raises(asyncpg.PostgresError,
                       match="no partition"):
        await db.execute("INSERT INTO license_heartbeats (received_at, event_id, license_id, session_token) "
                         "VALUES ('2030-06-01', 'x', $1, gen_random_uuid())", lic["id"])
