"""The verifier alone: what it requires of a signature, and its structured-field parsing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fake_server import jwks_of, sign
from heartline_client.verify import KeySet, SignatureError, verify_answer

KEY = Ed25519PrivateKey.generate()
KEYS = KeySet.from_jwks(jwks_of("k1", KEY))
BODY = b'{"ok":true}'
PATH = "/v1/sessions/abc/heartbeat"


def _check(headers: dict[str, str], *, status: int = 200, nonce: str | None = "nonce-123456") -> str:
    return verify_answer(KEYS, status=status, headers={k.lower(): v for k, v in headers.items()}, body=BODY,
                         method="POST", path=PATH, nonce=nonce).kid


def test_a_correct_signature_verifies() -> None:
    assert _check(sign(KEY, "k1", 200, BODY, "POST", PATH, "nonce-123456")) == "k1"
    assert _check(sign(KEY, "k1", 200, BODY, "POST", PATH, None), nonce=None) == "k1"


def test_a_signature_without_the_nonce_is_refused_when_one_was_sent() -> None:
    with pytest.raises(SignatureError, match="heartline-nonce"):
        _check(sign(KEY, "k1", 200, BODY, "POST", PATH, None))


def test_another_label_or_alg_or_unknown_kid_is_refused() -> None:
    headers = sign(KEY, "k1", 200, BODY, "POST", PATH, "nonce-123456")
    relabelled = {k: v.replace("heartline=", "other=") if k.startswith("Signature") else v
                  for k, v in headers.items()}
    with pytest.raises(SignatureError, match="no 'heartline' signature"):
        _check(relabelled)
    with pytest.raises(SignatureError, match="alg"):
        _check({**headers, "Signature-Input": headers["Signature-Input"].replace("ed25519", "hmac-sha256")})
    with pytest.raises(SignatureError, match="not a pinned key"):
        _check(sign(KEY, "k2", 200, BODY, "POST", PATH, "nonce-123456"))


def test_another_status_method_or_path_is_refused() -> None:
    headers = sign(KEY, "k1", 200, BODY, "POST", PATH, "nonce-123456")
    with pytest.raises(SignatureError, match="does not verify"):
        _check(headers, status=201)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_answer(KEYS, status=200, headers={k.lower(): v for k, v in headers.items()}, body=BODY,
                      method="POST", path="/v1/sessions/other/heartbeat", nonce="nonce-123456")


@pytest.mark.parametrize("garbage", ["heartline=(", "heartline=(\"@status\";req", "heartline=:not base64!:",
                                     "=x", "heartline=(\"@status\")x"])
def test_malformed_headers_are_refused_not_crashing(garbage: str) -> None:
    headers = sign(KEY, "k1", 200, BODY, "POST", PATH, "nonce-123456")
    with pytest.raises(SignatureError):
        _check({**headers, "Signature-Input": garbage})
    with pytest.raises(SignatureError):
        _check({**headers, "Signature": garbage})


def test_keyset_reads_a_jwks_and_needs_a_key() -> None:
    assert KeySet.from_jwks(jwks_of("k1", KEY)).kids() == ["k1"]
    with pytest.raises(ValueError, match="at least one key"):
        KeySet.from_jwks({"keys": [{"kty": "RSA", "kid": "r"}]})
