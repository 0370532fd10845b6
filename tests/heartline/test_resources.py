"""Resource pools on real PostgreSQL: validation, bulk import, allocation under concurrency, quarantine
by an injected clock, history and the edge's read."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from heartline import resources
from heartline.resources import (
    ImportOutcome,
    InvalidResource,
    PoolExhausted,
    QuotaExceeded,
    ResourceNotAllocated,
    ResourceStatus,
    ResourceType,
)
from heartline.settings import Settings

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ADMIN = "admin:alice"


@pytest.fixture
def pg(db: asyncpg.Connection, database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection (what the admin uses), on tables the `db` fixture emptied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _ipv4_pool(n: int) -> str:
    return "\n".join(f"8.8.4.{i}" for i in range(1, n + 1))


def _statuses(pg: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(pg.execute("SELECT value, status FROM resource_pools").fetchall())


# --- validation -----------------------------------------------------------------------------------------

def test_domains_are_stored_as_idna_a_labels() -> None:
    assert resources.normalize_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert resources.normalize_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    for bad in ("foo_bar.com", "-bad.com", "a..b", "localhost", "1.2.3.4", "https://x.com", "a" * 64 + ".com"):
        with pytest.raises(InvalidResource):
            resources.normalize_domain(bad)


def test_private_and_special_ipv4_are_refused_unless_allowed() -> None:
    assert resources.normalize_ipv4(" 8.8.8.8 ") == "8.8.8.8"
    with pytest.raises(InvalidResource, match="private"):
        resources.normalize_ipv4("10.1.2.3")
    assert resources.normalize_ipv4("10.1.2.3", allow_private=True) == "10.1.2.3"
    for never in ("0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "240.0.0.1", "255.255.255.255"):
        with pytest.raises(InvalidResource):
            resources.normalize_ipv4(never, allow_private=True)
    with pytest.raises(InvalidResource, match="Leading zeros"):
        resources.normalize_ipv4("08.8.8.8")


def test_phone_numbers_are_normalised_to_e164() -> None:
    assert resources.normalize_phone("+49 30 1234567") == "+49301234567"
    assert resources.normalize_phone("+1 (202) 555-0143") == "+12025550143"
    with pytest.raises(InvalidResource, match="international form"):
        resources.normalize_phone("030 1234567")
    with pytest.raises(InvalidResource):
        resources.normalize_phone("+49 1")


# --- import ---------------------------------------------------------------------------------------------

def test_import_of_mixed_file_reports_each_bad_line_and_adds_only_good_ones(
        pg: psycopg.Connection[Any], settings: Settings) -> None:
    resources.import_resources(pg, "domain", "already.example\n", actor=ADMIN, settings=settings)
    csv_file = (
        "value,notes\n"                 # 1 header
        "good-one.example,first\n"      # 2 added
        "Bücher.example\n"              # 3 added as xn--bcher-kva.example
        "\n"                            # 4 blank
        "# a comment\n"                 # 5 comment
        "bad_name.example\n"            # 6 refused
        "GOOD-ONE.example.\n"           # 7 duplicate of line 2
        "already.example\n"             # 8 duplicate of the pool
        "not a domain\n"                # 9 refused
        "10.0.0.1\n"                    # 10 refused (numeric tld)
        "xn--bcher-kva.example\n"       # 11 duplicate of line 3
    )
    report = resources.import_resources(pg, ResourceType.DOMAIN, csv_file, actor=ADMIN, settings=settings)

    by_line = {line.line_no: line for line in report.lines}
    assert sorted(by_line) == [2, 3, 6, 7, 8, 9, 10, 11]
    assert by_line[2].outcome is ImportOutcome.ADDED and by_line[2].value == "good-one.example"
    assert by_line[3].outcome is ImportOutcome.ADDED and by_line[3].value == "xn--bcher-kva.example"
    assert by_line[6].outcome is ImportOutcome.REFUSED and "U+005F" in (by_line[6].reason or "")
    assert by_line[7].outcome is ImportOutcome.DUPLICATE and by_line[7].reason == "repeats line 2"
    assert by_line[8].outcome is ImportOutcome.DUPLICATE and by_line[8].reason == "already in the pool"
    assert by_line[9].outcome is ImportOutcome.REFUSED and "not a valid IDNA host name" in (by_line[9].reason or "")
    assert by_line[10].outcome is ImportOutcome.REFUSED and "numeric" in (by_line[10].reason or "")
    assert by_line[11].outcome is ImportOutcome.DUPLICATE and by_line[11].reason == "repeats line 3"
    assert (report.added, report.duplicates, report.refused) == (2, 3, 3)
    assert _statuses(pg) == {"already.example": "available", "good-one.example": "available",
                             "xn--bcher-kva.example": "available"}
    actors = pg.execute("SELECT DISTINCT actor FROM audit_log WHERE table_name = 'resource_pools'").fetchall()
    assert actors == [(ADMIN,)]


def test_import_honours_the_private_ipv4_setting(pg: psycopg.Connection[Any], settings: Settings) -> None:
    text = "8.8.8.8\n192.168.1.10\n"
    strict = resources.import_resources(pg, "ipv4", text, actor=ADMIN, settings=settings)
    assert [line.outcome for line in strict.lines] == [ImportOutcome.ADDED, ImportOutcome.REFUSED]
    assert "private" in (strict.lines[1].reason or "")
    lenient = resources.import_resources(pg, "ipv4", text, actor=ADMIN,
                                         settings=settings.replace(resource_allow_private_ipv4=True))
    assert [line.outcome for line in lenient.lines] == [ImportOutcome.DUPLICATE, ImportOutcome.ADDED]


def test_dry_run_import_reports_without_adding(pg: psycopg.Connection[Any], settings: Settings) -> None:
    report = resources.import_resources(pg, "phone", "+49 30 1234567\n12345\n", actor=ADMIN,
                                        settings=settings, dry_run=True)
    assert [line.outcome for line in report.lines] == [ImportOutcome.ADDED, ImportOutcome.REFUSED]
    assert report.dry_run
    assert _statuses(pg) == {}


def test_import_is_all_or_nothing_when_the_database_fails(
        pg: psycopg.Connection[Any], settings: Settings) -> None:
    # A real database error on the third value: the first two must not stay behind.
    pg.execute("CREATE FUNCTION test_refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF NEW.value = 'boom.example' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$")
    pg.execute("CREATE TRIGGER test_refuse_boom BEFORE INSERT ON resource_pools"
               " FOR EACH ROW EXECUTE FUNCTION test_refuse_boom()")
    try:
        with pytest.raises(psycopg.errors.RaiseException, match="boom"):
            resources.import_resources(pg, "domain", "a.example\nb.example\nboom.example\n",
                                       actor=ADMIN, settings=settings)
    finally:
        pg.execute("DROP TRIGGER test_refuse_boom ON resource_pools")
        pg.execute("DROP FUNCTION test_refuse_boom()")
    assert _statuses(pg) == {}


# --- allocation -----------------------------------------------------------------------------------------

async def _licenses(make_license: Callable[..., Any], n: int, **quotas: int) -> list[int]:
    return [int((await make_license(**quotas))["id"]) for _ in range(n)]


async def test_twenty_concurrent_allocations_from_a_pool_of_ten_give_ten_distinct_and_ten_refusals(
        pg: psycopg.Connection[Any], settings: Settings, database_url: str,
        make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", _ipv4_pool(10), actor=ADMIN, settings=settings)
    license_ids = await _licenses(make_license, 20, quota_ipv4=1)
    barrier = threading.Barrier(len(license_ids))
    got: dict[int, list[resources.Allocation]] = {}
    refused: dict[int, Exception] = {}

    def allocate(license_id: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            try:
                got[license_id] = resources.allocate(conn, license_id, "ipv4", 1, actor=f"admin:u{license_id}")
            except resources.ResourceError as exc:  # collected and asserted below
                refused[license_id] = exc

    threads = [threading.Thread(target=allocate, args=(lid,)) for lid in license_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(got) == 10 and len(refused) == 10
    assert all(isinstance(exc, PoolExhausted) and exc.code == "RESOURCE_POOL_EXHAUSTED"
               for exc in refused.values())
    values = [allocs[0].value for allocs in got.values()]
    assert len(set(values)) == 10
    rows = pg.execute("SELECT license_id, value FROM resource_pools WHERE status = 'allocated'").fetchall()
    assert dict(rows) == {lid: allocs[0].value for lid, allocs in got.items()}
    open_rows = pg.execute("SELECT count(*) FROM resource_allocations WHERE released_at IS NULL").fetchone()
    assert open_rows == (10,)


async def test_concurrent_allocations_for_one_license_never_exceed_its_quota(
        pg: psycopg.Connection[Any], settings: Settings, database_url: str,
        make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", _ipv4_pool(10), actor=ADMIN, settings=settings)
    (license_id,) = await _licenses(make_license, 1, quota_ipv4=2)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def allocate() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            try:
                resources.allocate(conn, license_id, "ipv4", 1, actor=ADMIN)
                outcomes.append("ok")
            except QuotaExceeded as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["RESOURCE_QUOTA_EXCEEDED"] * 4 + ["ok"] * 2
    held = pg.execute("SELECT count(*) FROM resource_pools WHERE license_id = %s", (license_id,)).fetchone()
    assert held == (2,)


async def test_allocation_skips_rows_another_admin_has_locked_instead_of_waiting(
        pg: psycopg.Connection[Any], settings: Settings, database_url: str,
        make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", _ipv4_pool(2), actor=ADMIN, settings=settings)
    first, second = await _licenses(make_license, 2, quota_ipv4=1)
    with psycopg.connect(database_url) as other:  # not autocommit: its transaction stays open
        held = resources.allocate(other, first, "ipv4", 1, actor="admin:bob")
        pg.execute("SET lock_timeout = '2s'")  # would fail loudly if allocation waited for the lock
        mine = resources.allocate(pg, second, "ipv4", 1, actor=ADMIN)
        other.commit()
    assert held[0].value != mine[0].value


async def test_over_quota_allocation_is_refused_with_a_clear_message(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "domain", "a.example\nb.example\nc.example", actor=ADMIN, settings=settings)
    (license_id,) = await _licenses(make_license, 1, quota_domains=2)
    resources.allocate(pg, license_id, "domain", 1, actor=ADMIN)
    with pytest.raises(QuotaExceeded) as refused:
        resources.allocate(pg, license_id, "domain", 2, actor=ADMIN)
    assert refused.value.message == (
        f"License {license_id} may hold 2 domains and holds 1: allocating 2 more would exceed its quota")
    assert refused.value.status == 409
    # all or nothing: nothing of the refused request was taken
    usage = {u.resource_type: (u.held, u.quota) for u in resources.quota_usage(pg, license_id)}
    assert usage[ResourceType.DOMAIN] == (1, 2)


async def test_release_quarantines_until_the_configured_days_have_passed(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    settings = settings.replace(resource_quarantine_days=30)
    resources.import_resources(pg, "phone", "+49 30 1234567", actor=ADMIN, settings=settings)
    first, second = await _licenses(make_license, 2, quota_phones=1)
    (alloc,) = resources.allocate(pg, first, "phone", actor=ADMIN, now=T0)
    released_at = T0 + dt.timedelta(days=2)
    resources.release(pg, first, [alloc.resource_id], actor="admin:bob", settings=settings, now=released_at)
    assert _statuses(pg) == {"+49301234567": ResourceStatus.QUARANTINED}

    one_day_early = released_at + dt.timedelta(days=29)
    with pytest.raises(PoolExhausted):
        resources.allocate(pg, second, "phone", actor=ADMIN, now=one_day_early)
    assert resources.release_quarantined(pg, actor="worker", now=one_day_early) == 0
    stats = {s.resource_type: s for s in resources.pool_stats(pg, settings=settings, now=one_day_early)}
    assert (stats[ResourceType.PHONE].free, stats[ResourceType.PHONE].quarantined) == (0, 1)

    due = released_at + dt.timedelta(days=30)
    stats = {s.resource_type: s for s in resources.pool_stats(pg, settings=settings, now=due)}
    assert (stats[ResourceType.PHONE].free, stats[ResourceType.PHONE].quarantined) == (1, 0)
    assert resources.release_quarantined(pg, actor="worker", now=due) == 1
    assert _statuses(pg) == {"+49301234567": ResourceStatus.AVAILABLE}
    (again,) = resources.allocate(pg, second, "phone", actor=ADMIN, now=due)
    assert again.resource_id == alloc.resource_id

    history = resources.allocation_history(pg, resource_id=alloc.resource_id)
    assert [(h["license_id"], h["allocated_at"], h["released_at"], h["allocated_by"], h["released_by"])
            for h in history] == [(second, due, None, ADMIN, None),
                                  (first, T0, released_at, ADMIN, "admin:bob")]


async def test_allocation_takes_an_expired_quarantine_without_waiting_for_the_sweep(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    settings = settings.replace(resource_quarantine_days=1)
    resources.import_resources(pg, "ipv4", "8.8.4.4", actor=ADMIN, settings=settings)
    first, second = await _licenses(make_license, 2, quota_ipv4=1)
    (alloc,) = resources.allocate(pg, first, "ipv4", actor=ADMIN, now=T0)
    resources.release(pg, first, [alloc.resource_id], actor=ADMIN, settings=settings, now=T0)
    (again,) = resources.allocate(pg, second, "ipv4", actor=ADMIN, now=T0 + dt.timedelta(days=1))
    assert again.resource_id == alloc.resource_id
    row = pg.execute("SELECT status, license_id, quarantined_until FROM resource_pools").fetchone()
    assert row == ("allocated", second, None)


async def test_releasing_a_resource_the_license_does_not_hold_is_refused(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", _ipv4_pool(2), actor=ADMIN, settings=settings)
    first, second = await _licenses(make_license, 2, quota_ipv4=1)
    (mine,) = resources.allocate(pg, first, "ipv4", actor=ADMIN)
    (theirs,) = resources.allocate(pg, second, "ipv4", actor=ADMIN)
    with pytest.raises(ResourceNotAllocated, match=str(theirs.resource_id)):
        resources.release(pg, first, [mine.resource_id, theirs.resource_id], actor=ADMIN, settings=settings)
    assert _statuses(pg) == {mine.value: "allocated", theirs.value: "allocated"}


async def test_pool_stats_warn_when_free_resources_run_low(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    settings = settings.replace(resource_low_watermark=3)
    resources.import_resources(pg, "ipv4", _ipv4_pool(4), actor=ADMIN, settings=settings)
    resources.import_resources(pg, "domain", "a.example\nb.example\nc.example\nd.example",
                               actor=ADMIN, settings=settings)
    (license_id,) = await _licenses(make_license, 1, quota_ipv4=2)
    allocs = resources.allocate(pg, license_id, "ipv4", 2, actor=ADMIN)
    resources.release(pg, license_id, [allocs[0].resource_id], actor=ADMIN, settings=settings)
    stats = {s.resource_type: s for s in resources.pool_stats(pg, settings=settings)}
    assert (stats[ResourceType.IPV4].free, stats[ResourceType.IPV4].allocated,
            stats[ResourceType.IPV4].quarantined, stats[ResourceType.IPV4].low) == (2, 1, 1, True)
    assert (stats[ResourceType.DOMAIN].free, stats[ResourceType.DOMAIN].low) == (4, False)
    # a pool never stocked is not running low: there is none
    assert (stats[ResourceType.PHONE].total, stats[ResourceType.PHONE].low) == (0, False)


async def test_retired_resources_are_never_allocated(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", "8.8.4.4", actor=ADMIN, settings=settings)
    (license_id,) = await _licenses(make_license, 1, quota_ipv4=1)
    (resource_id,) = pg.execute("SELECT id FROM resource_pools").fetchone() or (0,)
    assert resources.retire(pg, [resource_id], actor=ADMIN) == 1
    with pytest.raises(PoolExhausted):
        resources.allocate(pg, license_id, "ipv4", actor=ADMIN)
    assert resources.reinstate(pg, [resource_id], actor=ADMIN) == 1
    assert resources.allocate(pg, license_id, "ipv4", actor=ADMIN)[0].resource_id == resource_id


async def test_license_resources_lists_what_a_license_holds_for_the_edge(
        db: asyncpg.Connection, pg: psycopg.Connection[Any], settings: Settings,
        make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "ipv4", _ipv4_pool(3), actor=ADMIN, settings=settings)
    resources.import_resources(pg, "phone", "+49 30 1234567", actor=ADMIN, settings=settings)
    holder, other = await _licenses(make_license, 2, quota_ipv4=2, quota_phones=1)
    resources.allocate(pg, holder, "ipv4", 2, actor=ADMIN)
    resources.allocate(pg, holder, "phone", actor=ADMIN)
    resources.allocate(pg, other, "ipv4", actor=ADMIN)
    assert await resources.license_resources(db, holder) == {
        "domains": [], "ipv4": ["8.8.4.1", "8.8.4.2"], "phones": ["+49301234567"]}
    assert await resources.license_resources(db, 999_999) == {"domains": [], "ipv4": [], "phones": []}


async def test_allocation_for_a_missing_license_is_a_404_error(pg: psycopg.Connection[Any]) -> None:
    with pytest.raises(resources.LicenseNotFound) as refused:
        resources.allocate(pg, 424242, "ipv4", actor=ADMIN)
    assert (refused.value.code, refused.value.status) == ("LICENSE_NOT_FOUND", 404)


async def test_a_license_holding_resources_is_deleted_only_after_releasing_them(
        pg: psycopg.Connection[Any], settings: Settings, make_license: Callable[..., Any]) -> None:
    resources.import_resources(pg, "domain", "a.example\nb.example", actor=ADMIN, settings=settings)
    (license_id,) = await _licenses(make_license, 1, quota_domains=2)
    resources.allocate(pg, license_id, "domain", 2, actor=ADMIN, now=T0)
    # ON DELETE SET NULL would leave an 'allocated' row without a license: the CHECK refuses the delete.
    with pytest.raises(psycopg.errors.CheckViolation, match="resource_pools_allocation_consistent"):
        pg.execute("DELETE FROM licenses WHERE id = %s", (license_id,))
    released = resources.release_license_resources(pg, license_id, actor=ADMIN, settings=settings, now=T0)
    assert sorted(r.value for r in released) == ["a.example", "b.example"]
    pg.execute("DELETE FROM licenses WHERE id = %s", (license_id,))
    assert _statuses(pg) == {"a.example": "quarantined", "b.example": "quarantined"}
