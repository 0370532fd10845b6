"""What a call can end in besides an answer: a refusal the server signed, or no trustworthy answer."""

from __future__ import annotations

from heartline_client.verify import SignatureError


class HeartlineError(Exception):
    """Base of every error of this library."""


class Refused(HeartlineError):
    """The server refused, with a stable `code` (e.g. SESSION_LIMIT_REACHED) in a signed answer."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


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
