"""Session-bound answer MACs, the client alone: opening a sealed answer key, and verifying hmac-sha256
answers under it (an independent HMAC over the RFC 9421 base written here, as docs/client.md describes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fake_server import jwks_of
from heartline_client.answer_keys import AnswerKeyError, SessionKey, new_share, open_answer_key
from heartline_client.verify import KeySet, SignatureError, verify_answer

KEYS = KeySet.from_jwks(jwks_of("k1", Ed25519PrivateKey.generate()))
TOKEN = "0b7c5a39-4c1e-4f4a-9a53-3d2a4bd1d9c2"
BODY = b'{"expires_at":"2026-11-30T14:41:00Z","next_heartbeat_in_s":30,"offline_grace_s":0}'
PATH = f"/v1/sessions/{TOKEN}/heartbeat"
K = bytes(range(32))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _seal(share: str, kid: str, key: bytes, token: str) -> dict[str, str]:
    """The edge's side, written from the documented steps."""
    client = base64.urlsafe_b64decode(share + "=")
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(client))
    aead = HKDF(algorithm=hashes.SHA256(), length=32, salt=client + public,
                info=b"heartline answer key seal v1 " + token.encode()).derive(shared)
    return {"kid": kid, "alg": "hmac-sha256", "ephemeral": _b64url(public),
            "sealed": _b64url(AESGCM(aead).encrypt(bytes(12), key, kid.encode()))}


def _mac(key: bytes, keyid: str, nonce: str) -> dict[str, str]:
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    params = (f'("@status" "content-digest" "@method";req "@path";req "heartline-nonce";req)'
              f';created={int(time.time())};keyid="{keyid}";alg="hmac-sha256"')
    base = "\n".join(['"@status": 200', f'"content-digest": {digest}', '"@method";req: POST',
                      f'"@path";req: {PATH}', f'"heartline-nonce";req: {nonce}', f'"@signature-params": {params}'])
    signature = base64.b64encode(hmac.digest(key, base.encode(), hashlib.sha256)).decode()
    return {"content-digest": digest, "signature-input": f"heartline={params}",
            "signature": f"heartline=:{signature}:"}


def _check(headers: dict[str, str], key: SessionKey | None, nonce: str = "nonce-123456") -> str:
    return verify_answer(KEYS, status=200, headers=headers, body=BODY, method="POST", path=PATH, nonce=nonce,
                         session_key=key).kid


def test_the_sealed_key_opens_with_the_share_and_only_with_it() -> None:
    private, share = new_share()
    sealed = _seal(share, "k1", K, TOKEN)
    assert open_answer_key(private, sealed, TOKEN) == SessionKey("k1", K)
    other, _ = new_share()
    with pytest.raises(AnswerKeyError, match="does not open"):
        open_answer_key(other, sealed, TOKEN)
    with pytest.raises(AnswerKeyError, match="does not open"):
        open_answer_key(private, sealed, TOKEN.replace("0b7c", "0b7d"))   # sealed for another session
    with pytest.raises(AnswerKeyError, match="does not open"):
        open_answer_key(private, {**sealed, "kid": "k2"}, TOKEN)          # kid is bound in
    with pytest.raises(AnswerKeyError, match="hmac-sha256"):
        open_answer_key(private, {**sealed, "alg": "none"}, TOKEN)


def test_a_mac_under_the_session_key_verifies_and_a_wrong_one_does_not() -> None:
    key = SessionKey("k1", K)
    assert _check(_mac(K, "session:k1", "nonce-123456"), key) == "session:k1"
    with pytest.raises(SignatureError, match="does not verify"):
        _check(_mac(bytes(32), "session:k1", "nonce-123456"), key)
    with pytest.raises(SignatureError, match="does not verify"):
        _check(_mac(K, "session:k1", "nonce-other1"), key)                # replayed to another request
    with pytest.raises(SignatureError, match="not this session's key"):
        _check(_mac(K, "session:k2", "nonce-123456"), key)
    with pytest.raises(SignatureError, match="alg"):
        _check(_mac(K, "session:k1", "nonce-123456"), None)               # no key held: MACs not believed
    with pytest.raises(SignatureError, match="no longer pinned"):
        _check(_mac(K, "session:k9", "nonce-123456"), SessionKey("k9", K))
