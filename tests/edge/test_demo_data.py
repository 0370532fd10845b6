"""The demo data `heartline dev` seeds: every README/docs example answers something with it."""

from __future__ import annotations

import asyncpg
import httpx
import psycopg
from shared_support import found

from heartline import resources
from heartline.demo import DEMO_INSTITUTION, ensure_demo_data
from heartline.settings import Settings


async def test_demo_data_answers_the_documented_calls(db: asyncpg.Connection, settings: Settings,
                                                      app: object) -> None:
    demo = await ensure_demo_data(db)
    assert demo.created and demo.api_key and demo.license_key.startswith("HL-")
    again = await ensure_demo_data(db)
    assert (again.created, again.license_key, again.api_key) == (False, demo.license_key, None)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge",  # type: ignore[arg-type]
                                 headers={"X-API-Key": demo.api_key}) as http:
        body = {"license_key": demo.license_key, "hardware_fingerprint": "5c:1b:9f:aa"}
        started = await http.post("/v1/sessions", json=body)
        assert started.status_code == 201 and started.json()["resumed"] is False
        held = await http.post("/v1/licenses/resources", json={"license_key": demo.license_key})
        assert held.status_code == 200
        assert {kind: len(values) for kind, values in held.json().items()} == {
            "domains": 2, "ipv4": 2, "phones": 2}
        assert held.json()["ipv4"] == ["203.0.113.10", "203.0.113.11"]

    with psycopg.connect(settings.database_url or "") as pg:
        stats = resources.pool_stats(pg, settings=settings)
        assert all(s.allocated == 2 and not s.low for s in stats), stats
        license_id = await db.fetchval("SELECT id FROM licenses WHERE license_key = $1", demo.license_key)
        usage = {u.resource_type: (u.held, u.quota) for u in resources.quota_usage(pg, license_id)}
        assert set(usage.values()) == {(2, 3)}
    institution = found(await db.fetchrow("SELECT id, stage, customer_id FROM crm_institutions WHERE name = $1",
                                     DEMO_INSTITUTION))
    assert institution["stage"] == "won" and institution["customer_id"] is not None
    assert await db.fetchval("SELECT count(*) FROM crm_contacts WHERE institution_id = $1", institution["id"]) == 1
    kinds = await db.fetch("SELECT kind, done FROM crm_activities WHERE institution_id = $1 ORDER BY kind",
                           institution["id"])
    assert [(r["kind"], r["done"]) for r in kinds] == [("call", False), ("task", False)]
    # every row is in the audit log, as any other change to business data
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE table_name = 'resource_pools'") >= 36
