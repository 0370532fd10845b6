"""Demo data for `heartline dev`, created once: one customer, one license and one API key, a few pooled
domains / IPv4 addresses / phone numbers (some allocated to the demo license), and a CRM institution with a
contact, an activity and an open task — so every example in the README and docs answers something.

The pooled values come from ranges reserved for documentation: example.org names, 203.0.113.0/24
(TEST-NET-3, RFC 5737) and +44 20 7946 0xxx (Ofcom's numbers for drama)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from heartline.apikeys import create_api_key
from heartline.license_keys import new_license_key

DEMO_CUSTOMER = "Demo Customer"
DEMO_INSTITUTION = "Demo University"
DEMO_ADMIN = "admin"
# Per type: the values stocked and how many of them go to the demo license (its quota is one more, so an
# admin can try an allocation).  Enough stay free that no pool starts below the low watermark (10).
POOL_SIZE = 12
ALLOCATED = 2
DEMO_POOLS = {
    "domain": [f"demo-{n}.example.org" for n in range(1, POOL_SIZE + 1)],
    "ipv4": [f"203.0.113.{n}" for n in range(10, 10 + POOL_SIZE)],
    "phone": [f"+44207946{n:04d}" for n in range(100, 100 + POOL_SIZE)],
}


@dataclass(frozen=True)
class DemoData:
    created: bool
    license_key: str
    api_key: str | None  # only when created now: keys are shown once


async def ensure_demo_data(conn: asyncpg.Connection) -> DemoData:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        existing = await conn.fetchval(
            "SELECT l.license_key FROM licenses l JOIN customers c ON c.id = l.customer_id "
            "WHERE c.name = $1 ORDER BY l.id LIMIT 1", DEMO_CUSTOMER)
        if existing:
            return DemoData(created=False, license_key=existing, api_key=None)
        customer_id = await conn.fetchval(
            "INSERT INTO customers (name, email, company) VALUES ($1, 'demo@example.com', 'Demo GmbH') "
            "RETURNING id", DEMO_CUSTOMER)
        license_key = new_license_key()
        license_id = await conn.fetchval(
            "INSERT INTO licenses (customer_id, license_key, product, device_limit, concurrent_sessions_limit,"
            " valid_until, quota_domains, quota_ipv4, quota_phones)"
            " VALUES ($1, $2, 'demo', 3, 2, now() + interval '365 days', $3, $3, $3) RETURNING id",
            customer_id, license_key, ALLOCATED + 1)
        await _stock_pools(conn, license_id)
        await _crm(conn, customer_id)
        key = await create_api_key(conn, "demo", created_by="heartline dev")
        return DemoData(created=True, license_key=license_key, api_key=key.key)


async def _stock_pools(conn: asyncpg.Connection, license_id: int) -> None:
    """Stock each pool (values already there are kept) and allocate the first ones to the demo license,
    with their allocation history, as `heartline.resources.allocate` records it."""
    for kind, values in DEMO_POOLS.items():
        await conn.executemany(
            "INSERT INTO resource_pools (resource_type, value, notes) VALUES ($1, $2, 'demo data')"
            " ON CONFLICT (resource_type, value) DO NOTHING", [(kind, value) for value in values])
        ids = await conn.fetch(
            "UPDATE resource_pools SET status = 'allocated', license_id = $1, allocated_at = now()"
            " WHERE id IN (SELECT id FROM resource_pools WHERE resource_type = $2 AND status = 'available'"
            "              AND value = ANY($3::text[]) ORDER BY id LIMIT $4) RETURNING id",
            license_id, kind, values, ALLOCATED)
        await conn.executemany(
            "INSERT INTO resource_allocations (resource_id, license_id, allocated_by) VALUES ($1, $2, $3)",
            [(row["id"], license_id, "heartline dev") for row in ids])


async def _crm(conn: asyncpg.Connection, customer_id: int) -> None:
    """A won institution (converted into the demo customer) with a contact, a call and an open task."""
    institution_id = await conn.fetchval(
        "INSERT INTO crm_institutions (name, kind, city, country, website, stage, owner, customer_id, notes)"
        " VALUES ($1, 'university', 'Berlin', 'DE', 'https://www.example.org', 'won', $2, $3,"
        " 'Demo data made by heartline dev') RETURNING id", DEMO_INSTITUTION, DEMO_ADMIN, customer_id)
    contact_id = await conn.fetchval(
        "INSERT INTO crm_contacts (institution_id, name, email, phone, role)"
        " VALUES ($1, 'Dana Demo', 'dana@example.org', '+442079460000', 'IT lead') RETURNING id", institution_id)
    await conn.execute(
        "INSERT INTO crm_activities (institution_id, contact_id, kind, subject, body, occurred_at, owner)"
        " VALUES ($1, $2, 'call', 'Kick-off call', 'Three seats for the lab; trial license sent.',"
        " now() - interval '2 days', $3)", institution_id, contact_id, DEMO_ADMIN)
    await conn.execute(
        "INSERT INTO crm_activities (institution_id, contact_id, kind, subject, due_at, owner)"
        " VALUES ($1, $2, 'task', 'Ask how the trial went', now() + interval '7 days', $3)",
        institution_id, contact_id, DEMO_ADMIN)
