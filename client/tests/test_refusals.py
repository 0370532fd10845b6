"""A fake server unlocks nothing: unsigned answers, answers signed by a key that is not pinned, tampered
answers and answers replayed to another request are all refused, and no session starts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fake_server import jwks_of, serve, session_answers, sign
from heartline_client import Client, KeySet, Session, Unreachable

REAL_KEY = Ed25519PrivateKey.generate()
PINNED = KeySet.from_jwks(jwks_of("hl-real", REAL_KEY))
OPTIONS: dict[str, Any] = {"api_key": "AF-2026-" + "x" * 32, "license_key": "HL-AAAAA-BBBBB-CCCCC-DDDDD",
                           "keys": PINNED, "timeout_s": 5}


def _start(url: str) -> None:
    with Client(url, **OPTIONS) as client, Session(client, "fp", handle_sigterm=False):
        pytest.fail("a session started against a fake server")


def test_unsigned_answers_are_refused() -> None:
    def unsigned(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        status, data = session_answers(path)
        return status, {}, json.dumps(data).encode()

    with serve(unsigned) as url, pytest.raises(Unreachable, match="not signed") as caught:
        _start(url)
    assert caught.value.untrusted


def test_a_server_with_its_own_key_is_refused_even_with_the_real_kid() -> None:
    fake = Ed25519PrivateKey.generate()

    def own_key(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        status, data = session_answers(path)
        payload = json.dumps(data).encode()
        return status, sign(fake, "hl-real", status, payload, method, path, nonce), payload

    with serve(own_key) as url, pytest.raises(Unreachable, match="does not verify"):
        _start(url)


def test_a_tampered_answer_is_refused() -> None:
    def tamper(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        status, data = session_answers(path)
        payload = json.dumps(data).encode()
        headers = sign(REAL_KEY, "hl-real", status, payload, method, path, nonce)
        if path == "/v1/sessions":
            payload = payload.replace(b'"heartbeat_timeout_s": 3600', b'"heartbeat_timeout_s": 9999')
        return status, headers, payload

    with serve(tamper) as url, pytest.raises(Unreachable, match="Content-Digest"):
        _start(url)


def test_a_recorded_answer_replayed_to_a_later_request_is_refused() -> None:
    recorded: dict[str, Any] = {}

    def replay(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        if path in recorded:
            return recorded[path]
        status, data = session_answers(path)
        payload = json.dumps(data).encode()
        recorded[path] = (status, sign(REAL_KEY, "hl-real", status, payload, method, path, nonce), payload)
        return recorded[path]

    with serve(replay) as url, Client(url, **OPTIONS) as client:
        first = client.validate("fp")                       # the genuine answer, recorded
        assert first.data["valid"] is True and first.kid == "hl-real"
        with pytest.raises(Unreachable, match="does not verify"):
            client.validate("fp")                           # the same answer, replayed


def test_a_refusal_turned_into_a_success_is_refused() -> None:
    def flip(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        payload = json.dumps({"error": {"code": "SESSION_LIMIT_REACHED", "message": "full"}}).encode()
        headers = sign(REAL_KEY, "hl-real", 409, payload, method, path, nonce)
        status, _data = session_answers(path)
        return (201 if path == "/v1/sessions" else status), headers, payload

    with serve(flip) as url, pytest.raises(Unreachable):
        _start(url)


def test_the_genuine_server_is_believed() -> None:
    def genuine(method: str, path: str, nonce: str | None, body: dict[str, Any]) -> Any:
        status, data = session_answers(path)
        payload = json.dumps(data).encode()
        return status, sign(REAL_KEY, "hl-real", status, payload, method, path, nonce), payload

    with serve(genuine) as url, Client(url, **OPTIONS) as client, \
            Session(client, "fp", handle_sigterm=False) as session:
        assert session.valid and session.token == "6f1c1d1e-0000-4000-8000-000000000001"
