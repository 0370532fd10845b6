"""Reading request bodies: capped in size, decoded by msgspec straight into the call's struct."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from edge.errors import BodyTooLarge, InvalidBody, InvalidSessionToken

T = TypeVar("T")

# One decoder per struct, built once: msgspec decoders are reusable and thread-safe.
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes before reading it when Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The body may be at most {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The body may be at most {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(body: bytes, struct: type[T]) -> T:
    decoder = _decoders.get(struct)
    if decoder is None:
        decoder = _decoders[struct] = msgspec.json.Decoder(struct)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidBody(f"Invalid body: {exc}") from None
    except RecursionError:
        # msgspec walks nested arrays and objects recursively, unknown fields included: a small body
        # nested a thousand deep exhausts the stack.  That is bad input like any other.
        raise InvalidBody("Invalid body: nested too deeply.") from None


async def read_struct(request: Request, struct: type[T], limit: int) -> T:
    return decode(await read_body(request, limit), struct)


def session_token(request: Request) -> str:
    """The {token} path parameter in canonical form; anything but a UUID is refused."""
    raw = request.path_params.get("token", "")
    try:
        return str(uuid.UUID(raw))
    except (ValueError, TypeError):
        raise InvalidSessionToken() from None
