"""What a call can end in besides an answer: a refusal the server signed, or no trustworthy answer."""

from __future__ import annotations

from typing import Any

from heartline_client.verify import SignatureError


class HeartlineError(Exception):
    """Base of every error of this library."""


class Refused(HeartlineError):
    """The server refused, with a stable `code` (e.g. SESSION_LIMIT_REACHED) in a signed answer."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        # The error object's other fields, as signed: e.g. `limit` and `in_use` of SESSION_LIMIT_REACHED
        # and DEVICE_LIMIT_REACHED, `seat_holders`, `queue` (a queued start's ticket).
        self.details: dict[str, Any] = details or {}

    @property
    def limit(self) -> int | None:
        """SESSION_LIMIT_REACHED / DEVICE_LIMIT_REACHED: the license's limit."""
        value = self.details.get("limit")
        return value if isinstance(value, int) else None

    @property
    def in_use(self) -> int | None:
        """SESSION_LIMIT_REACHED / DEVICE_LIMIT_REACHED: how many sessions or devices are in use."""
        value = self.details.get("in_use")
        return value if isinstance(value, int) else None


class Unreachable(HeartlineError):
    """No trustworthy answer: the server could not be reached, answered 5xx without a signature, or
    answered something that does not verify (`cause` is then the SignatureError)."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.cause = cause
        # A 5xx's Retry-After, honoured for timing only (it is not signed, so it is capped by the caller).
        self.retry_after_s: float | None = None

    @property
    def untrusted(self) -> bool:
        """True when an answer came but failed verification (a fake server, a tampered or replayed answer)."""
        return isinstance(self.cause, SignatureError)


LICENSE_REFUSALS = frozenset({"LICENSE_SUSPENDED", "LICENSE_REVOKED", "LICENSE_EXPIRED",
                              "LICENSE_NOT_YET_VALID", "LICENSE_NOT_FOUND"})
