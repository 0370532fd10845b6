"""Endpoint signing secrets: made here (`whsec_` + base64 of 32 random bytes, as Standard Webhooks
writes them) and kept encrypted at rest with a Fernet key derived (HKDF) from HEARTLINE_WEBHOOK_SECRET_KEY.

The admin encrypts when it creates or rotates a secret, the worker decrypts to sign; both must see the
same key.  In development the key is generated once into the data dir, like the admin's secret key.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from heartline.settings import Settings

SECRET_PREFIX = "whsec_"
KEY_FILE = "webhook_secret_key"


class SecretKeyMismatch(RuntimeError):
    """A stored secret does not decrypt: HEARTLINE_WEBHOOK_SECRET_KEY differs from the one that stored it."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(settings: Settings) -> str:
    """HEARTLINE_WEBHOOK_SECRET_KEY, or in development a random key kept in the data folder (mode 0600)."""
    if settings.webhook_secret_key:
        return settings.webhook_secret_key
    path = Path(settings.data_dir) / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


class SecretBox:
    """Encrypts and decrypts endpoint secrets with the key of `settings`."""

    def __init__(self, settings: Settings) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"heartline-webhook-secret").derive(secret_key(settings).encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch("a webhook secret does not decrypt with HEARTLINE_WEBHOOK_SECRET_KEY; "
                                    "admin and worker must use the same key") from None
