"""The secrets that seal what Heartline keeps encrypted at rest, resolved one way for both:

- `signing_key_secret` (HEARTLINE_SIGNING_KEY_SECRET) seals the private keys that sign the edge's
  answers (heartline/signing); every edge and `heartline signing-key` need it;
- `webhook_secret_key` (HEARTLINE_WEBHOOK_SECRET_KEY) seals the webhook endpoints' signing secrets
  (heartline/webhooks); the admin and the worker need it.

Each is a setting. A process that needs one and finds it unset stops at its start with one line naming
the variable: a secret made up on the spot would differ between machines and seal keys no other process
can open. Only `heartline dev` makes them up, once, into its data folder (mode 0600), says so, and hands
them to the processes it starts (and, through its state file, to those started beside it).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from heartline.settings import PREFIX, Settings, SettingsError

SIGNING_KEY_SECRET = "signing_key_secret"
WEBHOOK_SECRET_KEY = "webhook_secret_key"
# setting -> what it seals and who needs it, for the error message
SEALING_SECRETS = {
    SIGNING_KEY_SECRET: "it seals the keys that sign the edge's answers; every edge and "
                        "`heartline signing-key` need the same one",
    WEBHOOK_SECRET_KEY: "it seals the webhook endpoints' secrets; the admin and the worker need the same one",
}


def variable(name: str) -> str:
    """The environment variable of the sealing secret `name`."""
    return PREFIX + name.upper()


def sealing_secret(settings: Settings, name: str) -> str:
    """The sealing secret `name` (SIGNING_KEY_SECRET or WEBHOOK_SECRET_KEY); SettingsError when unset."""
    value: str | None = getattr(settings, name)
    if value:
        return value
    hint = ""
    kept = Path(settings.data_dir) / name
    if kept.exists():
        hint = f" (`heartline dev` keeps its own in {kept})"
    raise SettingsError(f"{variable(name)} is not set: {SEALING_SECRETS[name]}; set it to a long random "
                        f"string{hint}")


def dev_sealing_secret(data_dir: Path, name: str) -> tuple[str, bool]:
    """`heartline dev` only: the secret kept in <data_dir>/<name> (0600), made on first use; and whether it
    was made now."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once must not overwrite each other's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret, True
