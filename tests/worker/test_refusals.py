"""Denial analytics end to end: refused starts through the edge's HTTP API become `refused` events of
the plane, the running worker counts each once per license, day and code (also when it reads a batch
again), and a real receiver gets session.refused with the code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from webhook_receiver import Receiver
from worker_support import eventually

from heartline.plane import keys
from heartline.settings import Settings
from heartline.webhooks import store
from heartline.webhooks.secrets import SecretBox
from worker.history import record_session_events
from worker.refusals import refusal_events
from worker.streams import Entry


@pytest.fixture
def worker_settings(worker_settings: Settings) -> Settings:
    """The receiver listens on 127.0.0.1 (the SSRF guard is told to allow it); sends are frequent."""
    return worker_settings.replace(webhook_allow_private_targets=True, webhook_send_interval_s=0.05,
                                   webhook_secret_key="test-webhook-key")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(secret="")
    made.start()
    yield made
    made.stop()


@pytest.fixture
async def endpoint(db: asyncpg.Connection, worker_settings: Settings, receiver: Receiver) -> None:
    """The receiver as the webhook endpoint of session.refused (before the worker's loops start)."""
    _endpoint, receiver.secret = await store.create_endpoint(db, SecretBox(worker_settings), receiver.url,
                                                             event_types=("session.refused",))


@pytest.fixture
async def edge(endpoint: None, edge: httpx.AsyncClient) -> httpx.AsyncClient:
    """conftest's edge next to a running worker, whose webhook endpoint is the receiver."""
    return edge


async def _rollup(db: asyncpg.Connection, license_id: int) -> dict[str, int]:
    rows = await db.fetch("SELECT code, refusals, day, last_at FROM license_refusals_daily WHERE license_id = $1",
                          license_id)
    assert all(r["day"] == r["last_at"].date() for r in rows)  # UTC day of the refusal
    return {r["code"]: r["refusals"] for r in rows}


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_refused_starts_are_counted_once_and_announced(
        edge: httpx.AsyncClient, db: asyncpg.Connection, make_license: Any, receiver: Receiver,
        worker_ctx: dict[str, Any], plane_client: aioredis.Redis, plane_mode: str) -> None:
    lic = await make_license(device_limit=2, concurrent_sessions_limit=1)
    key = lic["license_key"]
    first = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-1"})
    assert first.status_code == 201, first.text
    activated = await edge.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": "box-2"})
    assert activated.status_code == 201, activated.text
    # decided by start.lua: the seat is taken
    full = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-2"})
    assert full.status_code == 409 and full.json()["error"]["code"] == "SESSION_LIMIT_REACHED", full.text
    # decided from PostgreSQL: no room for a third device, on a start and on an activation
    no_room = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-3"})
    assert no_room.json()["error"]["code"] == "DEVICE_LIMIT_REACHED", no_room.text
    refused = await edge.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": "box-4"})
    assert refused.json()["error"]["code"] == "DEVICE_LIMIT_REACHED", refused.text

    expected = {"SESSION_LIMIT_REACHED": 1, "DEVICE_LIMIT_REACHED": 2}

    async def counted() -> bool:
        return await _rollup(db, lic["id"]) == expected
    await eventually(counted)

    # The history group reads every entry again (as after a crash between commit and acknowledgement):
    # nothing is counted twice.
    shards = worker_ctx["settings"].stream_shards
    consumer = worker_ctx["event_consumer"]
    entries = []
    for shard in range(shards):
        got = await plane_client.xrange(keys.event_stream(shard))
        entries += [Entry(shard, i.decode() if isinstance(i, bytes) else i, f) for i, f in got]
        await plane_client.xgroup_setid(keys.event_stream(shard), consumer.group, "0")
    refusals, malformed = refusal_events(entries)
    if refusals:  # the worker's stream trim may already have removed acknowledged entries
        assert malformed == 0
        assert sorted((e.code, e.operation, e.device_id) for e in refusals) == sorted([
            ("SESSION_LIMIT_REACHED", "start", activated.json()["device_id"]),
            ("DEVICE_LIMIT_REACHED", "start", None), ("DEVICE_LIMIT_REACHED", "activate", None)])
    while await record_session_events(worker_ctx):
        pass
    assert await _rollup(db, lic["id"]) == expected

    # Webhooks: session.refused for the two refused starts (an activation is no session), each once.
    async def announced() -> list[Any]:
        got = receiver.accepted()
        return got if len(got) == 2 else []
    got = await eventually(announced)
    assert all(r.verified for r in got)
    assert sorted((r.payload["type"], r.payload["data"]["code"], r.payload["data"]["hardware_fingerprint"])
                  for r in got) == [("session.refused", "DEVICE_LIMIT_REACHED", "box-3"),
                                    ("session.refused", "SESSION_LIMIT_REACHED", "box-2")]
    assert {r.payload["data"]["license_key"] for r in got} == {key}
    assert all(r.webhook_id.startswith("msg_session.refused_") for r in got)

    # A refused request changed nothing else: no device for box-3/box-4, one session.
    devices = await db.fetch("SELECT hardware_fingerprint FROM device_registrations WHERE license_id = $1",
                             lic["id"])
    assert sorted(r["hardware_fingerprint"] for r in devices) == ["box-1", "box-2"]
    assert await db.fetchval("SELECT count(*) FROM license_sessions WHERE license_id = $1", lic["id"]) == 1


async def test_a_queued_device_renewing_its_ticket_is_counted_once(
        edge: httpx.AsyncClient, db: asyncpg.Connection, make_license: Any) -> None:
    lic = await make_license(device_limit=3, concurrent_sessions_limit=1)
    key = lic["license_key"]
    first = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-1"})
    assert first.status_code == 201, first.text
    queued = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-2",
                                                   "queue": True})
    ticket = queued.json()["error"]["queue"]["ticket"]
    for _ in range(3):
        renewed = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "box-2",
                                                        "ticket": ticket})
        assert renewed.json()["error"]["queue"]["position"] == 1, renewed.text

    async def counted() -> bool:
        return await _rollup(db, lic["id"]) == {"SESSION_LIMIT_REACHED": 1}
    await eventually(counted)


async def test_the_plane_records_its_refusals_and_nothing_for_what_the_caller_resolves(
        plane: Any, plane_client: aioredis.Redis, live_license: Any, worker_settings: Settings) -> None:
    lic = await live_license(devices=2, concurrent_sessions_limit=1)
    assert (await plane.start_session(lic.license_id, lic.fingerprint)).granted
    stream = keys.event_stream(keys.shard_of(lic.license_id, worker_settings.stream_shards))
    before = await plane_client.xlen(stream)
    # a device the plane does not know: the caller activates it and retries (no refusal recorded)
    unknown = await plane.start_session(lic.license_id, "not-activated")
    assert unknown.code == "DEVICE_NOT_ACTIVATED"
    other = f"fp-{lic.license_id}-1"
    full = await plane.start_session(lic.license_id, other)
    assert full.code == "SESSION_LIMIT_REACHED"
    queued = await plane.start_session(lic.license_id, other, queue=True)
    renewed = await plane.start_session(lic.license_id, other, ticket=queued.ticket)
    assert renewed.position == 1
    got = await plane_client.xrange(stream)
    refused = refusal_events([Entry(0, i.decode(), f) for i, f in got])[0]
    assert len(got) - before == len(refused) == 2
    assert [(e.code, e.license_id, e.fingerprint, e.operation) for e in refused] == \
        [("SESSION_LIMIT_REACHED", lic.license_id, other, "start")] * 2
    assert refused[0].device_id is not None and refused[0].at_ms > 0

    # the license's own refusal is recorded too; a license missing from the cache is no refusal
    assert await plane.suspend_license(lic.license_id, "suspended", 99) >= 0
    assert (await plane.start_session(lic.license_id, other)).code == "LICENSE_SUSPENDED"
    await plane.invalidate_license(lic.license_id)
    assert (await plane.start_session(lic.license_id, other)).code == "LICENSE_NOT_CACHED"
    got = await plane_client.xrange(stream)
    refused = refusal_events([Entry(0, i.decode(), f) for i, f in got])[0]
    assert [e.code for e in refused] == ["SESSION_LIMIT_REACHED"] * 2 + ["LICENSE_SUSPENDED"]


async def test_device_change_refusals_decided_in_postgresql_are_counted(
        edge: httpx.AsyncClient, db: asyncpg.Connection, make_license: Any) -> None:
    lic = await make_license(device_limit=1, concurrent_sessions_limit=1, device_change_limit=1)
    key = lic["license_key"]
    for old, new in ((None, "a"), ("a", "b"), ("b", "c")):
        if old:
            gone = await edge.post("/v1/devices/deactivate", json={"license_key": key, "hardware_fingerprint": old})
            assert gone.status_code == 200, gone.text
        await edge.post("/v1/devices/activate", json={"license_key": key, "hardware_fingerprint": new})
    started = await edge.post("/v1/sessions", json={"license_key": key, "hardware_fingerprint": "c"})
    assert started.json()["error"]["code"] == "DEVICE_CHANGE_LIMIT_REACHED", started.text

    async def counted() -> bool:
        return await _rollup(db, lic["id"]) == {"DEVICE_CHANGE_LIMIT_REACHED": 2}
    await eventually(counted)
