"""Session-bound answer MACs, the client's side (docs/client.md, "Session-bound answer MACs").

At session start the client sends an X25519 public key (`Heartline-Key-Share`); the Ed25519-signed start
answer carries `answer_key`, the session's key K sealed to it.  Opened here:

    shared = X25519(client private, ephemeral)
    aead   = HKDF-SHA256(shared, salt=client share || ephemeral,
                         info=b"heartline answer key seal v1 " || session_token)      (32 bytes)
    K      = AES-256-GCM-decrypt(aead, nonce=12 zero bytes, sealed, associated data=kid)

Heartbeats then send `Heartline-Answer-Key: <kid>` and their answers are signed with RFC 9421
`alg="hmac-sha256"`, `keyid="session:<kid>"` under K (verify.py checks them, and Ed25519 ones still).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SHARE_HEADER = "Heartline-Key-Share"
ANSWER_KEY_HEADER = "Heartline-Answer-Key"
ALG = "hmac-sha256"
KEYID_PREFIX = "session:"
SEAL_INFO = b"heartline answer key seal v1 "
SEAL_NONCE = bytes(12)


class AnswerKeyError(Exception):
    """An answer_key that does not open (wrong share, changed in transit, malformed)."""


@dataclass(frozen=True)
class SessionKey:
    """A session's answer key: `kid` names the signing key it was derived under; `key` is K."""
    kid: str
    key: bytes = field(repr=False)


def new_share() -> tuple[X25519PrivateKey, str]:
    """A fresh X25519 key for one session start, and the Heartline-Key-Share value to send."""
    private = X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url(text: Any) -> bytes:
    if not isinstance(text, str):
        raise AnswerKeyError("answer_key fields must be strings")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise AnswerKeyError("malformed base64url in answer_key") from None


def open_answer_key(private: X25519PrivateKey, answer_key: Any, token: str) -> SessionKey:
    """K from the start answer's `answer_key` (already verified as part of the Ed25519-signed body)."""
    if not isinstance(answer_key, dict) or answer_key.get("alg") != ALG or not isinstance(answer_key.get("kid"), str):
        raise AnswerKeyError("answer_key is not an hmac-sha256 key")
    kid = answer_key["kid"]
    ephemeral = _b64url(answer_key.get("ephemeral"))
    sealed = _b64url(answer_key.get("sealed"))
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    except ValueError:
        raise AnswerKeyError("answer_key's ephemeral key is not a usable X25519 key") from None
    share = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    aead = HKDF(algorithm=hashes.SHA256(), length=32, salt=share + ephemeral,
                info=SEAL_INFO + token.encode("ascii")).derive(shared)
    try:
        key = AESGCM(aead).decrypt(SEAL_NONCE, sealed, kid.encode())
    except InvalidTag:
        raise AnswerKeyError("answer_key does not open with this session's share") from None
    if len(key) != 32:
        raise AnswerKeyError("answer_key holds no 32-byte key")
    return SessionKey(kid=kid, key=key)
