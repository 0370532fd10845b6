"""RFC 9421 HTTP Message Signatures over the edge's answers, with one Ed25519 signature per answer.

An answer carries `Content-Digest` (RFC 9530, sha-256) and a signature labelled `heartline` covering

    "@status" "content-digest" "@method";req "@path";req ["heartline-nonce";req]

with the parameters `created`, `keyid` and `alg="ed25519"`.  The request's method and path bind the
answer to the call it answers; the client's `Heartline-Nonce`, when it sent one, binds it to that one
request, so a recorded answer cannot be replayed to another.

The signature base is written straight from the bytes of the answer: the body's digest, the status,
and the request line the edge already parsed; the `@signature-params` text and the Signature-Input
header are built once per second (they change only with `created`), so an answer costs one sha-256, one
Ed25519 signature and a few byte joins.

The signature itself comes from libsodium (PyNaCl) rather than from `cryptography`'s OpenSSL: Ed25519
signatures are deterministic (RFC 8032), so both give the same bytes for the same key and message, and
libsodium's takes about half the CPU time here — OpenSSL 3 sets up a signing context on every call
(docs/performance.md).  The signer checks at start that both agree on its key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from cryptography.hazmat.primitives import serialization
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from heartline.signing.keys import ActiveKey

LABEL = "heartline"
NONCE_HEADER = b"heartline-nonce"
# What a nonce may hold: visible ASCII, no separators that RFC 9421's field canonicalisation would
# change (it joins repeated fields with ", " and trims whitespace).
NONCE_PATTERN = re.compile(rb"^[A-Za-z0-9._~+/=-]{8,128}$")
COMPONENTS = '"@status" "content-digest" "@method";req "@path";req'
COMPONENTS_WITH_NONCE = COMPONENTS + ' "heartline-nonce";req'


def content_digest(body: bytes) -> bytes:
    """RFC 9530 Content-Digest field value for `body` (sha-256)."""
    return b"sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()) + b":"


def signature_params(created: int, keyid: str, alg: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """(signature base tail, Signature-Input value), without and with the nonce component, for answers
    signed at second `created` under `keyid` with `alg`."""
    tail = f';created={created};keyid="{keyid}";alg="{alg}"'
    first, second = ((f'"@signature-params": {params}'.encode(), f"{LABEL}={params}".encode())
                     for params in (f"({COMPONENTS}){tail}", f"({COMPONENTS_WITH_NONCE}){tail}"))
    return first, second


def signature_base(status: int, digest: bytes, method: str, path: str, nonce: str | None, params: bytes) -> bytes:
    """The RFC 9421 signature base of an answer: its status and Content-Digest, the request's method, path
    and nonce (when it sent one), then `params` (the "@signature-params" line)."""
    if nonce is None:
        return b"".join((b'"@status": ', _STATUS.get(status) or str(status).encode(), b'\n"content-digest": ',
                         digest, b'\n"@method";req: ', method.encode(), b'\n"@path";req: ', path.encode(),
                         b"\n", params))
    return b"".join((b'"@status": ', _STATUS.get(status) or str(status).encode(), b'\n"content-digest": ',
                     digest, b'\n"@method";req: ', method.encode(), b'\n"@path";req: ', path.encode(),
                     b'\n"heartline-nonce";req: ', nonce.encode(), b"\n", params))


class AnswerSigner:
    """Signs answers with one key; the edge swaps in a new signer when the signing key rotates."""

    __slots__ = ("_created", "_params", "_secret", "kid")

    def __init__(self, key: ActiveKey) -> None:
        self.kid = key.kid
        seed = key.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
        # libsodium's secret key: the 32-byte seed (the RFC 8032 private key) and the public key
        self._secret = crypto_sign_seed_keypair(seed)[1]
        probe = b"heartline signer self-check " + self.kid.encode()
        if self.sign(probe) != key.private_key.sign(probe):  # pragma: no cover - a broken libsodium build
            raise RuntimeError("libsodium's Ed25519 signature differs from cryptography's")
        self._created = -1
        # per second: (signature base tail, Signature-Input value), without and with the nonce component
        self._params: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] = ((b"", b""), (b"", b""))

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature (64 bytes) of `message`."""
        # crypto_sign returns signature + message; the signature is its first 64 bytes
        return crypto_sign(message, self._secret)[:64]

    def _signature_params(self, with_nonce: bool) -> tuple[bytes, bytes]:
        now = int(time.time())
        if now != self._created:
            self._params = signature_params(now, self.kid, "ed25519")
            self._created = now
        return self._params[with_nonce]

    def headers(self, status: int, body: bytes, method: str, path: str,
                nonce: str | None) -> list[tuple[bytes, bytes]]:
        """Content-Digest, Signature-Input and Signature for one answer (ASGI header pairs).

        `path` is the request's path as sent (percent-encoded, no query); `nonce` the request's
        Heartline-Nonce, already checked against NONCE_PATTERN, or None."""
        digest = b"sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()) + b":"
        params, signature_input = self._signature_params(nonce is not None)
        base = signature_base(status, digest, method, path, nonce, params)
        signature = base64.b64encode(crypto_sign(base, self._secret)[:64])
        return [(b"content-digest", digest),
                (b"signature-input", signature_input),
                (b"signature", b"heartline=:" + signature + b":")]


# status codes as the signature base writes them, made once
_STATUS = {code: str(code).encode() for code in range(100, 600)}


def request_path(raw_path: bytes | None, path: str) -> str:
    """The @path of a request: its path as sent, made safe for a signature base (printable ASCII)."""
    if raw_path is not None:
        text = raw_path.decode("latin-1")
    else:
        text = path
    if text.isascii() and text.isprintable():
        return text or "/"
    return "".join(c if c.isascii() and c.isprintable() else f"%{ord(c):02X}" for c in text)


class SessionMac:
    """Signs heartbeat answers with RFC 9421 `alg="hmac-sha256"` under a session's answer key
    (heartline/signing/session_keys.py): K = HMAC-SHA256(master, token), recomputed per answer, then one
    HMAC over the same signature base as the Ed25519 signature's.  One per signing key the edge holds;
    `keyid` is "session:<kid>"."""

    __slots__ = ("_created", "_master", "_params", "kid")

    def __init__(self, kid: str, master: bytes) -> None:
        self.kid = kid
        self._master = master
        self._created = -1
        self._params: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] = ((b"", b""), (b"", b""))

    def __repr__(self) -> str:  # never print a master key
        return f"SessionMac(kid={self.kid!r})"

    @property
    def master(self) -> bytes:
        return self._master

    def _signature_params(self, with_nonce: bool) -> tuple[bytes, bytes]:
        now = int(time.time())
        if now != self._created:
            self._params = signature_params(now, f"session:{self.kid}", "hmac-sha256")
            self._created = now
        return self._params[with_nonce]

    def headers(self, token: str, status: int, body: bytes, method: str, path: str,
                nonce: str | None) -> list[tuple[bytes, bytes]]:
        """Content-Digest, Signature-Input and Signature for one answer to session `token` (canonical)."""
        digest = b"sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()) + b":"
        params, signature_input = self._signature_params(nonce is not None)
        base = signature_base(status, digest, method, path, nonce, params)
        key = hmac.digest(self._master, token.encode(), "sha256")
        signature = base64.b64encode(hmac.digest(key, base, "sha256"))
        return [(b"content-digest", digest),
                (b"signature-input", signature_input),
                (b"signature", b"heartline=:" + signature + b":")]
