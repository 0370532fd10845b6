"""Failed sign-in attempts counted per key, and the device cookie that exempts a known browser.

A `Lockout` counts failures on Flask-Limiter's storage (the `limits` library): `max_failures` within
`window_s` lock that key until the window ends. The sign-in uses two:

- wrong passwords per account, so guessing one account's password from many addresses is slow;
- wrong second factors per account *and client address*, so a person who knows the password cannot keep
  the real admin's second factor locked from elsewhere.

Per-account locks would let anyone lock an admin out with wrong passwords; a browser that completed a
sign-in of that account before carries a signed device cookie and is exempt from the account's lock
(it still obeys the per-address limit).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import Response, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.strategies import RateLimiter

DEVICE_COOKIE = "heartline_device"
DEVICE_COOKIE_MAX_AGE_S = 90 * 24 * 3600
_DEVICE_SALT = "heartline-admin-device"


@dataclass(frozen=True)
class Lockout:
    """Failures per key; `namespace` keeps the counters of different lockouts apart."""

    limiter: RateLimiter
    item: RateLimitItem
    namespace: str

    @classmethod
    def of(cls, limiter: RateLimiter, namespace: str, max_failures: int, window_s: int) -> Lockout:
        return cls(limiter, RateLimitItemPerSecond(max(max_failures, 1), max(window_s, 1)), namespace)

    def locked_until(self, *key: str) -> dt.datetime | None:
        if self.limiter.test(self.item, self.namespace, *key):
            return None
        reset = self.limiter.get_window_stats(self.item, self.namespace, *key).reset_time
        return dt.datetime.fromtimestamp(reset, dt.UTC)

    def fail(self, *key: str) -> dt.datetime | None:
        """Count a failure; returns when the lock ends if this failure locked the key."""
        self.limiter.hit(self.item, self.namespace, *key)
        return self.locked_until(*key)

    def clear(self, *key: str) -> None:
        self.limiter.clear(self.item, self.namespace, *key)


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_DEVICE_SALT)


def account_key(username: str) -> str:
    return username.strip().lower()


def known_device(username: str) -> bool:
    """True when the request carries a device cookie from an earlier complete sign-in of `username`."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return False
    try:
        names = _serializer().loads(raw, max_age=DEVICE_COOKIE_MAX_AGE_S)
    except BadSignature:
        return False
    return isinstance(names, list) and account_key(username) in names


def remember_device(response: Response, username: str) -> Response:
    """Add `username` to the browser's device cookie (a browser may sign in several accounts)."""
    names: list[str] = []
    raw = request.cookies.get(DEVICE_COOKIE)
    if raw:
        try:
            loaded = _serializer().loads(raw, max_age=DEVICE_COOKIE_MAX_AGE_S)
            names = [n for n in loaded if isinstance(n, str)] if isinstance(loaded, list) else []
        except BadSignature:
            names = []
    key = account_key(username)
    names = [n for n in names if n != key][-9:] + [key]
    response.set_cookie(DEVICE_COOKIE, _serializer().dumps(names), max_age=DEVICE_COOKIE_MAX_AGE_S,
                        httponly=True, samesite="Lax", path="/",
                        secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")))
    return response
