"""Demo data for `heartline dev`: one customer, one license and one API key, created once."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from heartline.apikeys import create_api_key
from heartline.license_keys import new_license_key

DEMO_CUSTOMER = "Demo Customer"


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
        await conn.execute(
            "INSERT INTO licenses (customer_id, license_key, product, device_limit, concurrent_sessions_limit,"
            " valid_until, quota_domains, quota_ipv4, quota_phones)"
            " VALUES ($1, $2, 'demo', 3, 2, now() + interval '365 days', 2, 2, 2)",
            customer_id, license_key)
        key = await create_api_key(conn, "demo", created_by="heartline dev")
        return DemoData(created=True, license_key=license_key, api_key=key.key)
