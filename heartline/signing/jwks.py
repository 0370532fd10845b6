"""The public keys as a JSON Web Key Set (RFC 7517), each an OKP key per RFC 8037."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import msgspec

from heartline.signing.keys import KeyStatus, PublicKey


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk(key: PublicKey) -> dict[str, Any]:
    return {"kty": "OKP", "crv": "Ed25519", "kid": key.kid, "x": b64url(key.public_key), "alg": "EdDSA",
            "use": "sig"}


def jwks(keys: Iterable[PublicKey]) -> dict[str, Any]:
    """The keys that verify: the signing key and the published ones, never the retired."""
    return {"keys": [jwk(k) for k in keys if k.status is not KeyStatus.RETIRED]}


def encode_jwks(keys: Iterable[PublicKey]) -> bytes:
    return msgspec.json.encode(jwks(keys))
