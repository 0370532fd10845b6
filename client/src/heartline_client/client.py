"""One call to the edge, verified: every request carries a fresh Heartline-Nonce, every answer must carry
a signature by a pinned key that covers that nonce, or it is not believed (docs/client.md).

`AsyncClient` is the asyncio API; `Client` offers the same calls to synchronous programs by running an
`AsyncClient` on an event loop in a background thread of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx

from heartline_client.answer_keys import (
    ANSWER_KEY_HEADER,
    SHARE_HEADER,
    AnswerKeyError,
    SessionKey,
    new_share,
    open_answer_key,
)
from heartline_client.errors import Refused, Unreachable
from heartline_client.verify import KeySet, SignatureError, verify_answer

log = logging.getLogger("heartline_client")
T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Evidence:
    """What it takes to verify an answer again later, offline: the signed parts and the request's."""
    status: int
    headers: dict[str, str]   # content-digest, signature-input, signature
    body: bytes
    method: str
    path: str
    nonce: str
    # the session's answer key when the answer may be MACed (a heartbeat's); never in a lease
    session_key: SessionKey | None = None

    def verify(self, keys: KeySet) -> int:
        """Verify again against `keys`; returns the signature's `created`.  Raises SignatureError."""
        return verify_answer(keys, status=self.status, headers=self.headers, body=self.body,
                             method=self.method, path=self.path, nonce=self.nonce,
                             session_key=self.session_key).created


SIGNATURE_HEADERS = ("content-digest", "signature-input", "signature")


@dataclass(frozen=True)
class Answer:
    """A verified answer: its status, its JSON body, and the key and server time that signed it."""
    status: int
    data: dict[str, Any]
    kid: str
    created: int  # Unix seconds, the server's clock (the signature's `created`)
    evidence: Evidence | None = None


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class AsyncClient:
    """The edge's calls for one license, asyncio flavour.

    base_url: the edge, e.g. "https://licenses.example.com" (served at the root: the signature covers
    the path as the edge sees it).  api_key: your X-API-Key.  license_key: the customer's license.
    keys: the pinned KeySet.  transport: an httpx transport, for tests or special networking.
    session_macs: ask for session-bound answer MACs (docs/client.md): heartbeat answers checked with one
    HMAC under a key the Ed25519-signed start answer delivered, instead of an Ed25519 signature.
    """

    def __init__(self, base_url: str, *, api_key: str, license_key: str, keys: KeySet,
                 timeout_s: float = DEFAULT_TIMEOUT_S, transport: httpx.AsyncBaseTransport | None = None,
                 session_macs: bool = True) -> None:
        self.license_key = license_key
        self.keys = keys
        self.session_macs = session_macs
        self.answer_keys: dict[str, SessionKey] = {}  # session token -> its answer key
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport,
                                       headers={"X-API-Key": api_key}, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                   headers: dict[str, str] | None = None, session_key: SessionKey | None = None) -> Answer:
        """Send one request and return its verified answer; raises Refused or Unreachable.  With
        `session_key` an answer MACed under it is believed as well as an Ed25519-signed one."""
        nonce = secrets.token_urlsafe(18)
        try:
            response = await self._http.request(method, path, json=body,
                                                 headers={"Heartline-Nonce": nonce, **(headers or {})})
        except httpx.HTTPError as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}", exc) from None
        sent_path = response.request.url.raw_path.decode("ascii").split("?", 1)[0]
        try:
            verified = verify_answer(self.keys, status=response.status_code, headers=response.headers,
                                     body=response.content, method=method, path=sent_path, nonce=nonce,
                                     session_key=session_key)
        except SignatureError as exc:
            error = Unreachable(f"{method} {path}: answer {response.status_code} not trusted: {exc}", exc)
            error.retry_after_s = _retry_after(response) if response.status_code >= 500 else None
            raise error from None
        try:
            data = json.loads(response.content) if response.content else {}
        except ValueError as exc:
            raise Unreachable(f"{method} {path}: the signed answer is not JSON", exc) from None
        if response.status_code >= 400:
            refusal: dict[str, Any] = data.get("error") or {}
            raise Refused(response.status_code, str(refusal.get("code", "UNKNOWN")),
                          str(refusal.get("message", "")), _retry_after(response),
                          {k: v for k, v in refusal.items() if k not in ("code", "message")})
        evidence = Evidence(status=response.status_code, body=response.content, method=method, path=sent_path,
                            nonce=nonce, headers={h: response.headers[h] for h in SIGNATURE_HEADERS},
                            session_key=session_key)
        return Answer(status=response.status_code, data=data, kid=verified.kid, created=verified.created,
                      evidence=evidence)

    def _license(self, **fields: Any) -> dict[str, Any]:
        return {"license_key": self.license_key, **{k: v for k, v in fields.items() if v is not None}}

    async def validate(self, fingerprint: str) -> Answer:
        return await self.call("POST", "/v1/licenses/validate", self._license(hardware_fingerprint=fingerprint))

    async def activate(self, fingerprint: str, device_name: str | None = None,
                       device_type: str | None = None) -> Answer:
        return await self.call("POST", "/v1/devices/activate", self._license(
            hardware_fingerprint=fingerprint, device_name=device_name, device_type=device_type))

    async def deactivate(self, fingerprint: str) -> Answer:
        return await self.call("POST", "/v1/devices/deactivate", self._license(hardware_fingerprint=fingerprint))

    async def start_session(self, fingerprint: str, device_name: str | None = None,
                            device_type: str | None = None, client_version: str | None = None, *,
                            queue: bool = False, ticket: str | None = None) -> Answer:
        """queue/ticket: the seat queue; a refusal's `Refused.details["queue"]` holds the ticket to send
        back within its renew_within_s.  With session_macs, a fresh X25519 share goes with it and the
        answer's `answer_key` is opened (the answer's Ed25519 signature verified first) and kept for the
        session's heartbeats."""
        private, headers = None, None
        if self.session_macs:
            private, share = new_share()
            headers = {SHARE_HEADER: share}
        answer = await self.call("POST", "/v1/sessions", self._license(
            hardware_fingerprint=fingerprint, device_name=device_name, device_type=device_type,
            client_version=client_version, queue=queue or None, ticket=ticket), headers=headers)
        token = answer.data.get("session_token")
        if private is not None and isinstance(token, str) and "answer_key" in answer.data:
            try:
                self.answer_keys[token] = open_answer_key(private, answer.data["answer_key"], token)
            except AnswerKeyError as exc:  # signed by a pinned key all the same: beats stay Ed25519-checked
                log.warning("heartline.answer_key.unusable %s", exc)
        return answer

    async def heartbeat(self, token: str) -> Answer:
        """One heartbeat; its answer MACed under the session's answer key when the client holds one (the
        edge may sign it with Ed25519 instead, which is believed as ever)."""
        session_key = self.answer_keys.get(token)
        headers = {ANSWER_KEY_HEADER: session_key.kid} if session_key is not None else None
        try:
            return await self.call("POST", f"/v1/sessions/{token}/heartbeat", self._license(), headers=headers,
                                   session_key=session_key)
        except Refused as refused:
            if refused.code == "SESSION_NOT_FOUND":
                self.answer_keys.pop(token, None)
            raise

    async def end_session(self, token: str) -> Answer:
        self.answer_keys.pop(token, None)
        return await self.call("POST", f"/v1/sessions/{token}/end", self._license())

    async def resources(self) -> Answer:
        return await self.call("POST", "/v1/licenses/resources", self._license())

    async def borrow(self, token: str, until: dt.datetime) -> Answer:
        """Hold the session's seat until `until` (timezone-aware) for offline use; see Lease."""
        return await self.call("POST", f"/v1/sessions/{token}/borrow", self._license(until=until.isoformat()))

    async def return_borrow(self, borrow_id: str) -> Answer:
        return await self.call("POST", f"/v1/borrows/{borrow_id}/return", self._license())


class _Portal:
    """An event loop in a daemon thread that synchronous callers hand coroutines to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="heartline-client", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Client:
    """The same calls as AsyncClient for synchronous programs (arguments as AsyncClient's)."""

    def __init__(self, base_url: str, *, api_key: str, license_key: str, keys: KeySet,
                 timeout_s: float = DEFAULT_TIMEOUT_S, transport: httpx.AsyncBaseTransport | None = None,
                 session_macs: bool = True) -> None:
        self.portal = _Portal()
        self.aio = self.portal.call(self._make(base_url, api_key, license_key, keys, timeout_s, transport,
                                               session_macs))

    @staticmethod
    async def _make(*args: Any) -> AsyncClient:
        base_url, api_key, license_key, keys, timeout_s, transport, session_macs = args
        return AsyncClient(base_url, api_key=api_key, license_key=license_key, keys=keys, timeout_s=timeout_s,
                           transport=transport, session_macs=session_macs)

    def close(self) -> None:
        self.portal.call(self.aio.aclose())
        self.portal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def validate(self, fingerprint: str) -> Answer:
        return self.portal.call(self.aio.validate(fingerprint))

    def activate(self, fingerprint: str, device_name: str | None = None, device_type: str | None = None) -> Answer:
        return self.portal.call(self.aio.activate(fingerprint, device_name, device_type))

    def deactivate(self, fingerprint: str) -> Answer:
        return self.portal.call(self.aio.deactivate(fingerprint))

    def start_session(self, fingerprint: str, device_name: str | None = None, device_type: str | None = None,
                      client_version: str | None = None, *, queue: bool = False,
                      ticket: str | None = None) -> Answer:
        return self.portal.call(self.aio.start_session(fingerprint, device_name, device_type, client_version,
                                                       queue=queue, ticket=ticket))

    def heartbeat(self, token: str) -> Answer:
        return self.portal.call(self.aio.heartbeat(token))

    def end_session(self, token: str) -> Answer:
        return self.portal.call(self.aio.end_session(token))

    def resources(self) -> Answer:
        return self.portal.call(self.aio.resources())

    def borrow(self, token: str, until: dt.datetime) -> Answer:
        return self.portal.call(self.aio.borrow(token, until))

    def return_borrow(self, borrow_id: str) -> Answer:
        return self.portal.call(self.aio.return_borrow(borrow_id))
