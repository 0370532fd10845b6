"""The one base of every refusal in Heartline: a stable machine-readable `code`, an HTTP `status` and a
message for people.  Domain modules subclass it (edge, resources, CRM); the edge renders any of them."""

from __future__ import annotations

from typing import Any


class HeartlineError(Exception):
    status = 400
    code = "BAD_REQUEST"
    message = "The request cannot be served."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        """headers: added to the HTTP answer; details: extra fields of the error body that the edge's
        ErrorDetail declares (e.g. the seat holders of SESSION_LIMIT_REACHED)."""
        self.message = message or type(self).message
        super().__init__(self.message)
        self.headers = headers or {}
        self.details = details or {}
