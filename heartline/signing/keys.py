"""The signing-key store: Ed25519 keys in PostgreSQL (sql/0006), private halves sealed at rest.

A key's life: `create` publishes it (served in the JWKS, not signing yet), `rotate` makes one the signing
key and leaves the previous one published, so answers it signed keep verifying, `retire` takes a key out
of the JWKS.  Private keys are sealed with AES-256-GCM under a key derived from the
`signing_key_secret` setting, with the kid as associated data (a sealed key moved to another kid does not
open); they are never logged nor printed.  See docs/client.md for the rotation procedure.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import secrets
from dataclasses import dataclass

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from heartline.db import Conn
from heartline.settings import PREFIX, SettingsError

log = logging.getLogger("heartline.signing")

NONCE_BYTES = 12
# One lock for every change of key status, so two rotations never interleave.
ROTATION_LOCK = 0x5167_4E31


class KeyStatus(enum.StrEnum):
    ACTIVE = "active"        # signs every answer; at most one
    PUBLISHED = "published"  # in the JWKS, verifies, does not sign
    RETIRED = "retired"      # neither


class SigningKeyError(Exception):
    """A key operation that cannot be done (unknown kid, retiring the signing key, a wrong secret)."""


@dataclass(frozen=True)
class PublicKey:
    kid: str
    public_key: bytes  # raw 32 bytes
    status: KeyStatus
    created_at: dt.datetime
    activated_at: dt.datetime | None
    retired_at: dt.datetime | None


@dataclass(frozen=True)
class ActiveKey:
    kid: str
    private_key: Ed25519PrivateKey

    def __repr__(self) -> str:  # never print a private key, even by accident
        return f"ActiveKey(kid={self.kid!r})"


class KeyBox:
    """Seals and opens private keys with a key derived (HKDF-SHA256) from the signing-key secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise SettingsError(f"{PREFIX}SIGNING_KEY_SECRET must be at least 16 characters")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"heartline-signing-key").derive(secret.encode())
        self._aead = AESGCM(derived)

    def seal(self, kid: str, private_key: Ed25519PrivateKey) -> bytes:
        raw = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, raw, kid.encode())

    def open(self, kid: str, sealed: bytes) -> Ed25519PrivateKey:
        try:
            raw = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], kid.encode())
        except InvalidTag:
            raise SigningKeyError(f"the private key of {kid} cannot be opened: was "
                                  f"{PREFIX}SIGNING_KEY_SECRET changed?") from None
        return Ed25519PrivateKey.from_private_bytes(raw)


def new_kid(now: dt.datetime | None = None) -> str:
    """hl-YYYYMMDD-<8 hex>: sortable by creation day, unique by its random part."""
    now = now or dt.datetime.now(dt.UTC)
    return f"hl-{now:%Y%m%d}-{secrets.token_hex(4)}"


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


LIST_KEYS = ("SELECT kid, public_key, status, created_at, activated_at, retired_at FROM signing_keys "
             "ORDER BY created_at, id")
GET_KEY = ("SELECT kid, public_key, status, created_at, activated_at, retired_at FROM signing_keys "
           "WHERE kid = $1")
INSERT_KEY = "INSERT INTO signing_keys (kid, public_key, status, activated_at) VALUES ($1, $2, $3, $4)"
INSERT_SECRET = "INSERT INTO signing_key_secrets (kid, sealed) VALUES ($1, $2)"
ACTIVE_SECRET = ("SELECT k.kid, s.sealed FROM signing_keys k JOIN signing_key_secrets s USING (kid) "
                 "WHERE k.status = 'active'")


def _row(r: asyncpg.Record) -> PublicKey:
    return PublicKey(kid=r["kid"], public_key=bytes(r["public_key"]), status=KeyStatus(r["status"]),
                     created_at=r["created_at"], activated_at=r["activated_at"], retired_at=r["retired_at"])


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[PublicKey]:
    """Every key, oldest first."""
    return [_row(r) for r in await conn.fetch(LIST_KEYS)]


async def create_key(conn: asyncpg.Connection, box: KeyBox, *, activate: bool = False) -> PublicKey:
    """A new key, published; with `activate` it becomes the signing key (the previous one stays published)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROTATION_LOCK)
        kid = await _insert_key(conn, box, activate=activate)
    return await _get(conn, kid)


async def _insert_key(conn: Conn, box: KeyBox, *, activate: bool) -> str:
    """Insert a fresh key inside the caller's transaction, which holds the rotation lock."""
    private_key = Ed25519PrivateKey.generate()
    kid = new_kid()
    await conn.execute(INSERT_KEY, kid, public_bytes(private_key), KeyStatus.PUBLISHED.value, None)
    await conn.execute(INSERT_SECRET, kid, box.seal(kid, private_key))
    if activate:
        await _activate(conn, kid)
    log.info("signing.key.created kid=%s active=%s", kid, activate)
    return kid


async def rotate(conn: asyncpg.Connection, box: KeyBox, to_kid: str | None = None) -> PublicKey:
    """Make `to_kid` (a published key) the signing key, or a new key when None; returns it."""
    if to_kid is None:
        return await create_key(conn, box, activate=True)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROTATION_LOCK)
        status = await conn.fetchval("SELECT status FROM signing_keys WHERE kid = $1", to_kid)
        if status is None:
            raise SigningKeyError(f"no signing key {to_kid}")
        if status == KeyStatus.RETIRED:
            raise SigningKeyError(f"{to_kid} is retired; create a new key instead")
        sealed = await conn.fetchval("SELECT sealed FROM signing_key_secrets WHERE kid = $1", to_kid)
        box.open(to_kid, bytes(sealed))  # refuse a key this secret cannot open before it signs anything
        await _activate(conn, to_kid)
    log.info("signing.key.rotated kid=%s", to_kid)
    return await _get(conn, to_kid)


async def retire(conn: asyncpg.Connection, kid: str) -> PublicKey:
    """Take a published key out of the JWKS: answers it signed stop verifying for clients that refresh."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROTATION_LOCK)
        status = await conn.fetchval("SELECT status FROM signing_keys WHERE kid = $1", kid)
        if status is None:
            raise SigningKeyError(f"no signing key {kid}")
        if status == KeyStatus.ACTIVE:
            raise SigningKeyError(f"{kid} is the signing key; rotate to another key first")
        if status == KeyStatus.PUBLISHED:
            await conn.execute("UPDATE signing_keys SET status = 'retired', retired_at = now() WHERE kid = $1",
                               kid)
    log.info("signing.key.retired kid=%s", kid)
    return await _get(conn, kid)


async def ensure_active_key(pool: asyncpg.Pool, box: KeyBox) -> ActiveKey:
    """The signing key, creating the first one when there is none (a fresh install signs from its first
    answer); several edges starting at once agree on one key through the rotation lock."""
    row = await pool.fetchrow(ACTIVE_SECRET)
    if row is None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ROTATION_LOCK)
            if await conn.fetchval("SELECT true FROM signing_keys WHERE status = 'active'") is None:
                await _insert_key(conn, box, activate=True)
        row = await pool.fetchrow(ACTIVE_SECRET)
        assert row is not None
    return ActiveKey(kid=row["kid"], private_key=box.open(row["kid"], bytes(row["sealed"])))


async def load_active_key(pool: asyncpg.Pool, box: KeyBox) -> ActiveKey | None:
    row = await pool.fetchrow(ACTIVE_SECRET)
    return None if row is None else ActiveKey(kid=row["kid"], private_key=box.open(row["kid"], bytes(row["sealed"])))


async def _activate(conn: Conn, kid: str) -> None:
    await conn.execute("UPDATE signing_keys SET status = 'published' WHERE status = 'active' AND kid <> $1", kid)
    await conn.execute("UPDATE signing_keys SET status = 'active', activated_at = now() WHERE kid = $1", kid)


async def _get(conn: Conn, kid: str) -> PublicKey:
    row = await conn.fetchrow(GET_KEY, kid)
    assert row is not None
    return _row(row)
