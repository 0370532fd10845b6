"""Webhooks sent by the worker to a real HTTP receiver that verifies them with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from shared_support import found
from webhook_receiver import Receiver
from worker_support import LiveLicense, eventually

from heartline.plane.events import EndReason
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings
from heartline.webhooks import delivery, store
from heartline.webhooks.secrets import SecretBox
from heartline.webhooks.targets import WebhookTargetRefused, check_target
from worker.arq_wiring import open_resources, shutdown, start_loops
from worker.webhooks import queue_change_webhooks, queue_session_webhooks, send_webhooks


@pytest.fixture
def hook_settings(worker_settings: Settings) -> Settings:
    """The test receiver listens on 127.0.0.1: the SSRF guard is told to allow it.  Fast retries."""
    return worker_settings.replace(webhook_allow_private_targets=True, webhook_retry_first_s=0.3,
                                   webhook_send_interval_s=0.05, webhook_secret_key="test-webhook-key")


@pytest.fixture
async def hook_ctx(hook_settings: Settings, db: asyncpg.Connection, redis: Any) -> AsyncIterator[dict[str, Any]]:
    ctx: dict[str, Any] = {"settings": hook_settings, "consumer_name": "hooks-test"}
    await open_resources(ctx)
    try:
        yield ctx
    finally:
        await shutdown(ctx)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(secret="")
    yield made
    made.stop()


async def add_endpoint(db: asyncpg.Connection, settings: Settings, receiver: Receiver,
                       event_types: tuple[str, ...] = ()) -> int:
    endpoint_id, secret = await store.create_endpoint(db, SecretBox(settings), receiver.url,
                                                      event_types=event_types)
    receiver.secret = secret
    return endpoint_id


async def one_session(plane: SessionPlane, lic: LiveLicense) -> str:
    started = await plane.start_session(lic.license_id, lic.fingerprint, client_version="2.0")
    assert started.token
    assert await plane.end_session(lic.license_id, started.token, EndReason.CLIENT_END)
    return started.token


async def test_receiver_down_then_up_gets_each_event_once_verified(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane, receiver: Receiver,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    receiver.reserve_port()  # nothing listens there yet: the receiver is down
    endpoint_id = await add_endpoint(db, hook_ctx["settings"], receiver, ("session.started", "session.ended"))
    lic = await live_license()
    token = await one_session(plane, lic)

    assert await queue_session_webhooks(hook_ctx) == 2
    assert await send_webhooks(hook_ctx) == 2
    rows = await db.fetch("SELECT status, attempts FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id)
    assert sorted(tuple(r) for r in rows) == [("pending", 1), ("pending", 1)]
    errors = await db.fetch("SELECT status_code, error FROM webhook_attempts")
    assert all(r["status_code"] is None and "ConnectError" in r["error"] for r in errors)

    receiver.start()
    start_loops(hook_ctx)

    async def delivered() -> bool:
        return await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'") == 2
    await eventually(delivered)

    got = receiver.accepted()
    assert all(r.verified for r in got)
    assert sorted(r.payload["type"] for r in got) == ["session.ended", "session.started"]
    assert {r.payload["data"]["session_token"] for r in got} == {token}
    ended = next(r.payload for r in got if r.payload["type"] == "session.ended")
    assert ended["data"]["reason"] == "client_end" and ended["data"]["license_key"] == lic.license_key
    assert {r.webhook_id for r in got} == {f"msg_session.started_{token}", f"msg_session.ended_{token}"}
    log = await db.fetch("SELECT a.status_code, a.latency_ms, a.response_excerpt FROM webhook_attempts a "
                         "WHERE a.status_code IS NOT NULL")
    assert [r["status_code"] for r in log] == [200, 200]
    assert all(r["response_excerpt"] == '{"ok": true}' for r in log)
    assert await db.fetchval("SELECT failing_since FROM webhook_endpoints WHERE id = $1", endpoint_id) is None


async def test_session_ended_after_the_license_cache_left_redis_still_names_the_fingerprint(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane, receiver: Receiver,
        live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    """The plane takes an `ended` event's fingerprint from the cached devices; gone from Redis, the
    device's row in PostgreSQL gives it."""
    await add_endpoint(db, hook_ctx["settings"], receiver, ("session.ended",))
    lic = await live_license()
    started = await plane.start_session(lic.license_id, lic.fingerprint)
    assert started.token
    await plane.invalidate_license(lic.license_id)
    assert await plane.end_session(lic.license_id, started.token, EndReason.CLIENT_END)
    assert await queue_session_webhooks(hook_ctx) == 2
    raw = await db.fetchval("SELECT payload FROM webhook_messages WHERE id = $1", f"msg_session.ended_{started.token}")
    assert raw is not None
    payload = json.loads(raw)
    assert (payload["data"]["device_id"], payload["data"]["hardware_fingerprint"]) == (
        lic.device_id, lic.fingerprint)


async def test_nothing_is_delivered_twice_under_different_webhook_ids(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, plane: SessionPlane, receiver: Receiver,
        redis: Any, live_license: Callable[..., Awaitable[LiveLicense]]) -> None:
    receiver.start()
    await add_endpoint(db, hook_ctx["settings"], receiver, ("session.started", "session.ended"))
    lic = await live_license(devices=2)
    for _ in range(3):
        await one_session(plane, lic)
    # The receiver takes the first two requests and answers 500: the sender must repeat them.
    receiver.fail_next = 2
    # The stream entries are read again (as after a crash before the acknowledgement) ...
    consumer = hook_ctx["webhook_consumer"]
    await queue_session_webhooks(hook_ctx)
    for shard in range(hook_ctx["settings"].stream_shards):
        await redis.xgroup_setid(consumer.stream_key(shard), consumer.group, "0")
    await queue_session_webhooks(hook_ctx)
    # ... and a delivery's lease runs out mid-send (a worker died after sending): it is sent again.
    claimed = await store.claim_due(hook_ctx["pool"], 1, 0.0)
    result = await delivery.attempt(hook_ctx["webhook_http"], claimed[0].url, claimed[0].message_id,
                                    receiver.secret, claimed[0].payload)
    assert result.status_code == 500, result.error  # seen by the receiver, never recorded by the "dead" worker
    start_loops(hook_ctx)

    async def all_delivered() -> bool:
        return await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'") == 0
    await eventually(all_delivered)

    ids_by_event: dict[tuple[str, str], set[str]] = defaultdict(set)
    for got in receiver.all():
        assert got.verified
        ids_by_event[(got.payload["type"], got.payload["data"]["session_token"])].add(got.webhook_id)
    assert len(ids_by_event) == 6  # 3 sessions, started + ended
    assert all(len(ids) == 1 for ids in ids_by_event.values())
    assert len(receiver.all()) > 6  # some were sent more than once, always under the same id
    assert len({r.webhook_id for r in receiver.accepted()}) == 6


async def test_changes_in_postgresql_become_events(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, receiver: Receiver,
        make_license: Callable[..., Any]) -> None:
    receiver.start()
    await add_endpoint(db, hook_ctx["settings"], receiver)
    await queue_change_webhooks(hook_ctx)  # the expiry cursor starts now
    lic = await make_license(valid_until=await db.fetchval("SELECT now() + interval '1 second'"))
    device = await db.fetchval("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                               "VALUES ($1, 'fp-x') RETURNING id", lic["id"])
    await db.execute("UPDATE device_registrations SET is_active = false, deactivated_at = now() WHERE id = $1",
                     device)
    await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
    await db.execute("UPDATE licenses SET notes = 'n' WHERE id = $1", lic["id"])
    await asyncio.sleep(1.1)
    await queue_change_webhooks(hook_ctx)
    while await send_webhooks(hook_ctx):
        pass
    types = [r.payload["type"] for r in receiver.accepted()]
    assert sorted(types) == sorted(["license.created", "device.activated", "device.deactivated",
                                    "license.suspended", "license.updated", "license.expired"])
    assert all(r.verified for r in receiver.accepted())
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_event_filter_and_disabled_endpoints(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, receiver: Receiver, make_license: Callable[..., Any]) -> None:
    receiver.start()
    wanted = await add_endpoint(db, hook_ctx["settings"], receiver, ("license.suspended",))
    other = Receiver(secret="")
    other.start()
    try:
        off = await add_endpoint(db, hook_ctx["settings"], other)
        await db.execute("UPDATE webhook_endpoints SET enabled = false, disabled_at = now() WHERE id = $1", off)
        lic = await make_license()
        await db.execute("UPDATE licenses SET status = 'suspended' WHERE id = $1", lic["id"])
        await queue_change_webhooks(hook_ctx)
        while await send_webhooks(hook_ctx):
            pass
        assert [r.payload["type"] for r in receiver.accepted()] == ["license.suspended"]
        assert other.all() == []
        assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", off) == 0
        assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", wanted) == 1
    finally:
        other.stop()


async def test_an_endpoint_failing_too_long_is_disabled(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, receiver: Receiver, make_license: Callable[..., Any]) -> None:
    hook_ctx["settings"] = hook_ctx["settings"].replace(webhook_disable_after_s=0, webhook_retry_first_s=0.05)
    receiver.reserve_port()
    endpoint_id = await add_endpoint(db, hook_ctx["settings"], receiver)
    await make_license()
    await queue_change_webhooks(hook_ctx)
    await send_webhooks(hook_ctx)
    assert await db.fetchval("SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id)

    async def disabled() -> bool:
        await send_webhooks(hook_ctx)
        return not await db.fetchval("SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id)
    await eventually(disabled)
    row = found(await db.fetchrow("SELECT disabled_reason, disabled_at FROM webhook_endpoints WHERE id = $1", endpoint_id))
    assert row["disabled_reason"].startswith("no successful delivery since")
    audit = found(await db.fetchrow("SELECT actor, new_values FROM audit_log WHERE table_name = 'webhook_endpoints' "
                              "AND operation = 'UPDATE'"))
    assert audit["actor"] == "worker" and audit["new_values"] and json.loads(audit["new_values"])["enabled"] is False
    assert await send_webhooks(hook_ctx) == 0  # nothing is sent to a disabled endpoint


async def test_private_targets_are_refused_at_send_time_without_the_setting(
        hook_ctx: dict[str, Any], db: asyncpg.Connection, receiver: Receiver, make_license: Callable[..., Any]) -> None:
    hook_ctx["settings"] = hook_ctx["settings"].replace(webhook_allow_private_targets=False)
    receiver.start()
    await add_endpoint(db, hook_ctx["settings"], receiver)
    await make_license()
    await queue_change_webhooks(hook_ctx)
    assert await send_webhooks(hook_ctx) == 1
    assert receiver.all() == []
    error = await db.fetchval("SELECT error FROM webhook_attempts")
    assert "loopback, private or reserved" in error


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://10.1.2.3/x", "http://169.254.169.254/latest",
                                 "http://[::1]/", "http://[::ffff:192.168.0.1]/", "http://100.64.0.1/",
                                 "http://0.0.0.0/", "http://localhost/", "ftp://93.184.216.34/",
                                 "http://user:pw@93.184.216.34/", "http:///nohost"])
def test_ssrf_guard_refuses(url: str) -> None:
    with pytest.raises(WebhookTargetRefused):
        check_target(url, allow_private=False)


def test_ssrf_guard_lets_public_and_allowed_private_targets_through() -> None:
    check_target("https://93.184.216.34/hooks", allow_private=False)
    check_target("http://127.0.0.1:9/hooks", allow_private=True)
    with pytest.raises(WebhookTargetRefused):
        check_target("gopher://127.0.0.1/", allow_private=True)


def test_retries_back_off_exponentially_over_hours_then_give_up() -> None:
    settings = Settings()
    delays = [delivery.retry_delay_s(n, settings) for n in range(1, settings.webhook_max_attempts + 1)]
    assert delays[-1] is None
    spaced = [d for d in delays if d is not None]
    for n, delay in enumerate(spaced):
        floor = min(settings.webhook_retry_max_delay_s, settings.webhook_retry_first_s * 4 ** n)
        assert floor <= delay <= floor * 1.1
    assert 5 <= spaced[0] <= 5.5 and spaced[1] >= 20
    assert max(spaced) <= settings.webhook_retry_max_delay_s * 1.1
    assert sum(spaced) > 24 * 3600
