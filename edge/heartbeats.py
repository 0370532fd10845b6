"""POST /v1/sessions/{token}/heartbeat, the hot path: no PostgreSQL, one Redis round trip.

API key and license id come from process memory; the plane's heartbeat script checks, extends and
records in one EVALSHA.  Only a license missing from the plane's cache costs a read-through and one
retry.

The route is a plain ASGI app rather than a Request handler: it reads its few bytes of body and the one
header it needs straight from the ASGI scope and receive channel (docs/architecture.md, performance notes, measured Starlette's Request
body plumbing at ~40 % of a bare endpoint's throughput).  Errors are raised as EdgeErrors all the same;
the app's one handler renders them.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.bodies import decode
from edge.errors import (
    BodyTooLarge,
    HeartbeatTooFrequent,
    InvalidSessionToken,
    LicenseNotFound,
    SessionLimitReached,
)
from edge.metrics import EdgeMetrics, ResponseStatus
from edge.schemas import LicenseRequest
from edge.sessions import refusal
from edge.signing import InvalidNonce, judge_nonce, signed_send
from edge.state import EdgeState
from heartline.plane.sessions import PlaneCode
from heartline.signing.signer import NONCE_HEADER, request_path

log = logging.getLogger("heartline.edge.heartbeats")

_CONTENT_TYPE = (b"content-type", b"application/json")
# Content-Length header pairs by body length, made once (a heartbeat's answer is ~90 bytes)
_CONTENT_LENGTH = [(b"content-length", str(n).encode()) for n in range(512)]


def _content_length(size: int) -> tuple[bytes, bytes]:
    return _CONTENT_LENGTH[size] if size < 512 else (b"content-length", str(size).encode())
# A session token already in canonical form (what clients send back) needs no round trip through uuid.UUID
_CANONICAL_TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_API_KEY = b"x-api-key"
_CONTENT_LENGTH_NAME = b"content-length"
# A client holding its session's answer key asks for MACed answers with the kid it got it under
# (heartline/signing/session_keys.py, docs/client.md)
ANSWER_KEY_HEADER = b"heartline-answer-key"


def session_token(raw: str) -> str:
    """The {token} path parameter in canonical form (str(uuid.UUID(raw))); anything but a UUID is refused."""
    if _CANONICAL_TOKEN.fullmatch(raw):
        return raw
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidSessionToken() from None


class AnswerBody:
    """The 200 answer's body, byte for byte what msgspec writes for HeartbeatResponse (edge/schemas.py):
    `{"expires_at":"<RFC 3339, UTC>","next_heartbeat_in_s":N,"offline_grace_s":N}`, with the deadline's
    date and time formatted once per second instead of a datetime and a struct per answer.
    tests/edge/test_heartbeats.py compares it with msgspec's encoding (the same bytes for any deadline
    before 2100; past ~2112 the float division of utc_from_ms drifts by microseconds, this does not)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def __call__(self, deadline_ms: int, interval_s: int, offline_grace_s: int) -> bytes:
        second, millis = divmod(deadline_ms, 1000)
        if second != self._second:
            moment = dt.datetime.fromtimestamp(second, dt.UTC)
            self._prefix = b'{"expires_at":"' + moment.strftime("%Y-%m-%dT%H:%M:%S").encode()
            self._second = second
        # msgspec writes microseconds, and no fraction at all for a whole second
        fraction = b"" if millis == 0 else b".%03d000" % millis
        return b"".join((self._prefix, fraction, b'Z","next_heartbeat_in_s":%d,"offline_grace_s":%d}'
                         % (interval_s, offline_grace_s)))


class HeartbeatEndpoint:
    """POST /v1/sessions/{token}/heartbeat: keep a session alive (unsigned: the fast path signs)."""

    def __init__(self) -> None:
        self.body = AnswerBody()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: EdgeState = scope["app"].state.edge
        limit = state.settings.max_body_bytes
        api_keys = []
        for name, value in scope["headers"]:
            if name == _API_KEY:
                api_keys.append(value.decode("latin-1"))
            elif name == _CONTENT_LENGTH_NAME and value.isdigit() and int(value) > limit:
                raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        payload = await self.accept(state, receive, scope["path_params"]["token"], api_keys)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_CONTENT_TYPE, _content_length(len(payload))]})
        await send({"type": "http.response.body", "body": payload})

    async def accept(self, state: EdgeState, receive: Receive, raw_token: str, api_keys: list[str]) -> bytes:
        """The body of the 200 answer to an accepted heartbeat; raises the refusal otherwise.  The
        Content-Length header was checked by the caller."""
        if len(api_keys) != 1 or state.api_keys.known(api_keys[0]) is None:
            await state.api_keys.check(api_keys)
        limit = state.settings.max_body_bytes
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            raw = message.get("body", b"")
            if len(raw) > limit:
                raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        else:
            raw = await _read_body(message, receive, limit)
        body = decode(raw, LicenseRequest)
        token = session_token(raw_token)
        license_id = state.licenses.known_id(body.license_key)
        if license_id is None:
            license_id = await state.licenses.license_id(body.license_key)
            if license_id is None:
                raise LicenseNotFound()

        outcome = await state.plane.heartbeat(license_id, token)
        if outcome.code is PlaneCode.LICENSE_NOT_CACHED:
            if await state.licenses.load(license_id) is None:
                raise LicenseNotFound()
            outcome = await state.plane.heartbeat(license_id, token)
        if outcome.code is PlaneCode.OK:
            return self.body(outcome.deadline_ms, outcome.interval_s, outcome.offline_grace_s)
        if outcome.code is PlaneCode.HEARTBEAT_TOO_FREQUENT:
            retry_after = max(1, math.ceil(outcome.retry_after_ms / 1000))
            raise HeartbeatTooFrequent(headers={"Retry-After": str(retry_after)})
        if outcome.code is PlaneCode.SESSION_LIMIT_REACHED:
            # lapsed, within the license's resume grace, and no seat free to revive it: retry later
            raise SessionLimitReached(details={"limit": outcome.limit, "in_use": outcome.in_use})
        if outcome.code is not PlaneCode.SESSION_NOT_FOUND:
            log.info("session.heartbeat.refused license_id=%s code=%s", license_id, outcome.code)
        raise refusal(outcome.code)


async def _read_body(first: Message, receive: Receive, limit: int) -> bytes:
    """The body of a request whose first message did not hold all of it."""
    body = b""
    message = first
    while True:
        if message["type"] != "http.request":  # client went away
            return body
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        if not message.get("more_body", False):
            return body
        message = await receive()


heartbeat = HeartbeatEndpoint()

HEARTBEAT_ROUTE = "/v1/sessions/{token}/heartbeat"
_PREFIX, _SUFFIX = "/v1/sessions/", "/heartbeat"
_START, _END = len(_PREFIX), -len(_SUFFIX)


class HeartbeatFastPath:
    """Outermost middleware: heartbeats go straight to their endpoint, ahead of the router, the metrics
    and signing wrappers and the exception middleware (≈10 µs of a ≈50 µs heartbeat, measured by
    loadtests.bench).

    It keeps what those layers give: the same metrics under the same route label, the same signature
    (edge/signing.py), and the same error rendering (the app's handlers) for refusals and for Redis or
    PostgreSQL being unreachable.  Anything else propagates to Starlette's server-error middleware (500,
    logged) as before.  An accepted heartbeat is answered here directly — headers made once, the
    signature's headers added, no wrapper around `send` — and counted in a plain tally
    (edge/metrics.py); refusals go through the app's handlers and the signing `send` as before.
    """

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.accepted = metrics.tally(HEARTBEAT_ROUTE, "POST", 200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        token = path[_START:_END] if path.startswith(_PREFIX) and path.endswith(_SUFFIX) else ""
        if not token or "/" in token or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: EdgeState = scope["app"].state.edge
        limit = state.settings.max_body_bytes
        # one pass over the headers for what the heartbeat reads: API key(s), Content-Length, the nonce
        api_keys: list[str] = []
        nonce: bytes | None = None
        nonces = 0
        answer_key: bytes | None = None
        too_large = False
        for name, value in scope["headers"]:
            if name == _API_KEY:
                api_keys.append(value.decode("latin-1"))
            elif name == _CONTENT_LENGTH_NAME:
                if value.isdigit() and int(value) > limit:
                    too_large = True
            elif name == NONCE_HEADER:
                nonce, nonces = value, nonces + 1
            elif name == ANSWER_KEY_HEADER:
                answer_key = value
        nonce_text, acceptable = judge_nonce(nonce, nonces)
        answered = False
        try:
            if not acceptable:
                raise InvalidNonce()
            if too_large:
                raise BodyTooLarge(f"The body may be at most {limit} bytes.")
            payload = await heartbeat.accept(state, receive, token, api_keys)
            headers = [_CONTENT_TYPE, _content_length(len(payload))]
            signer = state.signing.signer
            if signer is not None:
                # MACed with the session's answer key when the client holds one whose master this edge
                # has; Ed25519 otherwise (an unknown or retired kid included: the client takes either)
                mac = state.signing.macs.get(answer_key) if answer_key is not None else None
                sent_path = request_path(scope.get("raw_path"), path)
                if mac is not None:
                    headers += mac.headers(session_token(token), 200, payload, "POST", sent_path, nonce_text)
                else:
                    headers += signer.headers(200, payload, "POST", sent_path, nonce_text)
            answered = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        except Exception as exc:
            if not answered:
                await self._refuse(scope, receive, send, exc, token, nonce_text, started)
                return
            self.metrics.observe(HEARTBEAT_ROUTE, "POST", 200, time.perf_counter() - started)
            raise
        except BaseException:  # cancelled (the client went away): counted as the metrics middleware would
            self.metrics.observe(HEARTBEAT_ROUTE, "POST", 200 if answered else 500, time.perf_counter() - started)
            raise
        self.accepted.add(time.perf_counter() - started)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: Exception, token: str,
                      nonce: str | None, started: float) -> None:
        """Answer a refusal or a failure as the app's handler for it would, signed; counted like the
        metrics middleware counts (500 when no handler answers and the error propagates)."""
        answered = ResponseStatus(send)
        try:
            handler = _handler_for(scope["app"], exc)
            if handler is None:
                raise exc
            scope["path_params"] = {"token": token}
            response = await handler(Request(scope), exc)
            # Refusals are signed too (edge/signing.py), as the middleware this path skips would.
            await response(scope, receive, signed_send(scope, answered, nonce))
        finally:
            self.metrics.observe(HEARTBEAT_ROUTE, "POST", answered.status, time.perf_counter() - started)


def _handler_for(app: Any, exc: Exception) -> Any:
    """The app's exception handler for `exc` (by its class hierarchy), as Starlette would pick it."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
