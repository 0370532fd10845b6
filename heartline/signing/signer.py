"""RFC 9421 HTTP Message Signatures over the edge's answers, with one Ed25519 signature per answer.

An answer carries `Content-Digest` (RFC 9530, sha-256) and a signature labelled `heartline` covering

    "@status" "content-digest" "@method";req "@path";req ["heartline-nonce";req]

with the parameters `created`, `keyid` and `alg="ed25519"`.  The request's method and path bind the
answer to the call it answers; the client's `Heartline-Nonce`, when it sent one, binds it to that one
request, so a recorded answer cannot be replayed to another.

The signature base is written straight from the bytes of the answer: the body's digest, the status,
and the request line the edge already parsed; the `@signature-params` text is built once per second
(it changes only with `created`), so an answer costs one sha-256 and one Ed25519 signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

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


class AnswerSigner:
    """Signs answers with one key; the edge swaps in a new signer when the signing key rotates."""

    __slots__ = ("_created", "_params", "_sign", "kid")

    def __init__(self, key: ActiveKey) -> None:
        self.kid = key.kid
        self._sign = key.private_key.sign
        self._created = -1
        self._params: tuple[str, str] = ("", "")

    def _signature_params(self, with_nonce: bool) -> str:
        now = int(time.time())
        if now != self._created:
            tail = f';created={now};keyid="{self.kid}";alg="ed25519"'
            self._params = (f"({COMPONENTS}){tail}", f"({COMPONENTS_WITH_NONCE}){tail}")
            self._created = now
        return self._params[with_nonce]

    def headers(self, status: int, body: bytes, method: str, path: str,
                nonce: str | None) -> list[tuple[bytes, bytes]]:
        """Content-Digest, Signature-Input and Signature for one answer (ASGI header pairs).

        `path` is the request's path as sent (percent-encoded, no query); `nonce` the request's
        Heartline-Nonce, already checked against NONCE_PATTERN, or None."""
        digest = content_digest(body)
        params = self._signature_params(nonce is not None)
        base = (f'"@status": {status}\n"content-digest": {digest.decode()}\n"@method";req: {method}\n'
                f'"@path";req: {path}\n')
        if nonce is not None:
            base += f'"heartline-nonce";req: {nonce}\n'
        base += f'"@signature-params": {params}'
        signature = base64.b64encode(self._sign(base.encode()))
        return [(b"content-digest", digest),
                (b"signature-input", f"{LABEL}={params}".encode()),
                (b"signature", b"heartline=:" + signature + b":")]


def request_path(raw_path: bytes | None, path: str) -> str:
    """The @path of a request: its path as sent, made safe for a signature base (printable ASCII)."""
    if raw_path is not None:
        text = raw_path.decode("latin-1")
    else:
        text = path
    if text.isascii() and text.isprintable():
        return text or "/"
    return "".join(c if c.isascii() and c.isprintable() else f"%{ord(c):02X}" for c in text)
