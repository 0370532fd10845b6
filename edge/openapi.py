"""GET /v1/openapi.json: the OpenAPI 3.1 document, generated from routes.OPERATIONS and the msgspec
structs, so it cannot drift from what the edge decodes and encodes."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from edge.routes import OPERATIONS, Operation
from edge.schemas import ErrorBody

REF = "#/components/schemas/{name}"
TOKEN_PARAMETER = {"name": "token", "in": "path", "required": True,
                   "description": "The session token from POST /v1/sessions",
                   "schema": {"type": "string", "format": "uuid"}}
BORROW_PARAMETER = {"name": "borrow_id", "in": "path", "required": True,
                    "description": "The borrow_id from POST /v1/sessions/{token}/borrow",
                    "schema": {"type": "string", "format": "uuid"}}
# Refusals every authenticated call can give, besides its own.
COMMON_REFUSALS = {
    401: "API_KEY_MISSING or API_KEY_INVALID",
    413: "BODY_TOO_LARGE",
    422: "INVALID_BODY (malformed JSON, wrong types, out-of-range values) or INVALID_SESSION_TOKEN",
    503: "PLANE_UNAVAILABLE or DATABASE_UNAVAILABLE (retry after Retry-After seconds)",
}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None,
          media_type: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def build_document(version: str = "1.0.0") -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for op in OPERATIONS:
        if op.request is not None:
            types.append(op.request)
        types.extend(struct for struct, _ in op.responses.values() if struct is not None)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    ref = dict(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Heartline edge API", "version": version,
                 "description": "Licenses, devices, sessions and heartbeats. Errors are "
                                "{\"error\": {\"code\", \"message\"}}; clients branch on code."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


def _operation(op: Operation, ref: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = ref[ErrorBody]
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
    doc = (op.endpoint.__doc__ or "").strip().splitlines()
    if doc:
        out["description"] = doc[0]
    if "{token}" in op.path:
        out["parameters"] = [TOKEN_PARAMETER]
    if "{borrow_id}" in op.path:
        out["parameters"] = [BORROW_PARAMETER]
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[op.request]}}}
    for status, (struct, description) in op.responses.items():
        if status == 304:
            out["responses"][str(status)] = {"description": description}
        elif struct is None:
            out["responses"][str(status)] = {"description": description,
                                             "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            out["responses"][str(status)] = _json(ref[struct], description, media_type=op.media_type)
    refusals = dict(op.refusals)
    if op.authenticated:
        out["security"] = [{"ApiKey": []}]
        for status, text in COMMON_REFUSALS.items():
            refusals[status] = f"{refusals[status]}, or {text}" if status in refusals else text
    for status, text in sorted(refusals.items()):
        headers = None
        if status in (429, 503):
            headers = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
        out["responses"][str(status)] = _json(error, text, headers)
    return out


def openapi_endpoint(document: dict[str, Any]) -> Any:
    body = msgspec.json.encode(document)

    async def openapi(request: Request) -> Response:
        """GET /v1/openapi.json: this API's OpenAPI document."""
        return Response(body, media_type="application/json")

    return openapi
