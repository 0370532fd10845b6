"""One delivery attempt, and when the next one is due.

An attempt signs the stored body afresh (`webhook-timestamp` is the time of this attempt, so a receiver's
5-minute tolerance holds for late retries) under the message's fixed `webhook-id`, POSTs it without
following redirects, and reports status, latency and the start of the answer.  Any 2xx is success.
"""

from __future__ import annotations

import datetime as dt
import random
import time

import httpx
from standardwebhooks.webhooks import Webhook

from heartline.settings import Settings

# How much of an answer (or of an error) the delivery log keeps.
EXCERPT_CHARS = 500
USER_AGENT = "Heartline-Webhooks/1"


def retry_delay_s(attempts: int, settings: Settings) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when the delivery gives up.

    Exponential: first_s, 4*first_s, 16*first_s ... capped at max_delay_s, with up to 10 % jitter so a
    recovering receiver is not hit by every retry in the same second.
    """
    if attempts >= settings.webhook_max_attempts:
        return None
    base = min(settings.webhook_retry_max_delay_s, settings.webhook_retry_first_s * 4.0 ** (attempts - 1))
    return base * (1 + random.random() * 0.1)


def signed_headers(message_id: str, secret: str, payload: bytes, at: dt.datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `payload` signed with `secret` at time `at`."""
    signature = Webhook(secret).sign(message_id, at, payload.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature, "content-type": "application/json", "user-agent": USER_AGENT}


class AttemptResult:
    """What one attempt saw: HTTP status (None without an answer), latency, an excerpt, the error."""

    __slots__ = ("error", "excerpt", "latency_ms", "status_code")

    def __init__(self, status_code: int | None, latency_ms: int, excerpt: str | None,
                 error: str | None) -> None:
        self.status_code = status_code
        self.latency_ms = latency_ms
        self.excerpt = excerpt
        self.error = error

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def attempt(client: httpx.AsyncClient, url: str, message_id: str, secret: str,
                  payload: bytes) -> AttemptResult:
    """POST the message once; never raises for what the receiver or the network does."""
    headers = signed_headers(message_id, secret, payload, dt.datetime.now(dt.UTC))
    started = time.perf_counter()
    try:
        response = await client.post(url, content=payload, headers=headers, follow_redirects=False)
        body = response.text[:EXCERPT_CHARS]
        return AttemptResult(response.status_code, _ms(started), body, None)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS]
        return AttemptResult(None, _ms(started), None, error)


def _ms(started: float) -> int:
    return max(0, int((time.perf_counter() - started) * 1000))
