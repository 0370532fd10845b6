"""Verifying Heartline's signed answers (RFC 9421 HTTP Message Signatures, Ed25519) against pinned keys.

An answer is accepted only when its `heartline` signature

- was made by a pinned key (`keyid`) with `alg="ed25519"`,
- covers `"@status"`, `"content-digest"`, `"@method";req`, `"@path";req` and, when the request carried a
  Heartline-Nonce, `"heartline-nonce";req`, so it cannot be moved to another status, body, call or request,
- verifies over the signature base rebuilt from what this client sent and received, and
- its Content-Digest (RFC 9530, sha-256) is the digest of the body received.

Anything else raises `SignatureError`: an unsigned answer, a fake server's (its key is not pinned), a
tampered body, an answer recorded for another request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from heartline_client.answer_keys import ALG as MAC_ALG
from heartline_client.answer_keys import KEYID_PREFIX, SessionKey

LABEL = "heartline"
REQUIRED = ('"@status"', '"content-digest"', '"@method";req', '"@path";req')
NONCE_COMPONENT = '"heartline-nonce";req'


class SignatureError(Exception):
    """An answer whose signature is missing, malformed, made by an unknown key or not matching."""


class KeySet:
    """Pinned public keys by kid.  Build it from the JWKS of `heartline signing-key list --jwks` (or
    GET /v1/keys fetched over a channel you trust), shipped with your program."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not keys:
            raise ValueError("a KeySet needs at least one key")
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, jwks: str | bytes | Mapping[str, Any]) -> KeySet:
        doc = json.loads(jwks) if isinstance(jwks, str | bytes) else jwks
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                continue
            raw = _b64url(jwk["x"])
            keys[str(jwk["kid"])] = Ed25519PublicKey.from_public_bytes(raw)
        return cls(keys)

    def kids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def union(self, other: KeySet) -> KeySet:
        return KeySet({**self._keys, **other._keys})


@dataclass(frozen=True)
class Verified:
    kid: str
    created: int


def verify_answer(keys: KeySet, *, status: int, headers: Mapping[str, str], body: bytes, method: str,
                  path: str, nonce: str | None, session_key: SessionKey | None = None) -> Verified:
    """Check one answer; `headers` is case-insensitive as httpx's are (lower-case names otherwise).

    `method`, `path` and `nonce` are what this client sent, never what the answer claims.  With
    `session_key` (the session's answer key, answer_keys.py) an `alg="hmac-sha256"` signature with
    `keyid="session:<its kid>"` is accepted too, as long as that kid is still pinned; Ed25519 always is."""
    digest = _header(headers, "content-digest")
    sig_input = _header(headers, "signature-input")
    signature = _header(headers, "signature")
    if sig_input is None or signature is None:
        raise SignatureError("the answer is not signed")
    inputs = _parse_dictionary(sig_input)
    sigs = _parse_dictionary(signature)
    if LABEL not in inputs or LABEL not in sigs:
        raise SignatureError(f"the answer has no {LABEL!r} signature")
    components, params = inputs[LABEL]
    if not isinstance(components, list):
        raise SignatureError("Signature-Input is not an inner list")
    sig_value = sigs[LABEL][0]
    if not isinstance(sig_value, bytes):
        raise SignatureError("Signature is not a byte sequence")
    required = list(REQUIRED) + ([NONCE_COMPONENT] if nonce is not None else [])
    covered = [_serialize_item(value, item_params) for value, item_params in components]
    missing = [c for c in required if c not in covered]
    if missing:
        raise SignatureError(f"the signature does not cover {', '.join(missing)}")
    alg = params.get("alg")
    mac = alg == MAC_ALG and session_key is not None
    if alg != "ed25519" and not mac:
        raise SignatureError("the signature's alg is not ed25519" if session_key is None else
                             "the signature's alg is neither ed25519 nor hmac-sha256")
    kid = params.get("keyid")
    created = params.get("created")
    if not isinstance(kid, str) or not isinstance(created, int) or isinstance(created, bool):
        raise SignatureError("the signature lacks keyid or created")
    public_key = None
    if mac:
        assert session_key is not None
        if kid != KEYID_PREFIX + session_key.kid:
            raise SignatureError(f"the answer was MACed under {kid!r}, not this session's key")
        if keys.get(session_key.kid) is None:
            raise SignatureError(f"the session's answer key comes from {session_key.kid!r}, no longer pinned")
    else:
        public_key = keys.get(kid)
        if public_key is None:
            raise SignatureError(f"the answer was signed by {kid!r}, which is not a pinned key")
    if digest is None:
        raise SignatureError("the answer has no Content-Digest")
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    if not hmac.compare_digest(digest.strip(), expected):
        raise SignatureError("the body does not match its Content-Digest")
    values = {'"@status"': str(status), '"content-digest"': digest.strip(), '"@method";req': method.upper(),
              '"@path";req': path or "/"}
    if nonce is not None:
        values[NONCE_COMPONENT] = nonce
    lines = []
    for component in covered:
        if component not in values:
            raise SignatureError(f"the signature covers {component}, which this client cannot check")
        lines.append(f"{component}: {values[component]}")
    lines.append('"@signature-params": ' + _serialize_inner_list(components, params))
    if public_key is None:
        assert session_key is not None
        expected_mac = hmac.digest(session_key.key, "\n".join(lines).encode(), hashlib.sha256)
        if not hmac.compare_digest(sig_value, expected_mac):
            raise SignatureError("the signature does not verify: the answer was changed or is not for this "
                                 "request")
        return Verified(kid=kid, created=created)
    try:
        public_key.verify(sig_value, "\n".join(lines).encode())
    except InvalidSignature:
        raise SignatureError("the signature does not verify: the answer was changed or is not for this "
                             "request") from None
    return Verified(kid=kid, created=created)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "multi_items"):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("malformed base64url in a JWK") from None


# -- a small RFC 8941 parser: dictionaries whose members are items or inner lists ------------------------

Bare = str | int | bool | bytes
Params = dict[str, Bare]
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INT = re.compile(r"-?[0-9]{1,15}")


class _Token(str):
    """A token, serialized without quotes."""


def _parse_dictionary(text: str) -> dict[str, tuple[Any, Params]]:
    out: dict[str, tuple[Any, Params]] = {}
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _KEY.match(text, pos)
        if match is None:
            raise SignatureError("malformed signature header")
        key, pos = match.group(), match.end()
        value: Bare | list[tuple[Bare, Params]]
        if pos < len(text) and text[pos] == "=":
            pos += 1
            if text[pos:pos + 1] == "(":
                value, pos = _parse_inner_list(text, pos)
            else:
                value, pos = _parse_bare(text, pos)
        else:
            value = True
        params, pos = _parse_params(text, pos)
        out[key] = (value, params)
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            break
        if text[pos] != ",":
            raise SignatureError("malformed signature header")
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
    return out


def _parse_inner_list(text: str, pos: int) -> tuple[list[tuple[Bare, Params]], int]:
    pos += 1
    items: list[tuple[Bare, Params]] = []
    while pos < len(text):
        while text[pos:pos + 1] == " ":
            pos += 1
        if text[pos:pos + 1] == ")":
            return items, pos + 1
        value, pos = _parse_bare(text, pos)
        params, pos = _parse_params(text, pos)
        items.append((value, params))
        if text[pos:pos + 1] not in (" ", ")"):
            raise SignatureError("malformed inner list")
    raise SignatureError("unterminated inner list")


def _parse_params(text: str, pos: int) -> tuple[Params, int]:
    params: Params = {}
    while text[pos:pos + 1] == ";":
        pos += 1
        match = _KEY.match(text, pos)
        if match is None:
            raise SignatureError("malformed parameter")
        name, pos = match.group(), match.end()
        if text[pos:pos + 1] == "=":
            params[name], pos = _parse_bare(text, pos + 1)
        else:
            params[name] = True
    return params, pos


def _parse_bare(text: str, pos: int) -> tuple[Bare, int]:
    char = text[pos:pos + 1]
    if char == '"':
        end, chars = pos + 1, []
        while end < len(text):
            c = text[end]
            if c == "\\":
                chars.append(text[end + 1:end + 2])
                end += 2
                continue
            if c == '"':
                return "".join(chars), end + 1
            chars.append(c)
            end += 1
        raise SignatureError("unterminated string")
    if char == ":":
        end = text.find(":", pos + 1)
        if end < 0:
            raise SignatureError("unterminated byte sequence")
        try:
            return base64.b64decode(text[pos + 1:end], validate=True), end + 1
        except binascii.Error:
            raise SignatureError("malformed byte sequence") from None
    if char == "?":
        if text[pos + 1:pos + 2] not in ("0", "1"):
            raise SignatureError("malformed boolean")
        return text[pos + 1] == "1", pos + 2
    match = _INT.match(text, pos)
    if match is not None and text[match.end():match.end() + 1] != ".":
        return int(match.group()), match.end()
    match = _TOKEN.match(text, pos)
    if match is not None:
        return _Token(match.group()), match.end()
    raise SignatureError("malformed value")


def _serialize_bare(value: Bare) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, _Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_item(value: Bare, params: Params) -> str:
    return _serialize_bare(value) + "".join(
        f";{name}" if val is True else f";{name}={_serialize_bare(val)}" for name, val in params.items())


def _serialize_inner_list(items: Iterable[tuple[Bare, Params]], params: Params) -> str:
    return "(" + " ".join(_serialize_item(v, p) for v, p in items) + ")" + "".join(
        f";{name}" if val is True else f";{name}={_serialize_bare(val)}" for name, val in params.items())
