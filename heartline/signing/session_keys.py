"""Session-bound answer keys: heartbeat answers MACed (RFC 9421 `hmac-sha256`) with a key per session.

A client that opts in sends an X25519 public key (`Heartline-Key-Share`) when it starts a session.  The
edge answers with the session's answer key K sealed to that share, inside the start answer that is
Ed25519-signed as every answer is; the client then asks for MACed heartbeat answers
(`Heartline-Answer-Key: <kid>`) and checks them with K — one HMAC instead of one Ed25519 signature per
heartbeat (docs/client.md, "Session-bound answer MACs").

Nothing is stored: K is derived from the session token and a master key that is itself derived from the
Ed25519 signing key's private seed,

    master(kid) = HKDF-SHA256(seed(kid), salt=none, info=MASTER_INFO)         (32 bytes)
    K           = HMAC-SHA256(master(kid), session_token as ASCII)            (32 bytes)

so every edge holding the signing key computes the same K for a token, and K is worth nothing without
the private key.  Sealing K to the client's share:

    shared  = X25519(server ephemeral private, client share)
    aead    = HKDF-SHA256(shared, salt=client share || server ephemeral public,
                          info=SEAL_INFO || session_token)                  (32 bytes, AES-256-GCM)
    sealed  = AES-256-GCM(aead, nonce=12 zero bytes, K, associated data=kid)

The AEAD key is new for every seal (a fresh ephemeral), so the fixed nonce is never reused under a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_INFO = b"heartline session answers v1"
SEAL_INFO = b"heartline answer key seal v1 "
SEAL_NONCE = bytes(12)
ALG = "hmac-sha256"
SHARE_BYTES = 32
# keyid of a MACed answer: "session:" + the kid of the signing key whose master derived K
KEYID_PREFIX = "session:"


def master_key(private_key: Ed25519PrivateKey) -> bytes:
    """The master of one signing key: HKDF-SHA256 of its 32-byte private seed."""
    seed = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASTER_INFO).derive(seed)


def session_key(master: bytes, token: str) -> bytes:
    """K of the session `token` (canonical UUID text) under `master`."""
    return hmac.digest(master, token.encode("ascii"), hashlib.sha256)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    """Strict base64url, padding optional; raises ValueError."""
    if not text or len(text) > 64 or not all(c.isalnum() or c in "-_=" for c in text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def read_share(text: str) -> X25519PublicKey:
    """A client's Heartline-Key-Share value: base64url of a 32-byte X25519 public key; raises ValueError."""
    raw = from_b64url(text.strip())
    if len(raw) != SHARE_BYTES:
        raise ValueError("a key share is 32 bytes")
    share = X25519PublicKey.from_public_bytes(raw)
    # a low-order point (all zeros, ...) gives no shared secret: refuse it before the session starts
    X25519PrivateKey.generate().exchange(share)  # raises ValueError
    return share


def _aead_key(shared: bytes, client_share: bytes, ephemeral: bytes, token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=client_share + ephemeral,
                info=SEAL_INFO + token.encode("ascii")).derive(shared)


@dataclass(frozen=True)
class SealedKey:
    kid: str
    ephemeral: bytes  # the server's X25519 public key, raw 32 bytes
    sealed: bytes     # AES-256-GCM ciphertext and tag of K

    def __repr__(self) -> str:
        return f"SealedKey(kid={self.kid!r})"


def seal(share: X25519PublicKey, kid: str, key: bytes, token: str) -> SealedKey:
    """Seal the answer key `key` of session `token` to the client's `share`."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)
    client_share = share.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(share)
    aead = AESGCM(_aead_key(shared, client_share, ephemeral_public, token))
    return SealedKey(kid=kid, ephemeral=ephemeral_public, sealed=aead.encrypt(SEAL_NONCE, key, kid.encode()))


def open_sealed(private: X25519PrivateKey, kid: str, ephemeral: bytes, sealed: bytes, token: str) -> bytes:
    """The client's side of `seal` (the client library has its own copy); raises InvalidTag/ValueError."""
    client_share = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    aead = AESGCM(_aead_key(shared, client_share, ephemeral, token))
    return aead.decrypt(SEAL_NONCE, sealed, kid.encode())
