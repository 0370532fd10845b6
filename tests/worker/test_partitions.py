"""Heartbeat partitions: created ahead, retired after retention, across month and year boundaries.

The dates are years in the past, so the partitions other tests write into are never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest

from worker.partitions import add_months, maintain_partitions

LIST = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'license_heartbeats'::regclass AND c.relname < 'license_heartbeats_2021' "
        "ORDER BY 1")


@pytest.fixture
async def old_partitions(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """Partitions for 2017-10 .. 2018-12 with a row each; all partitions before 2021 dropped afterwards."""
    for month in range(15):
        first = add_months(date(2017, 10, 1), month)
        await db.execute("SELECT ensure_heartbeat_partition($1)", first)
        await db.execute("INSERT INTO license_heartbeats VALUES ($1, $2, 1, gen_random_uuid(), NULL)",
                         first, f"0-{first}")
    yield db
    for r in await db.fetch(LIST):
        await db.execute(f'DROP TABLE "{r["relname"]}"')


async def names(db: asyncpg.Connection) -> list[str]:
    return [r["relname"].removeprefix("license_heartbeats_") for r in await db.fetch(LIST)]


def test_add_months_crosses_year_boundaries_both_ways() -> None:
    assert add_months(date(2019, 11, 30), 2) == date(2020, 1, 1)
    assert add_months(date(2020, 1, 31), -1) == date(2019, 12, 1)
    assert add_months(date(2019, 12, 1), -24) == date(2017, 12, 1)


async def test_creates_months_ahead_and_retires_expired_across_a_month_boundary(
        old_partitions: asyncpg.Connection) -> None:
    db = old_partitions
    changes = await maintain_partitions(db, today=date(2018, 12, 31), ahead_months=2, retention_months=12)
    assert changes.created == ["license_heartbeats_2019_01", "license_heartbeats_2019_02"]
    # 2018-12 minus 12 months = 2017-12: months that ended before it go
    assert changes.dropped == ["license_heartbeats_2017_10", "license_heartbeats_2017_11"]

    changes = await maintain_partitions(db, today=date(2019, 1, 1), ahead_months=2, retention_months=12)
    assert changes.created == ["license_heartbeats_2019_03"]
    assert changes.dropped == ["license_heartbeats_2017_12"]
    assert await names(db) == [f"2018_{m:02}" for m in range(1, 13)] + ["2019_01", "2019_02", "2019_03"]
    # the rows of retained months are untouched
    assert await db.fetchval("SELECT count(*) FROM license_heartbeats WHERE received_at < '2019-01-01'") == 12


async def test_year_boundary_and_repeated_runs_change_nothing_more(
        old_partitions: asyncpg.Connection) -> None:
    db = old_partitions
    await maintain_partitions(db, today=date(2019, 12, 31), ahead_months=2, retention_months=12)
    after_first = await names(db)
    changes = await maintain_partitions(db, today=date(2019, 12, 31), ahead_months=2, retention_months=12)
    assert (changes.created, changes.dropped) == ([], [])
    assert await names(db) == after_first
    assert after_first[-3:] == ["2019_12", "2020_01", "2020_02"]
    assert after_first[0] == "2018_12"   # 2019-12 minus 12 months: 2018-12 stays, 2018-11 went

    changes = await maintain_partitions(db, today=date(2020, 1, 1), ahead_months=2, retention_months=12)
    assert changes.created == ["license_heartbeats_2020_03"]
    assert changes.dropped == ["license_heartbeats_2018_12"]


async def test_no_default_partition_exists(db: asyncpg.Connection) -> None:
    await maintain_partitions(db, today=date(2019, 6, 15), ahead_months=2, retention_months=12)
    bounds = await db.fetch("SELECT pg_get_expr(c.relpartbound, c.oid) AS b FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = 'license_heartbeats'::regclass")
    assert bounds and all(r["b"] != "DEFAULT" for r in bounds)
    for r in await db.fetch(LIST):
        await db.execute(f'DROP TABLE "{r["relname"]}"')


async def test_workers_maintaining_at_once_create_and_drop_each_partition_once(
        old_partitions: asyncpg.Connection, database_url: str) -> None:
    others = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(maintain_partitions(c, today=date(2018, 12, 31), ahead_months=2,
                                                             retention_months=12) for c in others))
    finally:
        for conn in others:
            await conn.close()
    assert sorted(n for r in results for n in r.created) == ["license_heartbeats_2019_01",
                                                             "license_heartbeats_2019_02"]
    assert sorted(n for r in results for n in r.dropped) == ["license_heartbeats_2017_10",
                                                             "license_heartbeats_2017_11"]
