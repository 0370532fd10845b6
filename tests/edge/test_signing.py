"""Signed answers: every answer of the license, device, session and resource calls carries an RFC 9421
signature that an independent implementation (http-message-signatures) and the client's own verifier
both accept, and that neither accepts once the answer is changed or moved to another request."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from heartline_client.verify import KeySet, SignatureError, verify_answer
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, algorithms
from http_message_signatures.resolvers import MappingKeyResolver
from shared_support import found
from starlette.applications import Starlette

from heartline.sealing import SIGNING_KEY_SECRET, sealing_secret
from heartline.settings import Settings
from heartline.signing.keys import (
    KeyBox,
    SigningKeyError,
    create_key,
    list_keys,
    retire,
    rotate,
)

REQUIRED = ("@status", "content-digest", '"@method";req', '"@path";req')


async def _key_set(client: httpx.AsyncClient) -> KeySet:
    answer = await client.get("/v1/keys")
    assert answer.status_code == 200
    return KeySet.from_jwks(answer.content)


def _independent(keys: KeySet, answer: httpx.Response, *, nonce: bool) -> None:
    """Verify with http-message-signatures, requiring the components the issue names."""
    resolver = MappingKeyResolver(public_keys={kid: found(keys.get(kid)) for kid in keys.kids()}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    required = (*REQUIRED, '"heartline-nonce";req') if nonce else REQUIRED
    results = verifier.verify(answer, require_components=required, body=answer.content)
    assert len(results) == 1 and results[0].label == "heartline"
    assert results[0].parameters["alg"] == "ed25519"


def _ours(keys: KeySet, answer: httpx.Response, nonce: str | None) -> str:
    verified = verify_answer(keys, status=answer.status_code, headers=answer.headers, body=answer.content,
                             method=answer.request.method, path=answer.request.url.raw_path.decode(),
                             nonce=nonce)
    return verified.kid


def _both(keys: KeySet, answer: httpx.Response, nonce: str | None) -> str:
    _independent(keys, answer, nonce=nonce is not None)
    return _ours(keys, answer, nonce)


async def test_every_client_call_is_signed_success_and_refusal(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=0, concurrent_sessions_limit=1, device_limit=2)
    key = lic["license_key"]
    keys = await _key_set(client)
    calls: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/licenses/validate", {"license_key": key, "hardware_fingerprint": "a"}, 200),
        ("/v1/devices/activate", {"license_key": key, "hardware_fingerprint": "a"}, 201),
        ("/v1/sessions", {"license_key": key, "hardware_fingerprint": "a"}, 201),
        ("/v1/sessions", {"license_key": key, "hardware_fingerprint": "b"}, 409),   # limit reached
        ("/v1/licenses/resources", {"license_key": key}, 200),
        ("/v1/devices/activate", {"license_key": "HL-NOPE-NOPE-NOPE", "hardware_fingerprint": "a"}, 404),
        ("/v1/sessions", {"license_key": key}, 422),                                  # bad body
    ]
    token = None
    for path, body, status in calls:
        nonce = uuid.uuid4().hex
        answer = await client.post(path, json=body, headers={"Heartline-Nonce": nonce})
        assert answer.status_code == status, (path, answer.text)
        assert _both(keys, answer, nonce) == keys.kids()[0]
        if path == "/v1/sessions" and status == 201:
            token = answer.json()["session_token"]
    assert token is not None
    for path, status in ((f"/v1/sessions/{token}/heartbeat", 200), (f"/v1/sessions/{token}/end", 200),
                         (f"/v1/sessions/{token}/heartbeat", 404), (f"/v1/sessions/{token}/end", 404),
                         ("/v1/sessions/not-a-token/heartbeat", 422)):
        nonce = uuid.uuid4().hex
        answer = await client.post(path, json={"license_key": key}, headers={"Heartline-Nonce": nonce})
        assert answer.status_code == status, (path, answer.text)
        _both(keys, answer, nonce)
    # No API key at all: the refusal is signed too; and without a nonce the signature does not claim one.
    answer = await client.post("/v1/licenses/validate", json={}, headers={"X-API-Key": ""})
    assert answer.status_code == 401
    _both(keys, answer, None)
    assert "heartline-nonce" not in answer.headers["signature-input"]


async def test_heartbeat_refusal_429_is_signed(
        edge_settings: Settings, db: asyncpg.Connection, redis: Any, api_key: str,
        license_with_devices: Callable[..., Any]) -> None:
    from edge.app import create_app

    lic, _ = await license_with_devices(devices=1)
    app = create_app(edge_settings.replace(heartbeat_min_gap_ms=10_000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        keys = await _key_set(http)
        started = await http.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                        "hardware_fingerprint": "fp0"})
        token = started.json()["session_token"]
        beat = await http.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": lic["license_key"]},
                               headers={"Heartline-Nonce": "nonce-429-a"})
        assert beat.status_code == 429 and beat.json()["error"]["code"] == "HEARTBEAT_TOO_FREQUENT"
        assert "retry-after" in beat.headers
        _both(keys, beat, "nonce-429-a")


async def test_a_changed_or_replayed_answer_is_refused_by_both_verifiers(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    keys = await _key_set(client)
    answer = await client.post("/v1/sessions", json={"license_key": lic["license_key"],
                                                     "hardware_fingerprint": "fp0"},
                               headers={"Heartline-Nonce": "first-request-nonce"})
    assert answer.status_code == 201
    _both(keys, answer, "first-request-nonce")

    # A tampered body: the digest no longer matches.
    tampered = httpx.Response(answer.status_code, headers=answer.headers,
                              content=answer.content.replace(b"false", b"true "), request=answer.request)
    with pytest.raises(InvalidSignature):
        _independent(keys, tampered, nonce=True)
    with pytest.raises(SignatureError, match="Content-Digest"):
        _ours(keys, tampered, "first-request-nonce")

    # A changed status with the signature left as it was.
    restatused = httpx.Response(200, headers=answer.headers, content=answer.content, request=answer.request)
    with pytest.raises(InvalidSignature):
        _independent(keys, restatused, nonce=True)
    with pytest.raises(SignatureError, match="does not verify"):
        _ours(keys, restatused, "first-request-nonce")

    # The recorded answer replayed to a later request that carried another nonce.
    later = httpx.Request("POST", answer.request.url, headers={"Heartline-Nonce": "second-request-nonce"})
    replayed = httpx.Response(answer.status_code, headers=answer.headers, content=answer.content, request=later)
    with pytest.raises(InvalidSignature):
        _independent(keys, replayed, nonce=True)
    with pytest.raises(SignatureError, match="does not verify"):
        _ours(keys, replayed, "second-request-nonce")

    # ... or to another call.
    other = httpx.Request("POST", "http://edge/v1/licenses/validate",
                          headers={"Heartline-Nonce": "first-request-nonce"})
    moved = httpx.Response(answer.status_code, headers=answer.headers, content=answer.content, request=other)
    with pytest.raises(InvalidSignature):
        _independent(keys, moved, nonce=True)
    with pytest.raises(SignatureError):
        _ours(keys, moved, "first-request-nonce")

    # An answer signed by a key that is not pinned (a fake server's own key).
    stranger = KeySet({keys.kids()[0]: Ed25519PublicKey.from_public_bytes(b"\x01" * 32)})
    with pytest.raises(SignatureError):
        _ours(stranger, answer, "first-request-nonce")
    # An unsigned answer.
    bare = httpx.Response(201, content=answer.content, request=answer.request)
    with pytest.raises(SignatureError, match="not signed"):
        _ours(keys, bare, "first-request-nonce")


async def test_a_malformed_nonce_is_refused_with_a_signed_422(
        client: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    keys = await _key_set(client)
    for bad in ("short", "has spaces in it", "x" * 129):
        answer = await client.post("/v1/licenses/validate", headers={"Heartline-Nonce": bad},
                                   json={"license_key": lic["license_key"], "hardware_fingerprint": "fp0"})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_NONCE"
        _both(keys, answer, None)
    answer = await client.post("/v1/sessions/00000000-0000-0000-0000-000000000000/heartbeat",
                               headers={"Heartline-Nonce": "short"}, json={"license_key": lic["license_key"]})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_NONCE"
    _both(keys, answer, None)


async def test_jwks_is_rfc8037_and_cacheable(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    answer = await client.get("/v1/keys")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/jwk-set+json"
    assert "max-age=" in answer.headers["cache-control"]
    [jwk] = answer.json()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert "=" not in jwk["x"] and "d" not in jwk
    stored = await db.fetchval("SELECT public_key FROM signing_keys WHERE kid = $1", jwk["kid"])
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == bytes(stored)
    again = await client.get("/v1/keys", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_rotation_old_kid_verifies_until_retired(
        client: httpx.AsyncClient, app: Starlette, db: asyncpg.Connection, edge_settings: Settings,
        license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    body = {"license_key": lic["license_key"], "hardware_fingerprint": "fp0"}
    before = await client.post("/v1/licenses/validate", json=body)
    old_kid = _ours(await _key_set(client), before, None)

    box = KeyBox(sealing_secret(edge_settings, SIGNING_KEY_SECRET))
    announced = await create_key(db, box)                       # published ahead, not signing yet
    await app.state.edge.signing.refresh()
    assert _ours(await _key_set(client), await client.post("/v1/licenses/validate", json=body), None) == old_kid
    assert set((await _key_set(client)).kids()) == {old_kid, announced.kid}

    await rotate(db, box, announced.kid)
    assert await app.state.edge.signing.refresh() is True
    keys = await _key_set(client)
    after = await client.post("/v1/licenses/validate", json=body)
    assert _both(keys, after, None) == announced.kid
    assert _both(keys, before, None) == old_kid                  # the old kid still verifies

    with pytest.raises(SigningKeyError, match="rotate to another key first"):
        await retire(db, announced.kid)
    await retire(db, old_kid)
    await app.state.edge.signing.refresh()
    keys = await _key_set(client)
    assert keys.kids() == [announced.kid]
    with pytest.raises(SignatureError, match="not a pinned key"):
        _ours(keys, before, None)
    with pytest.raises(InvalidSignature):
        _independent(keys, before, nonce=False)
    statuses = {k.kid: k.status.value for k in await list_keys(db)}
    assert statuses == {old_kid: "retired", announced.kid: "active"}


async def test_edges_pick_up_a_rotation_by_themselves(
        edge_settings: Settings, db: asyncpg.Connection, redis: Any, api_key: str,
        license_with_devices: Callable[..., Any]) -> None:
    from edge.app import create_app

    lic, _ = await license_with_devices(devices=1)
    app = create_app(edge_settings.replace(signing_key_refresh_s=0.1))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as http:
        first = app.state.edge.signing.signer.kid
        new = await rotate(db, KeyBox(sealing_secret(edge_settings, SIGNING_KEY_SECRET)))
        for _ in range(100):
            if app.state.edge.signing.signer.kid == new.kid:
                break
            await _sleep(0.05)
        answer = await http.post("/v1/licenses/validate",
                                  json={"license_key": lic["license_key"], "hardware_fingerprint": "fp0"})
        assert _both(await _key_set(http), answer, None) == new.kid != first


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_private_keys_are_sealed_and_never_logged(
        db: asyncpg.Connection, edge_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.hazmat.primitives import serialization

    from heartline.signing.keys import ensure_active_key, load_active_key

    caplog.set_level(logging.DEBUG)
    box = KeyBox(sealing_secret(edge_settings, SIGNING_KEY_SECRET))
    created = await create_key(db, box, activate=True)
    pool = await asyncpg.create_pool(edge_settings.database_url, min_size=1, max_size=2)
    try:
        active = await ensure_active_key(pool, box)
        assert active.kid == created.kid and created.kid in repr(active)
        raw = active.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
        sealed = bytes(await db.fetchval("SELECT sealed FROM signing_key_secrets WHERE kid = $1", created.kid))
        assert raw not in sealed
        for shown in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()[:40]):
            assert shown not in caplog.text and shown not in repr(active)
        audited = await db.fetch("SELECT new_values::text AS v FROM audit_log WHERE table_name LIKE 'signing%'")
        assert audited and all(sealed.hex() not in r["v"] and "sealed" not in r["v"] for r in audited)
        with pytest.raises(SigningKeyError, match="SIGNING_KEY_SECRET changed"):
            await load_active_key(pool, KeyBox("another secret of enough length"))
    finally:
        await pool.close()


async def test_only_one_key_signs(db: asyncpg.Connection, edge_settings: Settings) -> None:
    box = KeyBox(sealing_secret(edge_settings, SIGNING_KEY_SECRET))
    for _ in range(3):
        await rotate(db, box)
    assert [k.status.value for k in await list_keys(db)] == ["published", "published", "active"]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("UPDATE signing_keys SET status = 'active', activated_at = now() "
                         "WHERE status = 'published'")
    assert dt.datetime.now(dt.UTC) > (await list_keys(db))[0].created_at
