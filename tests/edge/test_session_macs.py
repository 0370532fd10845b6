"""Session-bound answer MACs (heartline/signing/session_keys.py): a start with a Heartline-Key-Share gets
the session's answer key sealed to it in the Ed25519-signed answer; heartbeats that name its kid are
answered with an RFC 9421 hmac-sha256 signature under it, which http-message-signatures and the client's
verifier accept and neither accepts once changed.  Without a share, or with a kid the edge does not hold,
everything is Ed25519 as before; a malformed share is refused (signed 422)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from heartline_client.answer_keys import SessionKey, open_answer_key
from heartline_client.verify import KeySet, SignatureError, verify_answer
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, algorithms
from http_message_signatures.resolvers import MappingKeyResolver

from heartline.sealing import SIGNING_KEY_SECRET, sealing_secret
from heartline.settings import Settings
from heartline.signing.keys import KeyBox, retire, rotate
from heartline.signing.session_keys import open_sealed, session_key

REQUIRED = ("@status", "content-digest", '"@method";req', '"@path";req', '"heartline-nonce";req')


@pytest.fixture
async def http(edge_settings: Settings, db: asyncpg.Connection, redis: Any,
               api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An edge that takes back-to-back heartbeats (no minimum gap), and an HTTP client of it."""
    from edge.app import create_app

    app = create_app(edge_settings.replace(heartbeat_min_gap_ms=0))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", headers={"X-API-Key": api_key}) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


def _share() -> tuple[X25519PrivateKey, str]:
    private = X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def _keys(http: httpx.AsyncClient) -> KeySet:
    return KeySet.from_jwks((await http.get("/v1/keys")).content)


def _ours(keys: KeySet, answer: httpx.Response, nonce: str, key: SessionKey | None) -> str:
    return verify_answer(keys, status=answer.status_code, headers=answer.headers, body=answer.content,
                         method="POST", path=answer.request.url.raw_path.decode(), nonce=nonce,
                         session_key=key).kid


def _independent_mac(answer: httpx.Response, keyid: str, key: bytes) -> None:
    resolver = MappingKeyResolver(public_keys={keyid: key}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)
    results = verifier.verify(answer, require_components=REQUIRED, body=answer.content)
    assert len(results) == 1 and results[0].label == "heartline"
    assert results[0].parameters["alg"] == "hmac-sha256"


async def _start(http: httpx.AsyncClient, license_key: str, share: str | None = None,
                 fingerprint: str = "fp0") -> httpx.Response:
    headers = {"Heartline-Nonce": "start-nonce-1"}
    if share is not None:
        headers["Heartline-Key-Share"] = share
    return await http.post("/v1/sessions", headers=headers,
                           json={"license_key": license_key, "hardware_fingerprint": fingerprint})


async def _beat(http: httpx.AsyncClient, license_key: str, token: str, nonce: str,
                kid: str | None) -> httpx.Response:
    headers = {"Heartline-Nonce": nonce}
    if kid is not None:
        headers["Heartline-Answer-Key"] = kid
    return await http.post(f"/v1/sessions/{token}/heartbeat", headers=headers, json={"license_key": license_key})


async def test_a_start_with_a_share_gets_a_key_that_verifies_heartbeat_answers(
        http: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    keys = await _keys(http)
    private, share = _share()
    started = await _start(http, lic["license_key"], share)
    assert started.status_code == 201
    # the start answer is Ed25519-signed as ever, its body (answer_key included) under the digest
    kid = _ours(keys, started, "start-nonce-1", None)
    data = started.json()
    token, sealed = data["session_token"], data["answer_key"]
    assert sealed["kid"] == kid and sealed["alg"] == "hmac-sha256"
    # both openers agree, and K is what the edge derives from its signing key and the token
    key = open_answer_key(private, sealed, token)
    assert key.key == open_sealed(private, kid, _raw(sealed["ephemeral"]), _raw(sealed["sealed"]), token)
    signer_key = http.app.state.edge.signing.macs[kid.encode()]  # type: ignore[attr-defined]
    assert key.key == session_key(signer_key.master, token)

    beat = await _beat(http, lic["license_key"], token, "beat-nonce-01", kid)
    assert beat.status_code == 200
    assert f'keyid="session:{kid}"' in beat.headers["signature-input"]
    assert 'alg="hmac-sha256"' in beat.headers["signature-input"]
    assert _ours(keys, beat, "beat-nonce-01", key) == f"session:{kid}"
    _independent_mac(beat, f"session:{kid}", key.key)

    # a MACed answer is not believed without the session's key, nor with another session's
    with pytest.raises(SignatureError, match="alg"):
        _ours(keys, beat, "beat-nonce-01", None)
    with pytest.raises(SignatureError, match="does not verify"):
        _ours(keys, beat, "beat-nonce-01", SessionKey(kid, bytes(32)))
    # tampered body, replay to another request
    tampered = httpx.Response(200, headers=beat.headers, request=beat.request,
                              content=beat.content.replace(b'"next_heartbeat_in_s":', b'"next_heartbeat_in_s":9'))
    with pytest.raises(SignatureError, match="Content-Digest"):
        _ours(keys, tampered, "beat-nonce-01", key)
    with pytest.raises(InvalidSignature):
        _independent_mac(tampered, f"session:{kid}", key.key)
    with pytest.raises(SignatureError, match="does not verify"):
        _ours(keys, beat, "beat-nonce-02", key)
    # the same digest with a MAC forged under a wrong key
    forged_headers = dict(beat.headers)
    forged_headers["signature"] = "heartline=:" + base64.b64encode(bytes(32)).decode() + ":"
    forged = httpx.Response(200, headers=forged_headers, content=beat.content, request=beat.request)
    with pytest.raises(SignatureError, match="does not verify"):
        _ours(keys, forged, "beat-nonce-01", key)

    # resuming the device's session with a new share yields the same K (derived from the token)
    private2, share2 = _share()
    resumed = await _start(http, lic["license_key"], share2)
    assert resumed.status_code == 200 and resumed.json()["resumed"] is True
    assert open_answer_key(private2, resumed.json()["answer_key"], token).key == key.key
    # a share not ours does not open it
    with pytest.raises(Exception, match="does not open"):
        open_answer_key(private, resumed.json()["answer_key"], token)


async def test_no_share_no_answer_key_and_ed25519_heartbeats(
        http: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    keys = await _keys(http)
    started = await _start(http, lic["license_key"])
    assert started.status_code == 201 and "answer_key" not in started.json()
    token = started.json()["session_token"]
    beat = await _beat(http, lic["license_key"], token, "beat-nonce-01", None)
    assert 'alg="ed25519"' in beat.headers["signature-input"]
    kid = _ours(keys, beat, "beat-nonce-01", None)
    # a kid this edge holds no key for (never existed, or retired): Ed25519 as well
    beat = await _beat(http, lic["license_key"], token, "beat-nonce-02", "hl-20000101-00000000")
    assert beat.status_code == 200 and _ours(keys, beat, "beat-nonce-02", None) == kid
    # refusals stay Ed25519 even when the client asks for MACs
    gone = await _beat(http, lic["license_key"], "00000000-0000-0000-0000-000000000000", "beat-nonce-03", kid)
    assert gone.status_code == 404 and 'alg="ed25519"' in gone.headers["signature-input"]
    _ours(keys, gone, "beat-nonce-03", None)


@pytest.mark.parametrize("share", ["", "not base64!", "AAAA", "A" * 43, "A" * 200])
async def test_a_malformed_share_is_refused_with_a_signed_422(
        http: httpx.AsyncClient, license_with_devices: Callable[..., Any], share: str) -> None:
    lic, _ = await license_with_devices(devices=1)
    keys = await _keys(http)
    answer = await _start(http, lic["license_key"], share)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_KEY_SHARE"
    _ours(keys, answer, "start-nonce-1", None)
    # nothing started: the device's first good start is a new session
    assert (await _start(http, lic["license_key"], _share()[1])).status_code == 201


async def test_two_shares_are_refused(http: httpx.AsyncClient, license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    answer = await http.post("/v1/sessions", headers=[("Heartline-Key-Share", _share()[1]),
                                                      ("Heartline-Key-Share", _share()[1])],
                             json={"license_key": lic["license_key"], "hardware_fingerprint": "fp0"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_KEY_SHARE"


async def test_rotation_keeps_the_old_master_until_its_key_is_retired(
        http: httpx.AsyncClient, db: asyncpg.Connection, edge_settings: Settings,
        license_with_devices: Callable[..., Any]) -> None:
    lic, _ = await license_with_devices(devices=1)
    private, share = _share()
    started = await _start(http, lic["license_key"], share)
    token = started.json()["session_token"]
    key = open_answer_key(private, started.json()["answer_key"], token)
    signing = http.app.state.edge.signing  # type: ignore[attr-defined]
    box = KeyBox(sealing_secret(edge_settings, SIGNING_KEY_SECRET))
    new = await rotate(db, box)
    assert await signing.refresh() is True
    keys = await _keys(http)
    # the session's key still MACs its heartbeats after the rotation (the old master is kept) ...
    beat = await _beat(http, lic["license_key"], token, "beat-nonce-01", key.kid)
    assert _ours(keys, beat, "beat-nonce-01", key) == f"session:{key.kid}"
    # ... and new starts get keys under the new signing key
    fresh = await _start(http, lic["license_key"], _share()[1], fingerprint="fp1")
    assert fresh.json()["answer_key"]["kid"] == new.kid
    # once the old key is retired its sessions get Ed25519 answers (and its MACs are no longer believed)
    await retire(db, key.kid)
    await signing.refresh()
    beat = await _beat(http, lic["license_key"], token, "beat-nonce-02", key.kid)
    assert _ours(await _keys(http), beat, "beat-nonce-02", key) == new.kid
