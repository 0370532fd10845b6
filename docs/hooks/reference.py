"""MkDocs hook: the pages that are generated from the code at build time, so they cannot drift from it.

- `configuration.md`: its `<!-- settings-reference -->` marker is replaced by a table built from
  `heartline.settings.Settings` (each field's name, type, default and its docstring).
- `openapi.md`: its `<!-- openapi-reference -->` marker is replaced by the edge's OpenAPI document,
  fetched from a real edge app (`GET /v1/openapi.json` through ASGI, no server, no network) and rendered
  as plain Markdown; the JSON itself is written beside the page as `openapi.json`. Nothing is loaded
  from a CDN when the page is viewed.

- screenshots: a `<!-- screenshot: NAME.png "caption" -->` marker becomes that image when the browser
  tests have left `artifacts/NAME.png` (they take them: tests/admin/test_browser.py), and a sentence
  saying how to get it otherwise. Generated images are never committed; CI builds the site after the
  tests, so its build has them.

`tests/docs/test_reference.py` imports this file to check that the docs and the code agree.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
SCREENSHOT = re.compile(r'<!-- screenshot: ([a-z0-9-]+\.png) "([^"]+)" -->')
SETTINGS_MARKER = "<!-- settings-reference -->"
OPENAPI_MARKER = "<!-- openapi-reference -->"
OPENAPI_PATH = "/v1/openapi.json"


# ---- configuration -------------------------------------------------------------------------------------

def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return {"Path": "path", "str | None": "string or unset", "str": "string", "int": "integer",
            "float": "number", "bool": "true / false", "tuple[str, ...]": "comma-separated list"}.get(text, text)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`" + ",".join(value) + "`" if value else "empty"
    if value == "":
        return "empty"
    return f"`{value}`"


def settings_markdown() -> str:
    """The configuration reference: one row per Settings field, in the order the class declares them."""
    from heartline.settings import PREFIX, Settings, setting_fields

    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for spec in setting_fields(Settings):
        doc = " ".join(spec.doc.split()).replace("|", "\\|")
        rows.append(f"| `{PREFIX}{spec.name.upper()}` | {_type_name(spec.annotation)} | "
                    f"{_default(spec.default)} | {doc} |")
    return "\n".join(rows) + "\n"


# ---- the OpenAPI document ------------------------------------------------------------------------------

async def _asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [], "server": ("docs.invalid", 80), "client": ("127.0.0.1", 0)}
    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


def fetch_openapi() -> dict[str, Any]:
    """GET /v1/openapi.json from a real edge app, built with settings that are never connected to."""
    from edge.app import create_app
    from heartline.settings import Settings

    # The lifespan (which would connect) is not run: the OpenAPI route needs neither database nor Redis.
    app = create_app(Settings(database_url="postgresql://docs.invalid/heartline",
                              redis_url="redis://docs.invalid:6379/0"))
    status, body = asyncio.run(_asgi_get(app, OPENAPI_PATH))
    if status != 200:
        raise RuntimeError(f"GET {OPENAPI_PATH} answered {status}")
    document: dict[str, Any] = json.loads(body)
    return document


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    kind = schema.get("type", "any")
    return "`null`" if kind == "null" else str(kind)


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (("minLength", "length ≥"), ("maxLength", "length ≤"), ("minimum", "≥"),
                       ("maximum", "≤"), ("format", "format"), ("enum", "one of")):
        if key in schema:
            value = schema[key]
            parts.append(f"{label} {', '.join(map(str, value)) if isinstance(value, list) else value}")
    return "; ".join(parts)


def openapi_markdown(document: dict[str, Any]) -> str:
    """The document as Markdown: each operation with its body and answers, then every schema."""
    info = document["info"]
    out: list[str] = [(f"Generated from `GET {OPENAPI_PATH}` ({info['title']}, version {info['version']}, "
                       f"OpenAPI {document['openapi']}) when this site was built; the document itself: "
                       "[openapi.json](openapi.json)."), ""]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", "", f"**{op['summary']}.** {op.get('description', '')}", ""]
            for param in op.get("parameters", []):
                out.append(f"- path parameter `{param['name']}`: {param.get('description', '')} "
                           f"({_schema_name(param['schema'])}, {param['schema'].get('format', '')})")
            if "security" in op:
                out.append("- header `X-API-Key`: a system API key")
            body = op.get("requestBody")
            if body:
                out.append(f"- body: {_schema_name(body['content']['application/json']['schema'])}")
            out += ["", "| status | answer | body |", "|---|---|---|"]
            for status, answer in sorted(op["responses"].items()):
                content = answer.get("content", {})
                schema = (content.get("application/json") or content.get("text/plain") or {}).get("schema", {})
                text = answer["description"].replace("|", "\\|")
                if "headers" in answer:
                    text += " (header " + ", ".join(f"`{h}`" for h in answer["headers"]) + ")"
                out.append(f"| {status} | {text} | {_schema_name(schema) if schema else ''} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in document["components"]["schemas"].items():
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [schema["description"], ""]
        required = set(schema.get("required", []))
        out += ["| field | type | required | notes |", "|---|---|---|---|"]
        for field, spec in schema.get("properties", {}).items():
            notes = "; ".join(x for x in (spec.get("description", ""), _constraints(spec)) if x)
            out.append(f"| `{field}` | {_schema_name(spec)} | {'yes' if field in required else 'no'} | "
                       f"{notes.replace('|', chr(92) + '|')} |")
        out.append("")
    return "\n".join(out)


# ---- screenshots ---------------------------------------------------------------------------------------

def screenshot_markdown(name: str, caption: str, available: bool) -> str:
    if available:
        return f"![{caption}](screenshots/{name})\n\n*{caption}.*"
    return (f"*Screenshot: {caption} — taken by the browser tests (`pytest tests/admin -m browser` writes "
            f"`artifacts/{name}`); build the site after them to see it here.*")


# ---- MkDocs events -------------------------------------------------------------------------------------

_openapi_cache: dict[str, Any] = {}


def _document() -> dict[str, Any]:
    if "doc" not in _openapi_cache:
        _openapi_cache["doc"] = fetch_openapi()
    return _openapi_cache["doc"]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_markdown())
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, openapi_markdown(_document()))
    return SCREENSHOT.sub(lambda m: screenshot_markdown(m[1], m[2], (ARTIFACTS / m[1]).is_file()), markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "openapi.json", content=json.dumps(_document(), indent=2) + "\n"))
    for shot in sorted(ARTIFACTS.glob("*.png")) if ARTIFACTS.is_dir() else []:
        files.append(File.generated(config, f"screenshots/{shot.name}", abs_src_path=str(shot)))
    return files
