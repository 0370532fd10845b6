"""The keys that encrypt the admins' TOTP secrets at rest, apart from the Flask secret key.

HEARTLINE_ADMIN_TOTP_KEYS holds one or more Fernet keys, comma-separated: the first encrypts, every key
decrypts (MultiFernet). Rotating: put a new key first, run `heartline totp-keys rotate` (re-encrypts every
stored secret with it), then drop the old key. The Flask secret key can be rotated at any time without
locking anyone out.

Secrets written before these keys existed were encrypted with a key derived from the Flask secret key;
that derived key still decrypts (never encrypts), and `heartline totp-keys rotate` — or the admin's next
sign-in — re-encrypts them with the first TOTP key.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence

import psycopg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from heartline import services
from heartline.settings import PREFIX, Settings, SettingsError

KEYS_VAR = f"{PREFIX}ADMIN_TOTP_KEYS"


def parse_keys(raw: str) -> list[str]:
    """The keys of HEARTLINE_ADMIN_TOTP_KEYS, first (encrypting) key first; malformed ones are refused."""
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:
            raise SettingsError(f"{KEYS_VAR}: key {number} is not a Fernet key (32 url-safe base64-encoded "
                                "bytes); `heartline totp-keys generate` prints one") from None
    return keys


def new_key() -> str:
    return Fernet.generate_key().decode()


def _legacy_key(secret_key: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"heartline-admin-totp-secret").derive(secret_key.encode())
    return base64.urlsafe_b64encode(derived)


class SecretBox:
    """Encrypts TOTP secrets with the first of `keys`, decrypts with any of them.

    keys: Fernet keys, the encrypting one first (at least one).
    legacy_secret_key: the Flask secret key, whose derived key decrypts secrets stored before
    HEARTLINE_ADMIN_TOTP_KEYS existed; never used to encrypt.
    """

    def __init__(self, keys: Sequence[str], *, legacy_secret_key: str | None = None) -> None:
        if not keys:
            raise SettingsError(f"{KEYS_VAR} is not set")
        fernets = [Fernet(key) for key in keys]
        if legacy_secret_key:
            fernets.append(Fernet(_legacy_key(legacy_secret_key)))
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)

    def seal(self, secret: str) -> str:
        return self._primary.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._all.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ValueError(f"the TOTP secret cannot be decrypted with any key of {KEYS_VAR}: was the key "
                             "that encrypted it removed?") from None

    def is_current(self, sealed: str) -> bool:
        """True when the first key encrypted `sealed` (nothing to rotate)."""
        try:
            self._primary.decrypt(sealed.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, sealed: str) -> str:
        """`sealed` encrypted anew with the first key."""
        return self.seal(self.open(sealed))


def rotate_stored_secrets(database_url: str, box: SecretBox) -> int:
    """Re-encrypt every stored TOTP secret with the first key; returns how many changed."""
    changed = 0
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT set_config('heartline.actor', 'cli', true)")
        rows = conn.execute("SELECT user_id, secret_encrypted FROM admin_totp "
                            "WHERE secret_encrypted IS NOT NULL FOR UPDATE").fetchall()
        for user_id, sealed in rows:
            if box.is_current(sealed):
                continue
            conn.execute("UPDATE admin_totp SET secret_encrypted = %s, updated_at = now() WHERE user_id = %s",
                         (box.rotate(sealed), user_id))
            changed += 1
        # admin_totp is not audited by the trigger (it holds secrets): this row records the rotation
        conn.execute("INSERT INTO audit_log (actor, table_name, operation, row_id, new_values) "
                     "VALUES ('cli', 'admin_totp', 'UPDATE', NULL, jsonb_build_object("
                     "'event', 'totp.keys_rotated', 'secrets', %s::int))", (changed,))
    return changed


def totp_keys_main(settings: Settings, argv: list[str]) -> int:
    """`heartline totp-keys generate | rotate`."""
    parser = argparse.ArgumentParser(prog="heartline totp-keys",
                                     description=f"Keys of {KEYS_VAR}, which encrypt the admins' TOTP secrets")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("generate", help="print a new key (put it first in the setting to start using it)")
    sub.add_parser("rotate", help="re-encrypt every stored TOTP secret with the first key")
    args = parser.parse_args(argv)
    if args.action == "generate":
        print(new_key())
        return 0
    keys = parse_keys(settings.admin_totp_keys)
    if not keys:
        raise SettingsError(f"{KEYS_VAR} is not set: `heartline totp-keys generate` prints a key")
    settings = services.resolve(settings, need_redis=False)
    box = SecretBox(keys, legacy_secret_key=settings.admin_secret_key)
    try:
        changed = rotate_stored_secrets(settings.database_url or "", box)
    except ValueError as exc:
        print(f"heartline totp-keys rotate: nothing changed: {exc}", file=sys.stderr)
        return 1
    print(f"{changed} TOTP secret(s) re-encrypted with the first key of {KEYS_VAR}; "
          "keys after the first can now be removed")
    return 0
