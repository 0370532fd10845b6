"""The generated docs pages agree with the code: every setting documented, no page naming a setting that
does not exist, and the OpenAPI page rendered from what a real edge serves."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import msgspec

from edge.openapi import build_document
from heartline.settings import PREFIX, Settings, setting_fields

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# HEARTLINE_* variables that are not settings: compose.yaml's own, and the test suite's.
NOT_SETTINGS = {"HEARTLINE_SERVER_NAME", "HEARTLINE_TLS_DIR", "HEARTLINE_HTTPS_PORT", "HEARTLINE_HTTP_PORT",
                "HEARTLINE_TEST_DATABASE_URL", "HEARTLINE_TEST_REDIS_URL"}


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_docstring() -> None:
    undocumented = [f.name for f in setting_fields(Settings) if len(f.doc) < 10]
    assert undocumented == []


def test_configuration_reference_lists_every_setting_with_its_default() -> None:
    table = _hooks().settings_markdown()
    for f in setting_fields(Settings):
        row = next((line for line in table.splitlines() if f"`{PREFIX}{f.name.upper()}`" in line), None)
        assert row is not None, f.name
        assert " ".join(f.doc.split())[:40] in row
    assert "`30`" in next(line for line in table.splitlines() if "HEARTBEAT_INTERVAL_S" in line)
    assert "<!-- settings-reference -->" in (DOCS / "configuration.md").read_text()


def test_docs_name_only_settings_that_exist() -> None:
    known = {PREFIX + f.name.upper() for f in setting_fields(Settings)} | NOT_SETTINGS
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "compose.yaml", ROOT / "deploy" / "env.example"]
    unknown: dict[str, str] = {}
    for page in pages:
        for name in re.findall(r"\bHEARTLINE_[A-Z0-9_]*[A-Z0-9]\b", page.read_text()):
            if name not in known:
                unknown.setdefault(name, page.relative_to(ROOT).as_posix())
    assert unknown == {}


def test_openapi_page_is_rendered_from_the_document_the_edge_serves() -> None:
    hooks = _hooks()
    served = hooks.fetch_openapi()
    assert served == json.loads(msgspec.json.encode(build_document()))
    page = hooks.openapi_markdown(served)
    for path, methods in served["paths"].items():
        for method in methods:
            assert f"## `{method.upper()} {path}`" in page
    for name in served["components"]["schemas"]:
        assert f"### {name}" in page
    assert "<!-- openapi-reference -->" in (DOCS / "openapi.md").read_text()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
               if p.relative_to(DOCS).as_posix() not in nav]
    assert missing == []


def test_screenshots_in_the_docs_are_ones_the_browser_tests_take() -> None:
    hooks = _hooks()
    taken = "".join(p.read_text() for p in (ROOT / "tests" / "admin").glob("test_*browser*.py"))
    named = [m[1] for page in DOCS.rglob("*.md") for m in hooks.SCREENSHOT.finditer(page.read_text())]
    assert named, "the admin guide shows the browser tests' screenshots"
    assert [name for name in named if name not in taken] == []
    assert "screenshots/admin-dashboard.png" in hooks.screenshot_markdown("admin-dashboard.png", "x", True)
    assert "pytest tests/admin -m browser" in hooks.screenshot_markdown("admin-dashboard.png", "x", False)
