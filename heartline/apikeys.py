"""System API keys: `AF-YYYY-` + 32 characters, stored as a sha256 hash plus a display prefix.

The 32 random characters carry ~190 bits, so a fast hash is safe here and lets the edge verify a key
with one dictionary lookup; comparisons of the hash are done by the database index / constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import string
from dataclasses import dataclass

import asyncpg

ALPHABET = string.ascii_letters + string.digits
KEY_PATTERN = re.compile(r"^AF-\d{4}-[A-Za-z0-9]{32}$")


@dataclass(frozen=True)
class NewApiKey:
    id: int
    name: str
    key: str  # shown once, never stored


def generate_key(year: int | None = None) -> str:
    year = year or dt.datetime.now(dt.UTC).year
    return f"AF-{year:04d}-" + "".join(secrets.choice(ALPHABET) for _ in range(32))


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    return key[:12] + "…"


def is_well_formed(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


async def create_api_key(conn: asyncpg.Connection, name: str, created_by: str = "cli") -> NewApiKey:
    name = name.strip()
    if not name:
        raise ValueError("an API key needs a name")
    key = generate_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (name, display_prefix, key_hash, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
        name, display_prefix(key), hash_key(key), created_by)
    return NewApiKey(id=key_id, name=name, key=key)


async def revoke_api_key(conn: asyncpg.Connection, key_id: int) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status.endswith(" 1")
