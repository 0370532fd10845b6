"""GET /v1: what this API is and where its description lives, for a person or a client poking at it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from edge.schemas import IndexResponse, encode

OPENAPI_PATH = "/v1/openapi.json"
DOCS = "docs/api.md in the Heartline repository"


async def index(request: Request) -> Response:
    """GET /v1: links to the OpenAPI document and the docs, and the calls there are."""
    from edge.routes import OPERATIONS

    calls = [f"{op.method} {op.path}" for op in OPERATIONS if op.path.startswith("/v1/")]
    body = IndexResponse(name="Heartline edge API", openapi=OPENAPI_PATH, docs=DOCS,
                         authentication="X-API-Key header on every /v1 call but this one", calls=calls)
    return Response(encode(body), media_type="application/json")
