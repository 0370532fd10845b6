"""The one base of every refusal in Heartline: a stable machine-readable `code`, an HTTP `status` and a
message for people.  Domain modules subclass it (edge, resources, CRM); the edge renders any of them."""

from __future__ import annotations


class HeartlineError(Exception):
    status = 400
    code = "BAD_REQUEST"
    message = "The request cannot be served."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or type(self).message
        super().__init__(self.message)
        self.headers = headers or {}
