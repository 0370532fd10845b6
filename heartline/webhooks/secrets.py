"""Endpoint signing secrets: made here (`whsec_` + base64 of 32 random bytes, as Standard Webhooks
writes them) and kept encrypted at rest with a Fernet key derived (HKDF) from HEARTLINE_WEBHOOK_SECRET_KEY.

The admin encrypts when it creates or rotates a secret, the worker decrypts to sign; both must see the
same key (heartline/sealing.py: unset, it stops them at start; only `heartline dev` makes one up).
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from heartline.sealing import WEBHOOK_SECRET_KEY, sealing_secret
from heartline.settings import Settings

SECRET_PREFIX = "whsec_"


class SecretKeyMismatch(RuntimeError):
    """A stored secret does not decrypt: HEARTLINE_WEBHOOK_SECRET_KEY differs from the one that stored it."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class SecretBox:
    """Encrypts and decrypts endpoint secrets with the key of `settings`."""

    def __init__(self, settings: Settings) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"heartline-webhook-secret").derive(sealing_secret(settings, WEBHOOK_SECRET_KEY).encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch("a webhook secret does not decrypt with HEARTLINE_WEBHOOK_SECRET_KEY; "
                                    "admin and worker must use the same key") from None
