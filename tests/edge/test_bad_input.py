"""Bad input gets a 4xx with a machine-readable code, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

CALLS = ("/v1/licenses/validate", "/v1/devices/activate", "/v1/devices/deactivate", "/v1/sessions",
         "/v1/sessions/6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11/heartbeat",
         "/v1/sessions/6f1c3f52-8a43-4b8e-9d55-0b9c1f1f0a11/end", "/v1/licenses/resources")

# Bad for every call (all take a license_key).
BAD_BODIES = [
    b"", b"{", b"null", b"[]", b'"text"', b"{}", b"\xff\xfe", b'{"license_key": 12345678}',
    b'{"license_key": "short", "hardware_fingerprint": "fp"}',
    b'{"license_key": "HL-AAAAA-BBBBB\\u0000", "hardware_fingerprint": "fp"}',
    b'{"license_key": "HL-AAAAA-\\ud800", "hardware_fingerprint": "fp"}',
    b'{"license_key": "' + b"K" * 65 + b'", "hardware_fingerprint": "fp"}',
]
# Bad only for the calls that take a device.
BAD_DEVICE_BODIES = [
    b'{"license_key": "HL-AAAAA-BBBBB"}',
    b'{"license_key": "HL-AAAAA-BBBBB", "hardware_fingerprint": ""}',
    b'{"license_key": "HL-AAAAA-BBBBB", "hardware_fingerprint": ["a"]}',
    b'{"license_key": "HL-AAAAA-BBBBB", "hardware_fingerprint": "\\ud800"}',
    b'{"license_key": "HL-AAAAA-BBBBB", "hardware_fingerprint": "' + b"f" * 257 + b'"}',
]


@pytest.mark.parametrize("path", CALLS)
async def test_malformed_bodies_get_422_invalid_body(client: httpx.AsyncClient, path: str) -> None:
    device_call = "/sessions/" not in path and "resources" not in path
    for body in BAD_BODIES + (BAD_DEVICE_BODIES if device_call else []):
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error"]["code"] == "INVALID_BODY"


@pytest.mark.parametrize("path", CALLS)
async def test_deeply_nested_bodies_get_422_invalid_body_without_a_traceback(
        client: httpx.AsyncClient, path: str, caplog: pytest.LogCaptureFixture) -> None:
    """~2 KB nested a thousand deep in an unknown field (and in a known one): 422, nothing logged as an
    error.  The heartbeat's fast path decodes on its own, so it is among the calls."""
    for depth in (1000, 1950):
        for body in (b'{"license_key": "HL-AAAAA-BBBBB", "x": ' + b"[" * depth + b"]" * depth + b"}",
                     b'{"license_key": ' + b"[" * depth + b"]" * depth + b"}",
                     b'{"x": ' + b'{"a":' * (depth // 3) + b"1" + b"}" * (depth // 3) + b"}"):
            r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (path, depth, r.text)
            assert r.json()["error"]["code"] == "INVALID_BODY"
    assert [rec for rec in caplog.records if rec.levelno >= logging.ERROR] == []


async def test_oversized_body_gets_413(client: httpx.AsyncClient, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    big = b'{"license_key": "' + lic["license_key"].encode() + b'", "hardware_fingerprint": "' + b"f" * 5000 + b'"}'
    r = await client.post("/v1/sessions", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "BODY_TOO_LARGE"

    async def chunks() -> Any:  # no Content-Length: the cap holds while streaming
        for _ in range(10):
            yield b" " * 1000
    r = await client.post("/v1/sessions", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "BODY_TOO_LARGE"


async def test_unknown_path_and_wrong_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.get("/v1/sessions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_a_trailing_slash_is_not_found_not_redirected(client: httpx.AsyncClient) -> None:
    for path in ("/v1/sessions/", "/v1/licenses/validate/", "/healthz/"):
        r = await client.post(path, json={}, headers={"Host": "attacker.example"})
        assert r.status_code in (404, 405), (path, r.status_code, r.headers)
        assert "location" not in r.headers
        assert r.json()["error"]["code"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient, make_license: Callable[..., Any]) -> None:
    lic = await make_license()
    r = await client.post("/v1/licenses/validate", json={"license_key": lic["license_key"],
                                                         "hardware_fingerprint": "fp", "future_field": 1})
    assert r.status_code == 200
