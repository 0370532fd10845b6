"""Test data for load runs, written straight into PostgreSQL: one customer per run, its licenses, their
devices and a system API key.  Everything carries the run id, so a run's rows are easy to tell apart
(and its heartbeats easy to count) on a database that other runs or real data share.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg
import msgspec

from heartline.apikeys import create_api_key

# Licenses of a load run by role, told apart by their product: programs (2 per license) and refusals.
PROGRAM_PRODUCT = "loadtest"
REFUSAL_PRODUCT = "loadtest-refusals"


class SeededLicense(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    key: str
    device_limit: int
    sessions_limit: int
    interval_s: int
    status: str = "active"
    # fingerprint -> device id of the devices activated at seeding time
    devices: dict[str, int] = msgspec.field(default_factory=dict)


class Seed(msgspec.Struct, frozen=True, kw_only=True):
    """What a load run needs to know about its data; written as JSON for locust's processes."""

    run_id: str
    api_key: str
    customer_id: int
    licenses: list[SeededLicense]

    def license_ids(self) -> list[int]:
        return [lic.id for lic in self.licenses]


def new_run_id() -> str:
    return secrets.token_hex(4)


@dataclass
class LicenseSpec:
    """`count` licenses alike: limits, heartbeat interval/timeout (None: the server's defaults), status,
    and how many of their devices to activate now (fingerprints `lt-<run>-<license id>-<n>`)."""

    count: int
    device_limit: int = 3
    sessions_limit: int = 2
    interval_s: int | None = None
    timeout_s: int | None = None
    status: str = "active"
    devices: int = 0
    product: str = PROGRAM_PRODUCT


INSERT_LICENSES = """
INSERT INTO licenses (customer_id, license_key, product, status, device_limit, concurrent_sessions_limit,
                      heartbeat_interval_s, heartbeat_timeout_s, valid_until, notes)
SELECT $1, 'LT-' || $2 || '-' || lpad(n::text, 8, '0') || '-' || substr(md5(random()::text), 1, 8),
       $3, $4, $5, $6, $7, $8, now() + interval '30 days', 'load test run ' || $2
FROM generate_series($9::int, $9::int + $10::int - 1) AS n
RETURNING id, license_key
"""

INSERT_DEVICES = """
INSERT INTO device_registrations (license_id, hardware_fingerprint, device_name, device_type)
SELECT l, 'lt-' || $2 || '-' || l || '-' || d, 'load test device ' || d, 'loadtest'
FROM unnest($1::bigint[]) AS l, generate_series(1, $3::int) AS d
RETURNING id, license_id, hardware_fingerprint
"""


async def seed(conn: asyncpg.Connection, specs: list[LicenseSpec], *, run_id: str | None = None,
               default_interval_s: int = 30) -> Seed:
    """Create a customer, the licenses of `specs` (with their devices) and an API key, in one transaction."""
    run_id = run_id or new_run_id()
    licenses: list[SeededLicense] = []
    async with conn.transaction():
        customer_id = await conn.fetchval(
            "INSERT INTO customers (name, company, notes) VALUES ($1, 'Heartline load tests', $2) RETURNING id",
            f"loadtest {run_id}", "created by loadtests/seed.py")
        serial = 0
        for spec in specs:
            rows = await conn.fetch(INSERT_LICENSES, customer_id, run_id, spec.product, spec.status,
                                    spec.device_limit, spec.sessions_limit, spec.interval_s, spec.timeout_s,
                                    serial, spec.count)
            serial += spec.count
            devices: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
            if spec.devices:
                for d in await conn.fetch(INSERT_DEVICES, list(devices), run_id, spec.devices):
                    devices[d["license_id"]][d["hardware_fingerprint"]] = d["id"]
            licenses += [SeededLicense(id=r["id"], key=r["license_key"], device_limit=spec.device_limit,
                                       sessions_limit=spec.sessions_limit,
                                       interval_s=spec.interval_s or default_interval_s, status=spec.status,
                                       devices=devices[r["id"]]) for r in rows]
        api_key = await create_api_key(conn, f"loadtest {run_id}", created_by="loadtests")
    return Seed(run_id=run_id, api_key=api_key.key, customer_id=customer_id, licenses=licenses)


def dump(seed_data: Seed) -> bytes:
    return msgspec.json.encode(seed_data)


def load(raw: bytes) -> Seed:
    return msgspec.json.decode(raw, type=Seed)
