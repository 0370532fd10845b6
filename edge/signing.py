"""Signed answers at the edge: the signing key held in memory, the middleware that signs every answer of
the license, device, session and borrow calls (2xx and refusals alike), and GET /v1/keys.

The key is read from PostgreSQL at start (the first one is created when there is none) and re-read every
`signing_key_refresh_s`, so a rotation reaches every edge within that time; between reads no request
looks a key up.  The heartbeat fast path signs through the same `SignedSend` (edge/heartbeats.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge import errors
from edge.errors import EdgeError
from heartline.settings import Settings
from heartline.signing.jwks import encode_jwks
from heartline.signing.keys import ActiveKey, KeyBox, KeyStatus, ensure_active_key, list_keys, load_active_key
from heartline.signing.session_keys import master_key
from heartline.signing.signer import NONCE_HEADER, NONCE_PATTERN, AnswerSigner, SessionMac, request_path

log = logging.getLogger("heartline.edge.signing")

# Calls whose answers are signed: everything a licensed client acts upon.
SIGNED_PREFIXES = ("/v1/licenses/", "/v1/devices/", "/v1/sessions", "/v1/borrows/")
# Clients and proxies may keep the key set this long; a rotation publishes the new key before it signs
# (docs/client.md), so a cached set never lacks the key of an answer for longer than this.
JWKS_MAX_AGE_S = 300


class InvalidNonce(EdgeError):
    status, code, message = 422, "INVALID_NONCE", \
        "Heartline-Nonce must be 8-128 characters of A-Z a-z 0-9 . _ ~ + / = -, sent once."


class EdgeSigning:
    """The signing key and the JWKS of one edge process."""

    def __init__(self, pool: asyncpg.Pool, box: KeyBox, settings: Settings) -> None:
        self.pool = pool
        self.box = box
        self.settings = settings
        self.signer: AnswerSigner | None = None
        # session-bound answer MACs (heartline/signing/session_keys.py): one per signing key this edge has
        # held since it started, by kid as the Heartline-Answer-Key header sends it; a retired key's goes
        self.macs: dict[bytes, SessionMac] = {}
        self.jwks = b'{"keys":[]}'
        self.etag = ""

    async def start(self) -> None:
        """Load the signing key (creating the first one) and the key set.  With PostgreSQL unreachable
        the edge starts all the same and answers unsigned (clients refuse those, as they would a fake
        server's) until the refresher has loaded the key."""
        try:
            signer = self._use(await ensure_active_key(self.pool, self.box))
            await self._publish()
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            log.warning("edge.signing.unavailable at start error=%s; answers unsigned until the key loads",
                        type(exc).__name__)
            return
        log.info("edge.signing.ready kid=%s", signer.kid)

    async def refresh(self) -> bool:
        """Pick up a rotation; True when the signing key changed.  A private key is opened only then."""
        if self.signer is None:
            signer = self._use(await ensure_active_key(self.pool, self.box))
            await self._publish()
            log.info("edge.signing.ready kid=%s", signer.kid)
            return True
        active_kid = await self._publish()
        if active_kid is None or active_kid == self.signer.kid:
            return False
        active = await load_active_key(self.pool, self.box)
        if active is None:
            return False
        self._use(active)
        log.info("edge.signing.rotated kid=%s", active.kid)
        return True

    def _use(self, key: ActiveKey) -> AnswerSigner:
        """Sign with `key` from now on; its session master joins the ones kept for MACed heartbeats."""
        signer = AnswerSigner(key)
        self.macs = {**self.macs, key.kid.encode(): SessionMac(key.kid, master_key(key.private_key))}
        self.signer = signer
        return signer

    def answer_key(self) -> tuple[str, SessionMac] | None:
        """The kid and MAC signer that session starts hand out answer keys for: the signing key's."""
        signer = self.signer
        if signer is None:
            return None
        mac = self.macs.get(signer.kid.encode())
        return None if mac is None else (signer.kid, mac)

    async def _publish(self) -> str | None:
        """Rebuild the JWKS; returns the signing key's kid."""
        found = await list_keys(self.pool)
        body = encode_jwks(found)
        self.jwks = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        retired = {k.kid.encode() for k in found if k.status is KeyStatus.RETIRED}
        if retired & self.macs.keys():  # a retired key's sessions fall back to Ed25519 answers
            self.macs = {kid: mac for kid, mac in self.macs.items() if kid not in retired}
        return next((k.kid for k in found if k.status is KeyStatus.ACTIVE), None)

    async def run_refresher(self) -> None:
        """Background task: re-read the keys every `signing_key_refresh_s` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.signing_key_refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: keep signing with the key we hold
                log.warning("edge.signing.refresh_failed error=%s", type(exc).__name__)


def read_nonce(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """The request's Heartline-Nonce (None when absent) and whether it is acceptable."""
    found: bytes | None = None
    count = 0
    for name, value in headers:
        if name == NONCE_HEADER:
            found, count = value, count + 1
    return judge_nonce(found, count)


def judge_nonce(found: bytes | None, count: int) -> tuple[str | None, bool]:
    """The nonce of a request that sent `count` Heartline-Nonce headers, the last `found` (None when
    absent), and whether it is acceptable: at most one, of NONCE_PATTERN (the heartbeat's fast path reads
    its headers in a pass of its own and judges the nonce here too)."""
    if count > 1 or (found is not None and NONCE_PATTERN.match(found) is None):
        return None, False
    return (found.decode() if found is not None else None), True


class SignedSend:
    """A `send` that holds the response start until the body is complete, then sends it with
    Content-Digest, Signature-Input and Signature added."""

    __slots__ = ("chunks", "method", "nonce", "path", "send", "signer", "start")

    def __init__(self, send: Send, signer: AnswerSigner, method: str, path: str, nonce: str | None) -> None:
        self.send = send
        self.signer = signer
        self.method = method
        self.path = path
        self.nonce = nonce
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        if kind != "http.response.body" or self.start is None:
            await self.send(message)
            return
        body = message.get("body", b"")
        if message.get("more_body", False):
            self.chunks.append(body)
            return
        if self.chunks:
            self.chunks.append(body)
            body = b"".join(self.chunks)
        start = self.start
        headers = [*start["headers"], *self.signer.headers(start["status"], body, self.method, self.path,
                                                           self.nonce)]
        await self.send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def signed_send(scope: Scope, send: Send, nonce: str | None) -> Send:
    """`send` wrapped to sign the answer to this request, or `send` itself when signing is off."""
    signer = scope["app"].state.edge.signing.signer
    if signer is None:
        return send
    return SignedSend(send, signer, scope["method"], request_path(scope.get("raw_path"), scope["path"]), nonce)


class SignedAnswers:
    """Signs every answer under SIGNED_PREFIXES; refuses a malformed Heartline-Nonce (signed, 422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(SIGNED_PREFIXES):
            await self.app(scope, receive, send)
            return
        nonce, acceptable = read_nonce(scope["headers"])
        signed = signed_send(scope, send, nonce)
        if not acceptable:
            response = errors.render(Request(scope), InvalidNonce())
            await response(scope, receive, signed)
            return
        await self.app(scope, receive, signed)


async def keys(request: Request) -> Response:
    """GET /v1/keys: the public keys that verify answers, as a JWKS (RFC 8037 OKP keys); cacheable."""
    signing: EdgeSigning = request.app.state.edge.signing
    headers = {"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}", "ETag": signing.etag}
    if request.headers.get("if-none-match") == signing.etag:
        return Response(status_code=304, headers=headers)
    return Response(signing.jwks, media_type="application/jwk-set+json", headers=headers)
