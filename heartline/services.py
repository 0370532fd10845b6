"""Resolving where PostgreSQL and Redis are: configured URLs, a running `heartline dev`, or neither.

`heartline dev` writes the URLs of the servers it started, and the sealing secrets it made up
(heartline/sealing.py), to `<data_dir>/dev.json` (0600), so that other commands (`heartline migrate`,
`api-key`, `signing-key`, the tests of a developer) find them without any setting.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from heartline.sealing import SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY
from heartline.settings import PREFIX, Settings, SettingsError


def dev_state_path(settings: Settings) -> Path:
    return settings.data_dir / "dev.json"


def write_dev_state(settings: Settings, database_url: str, redis_url: str) -> None:
    from heartline.devstack import write_private

    # the URLs carry the embedded servers' passwords: readable by this user only
    write_private(dev_state_path(settings),
                  json.dumps({"database_url": database_url, "redis_url": redis_url, "pid": os.getpid(),
                              SIGNING_KEY_SECRET: settings.signing_key_secret,
                              WEBHOOK_SECRET_KEY: settings.webhook_secret_key}))


def clear_dev_state(settings: Settings) -> None:
    dev_state_path(settings).unlink(missing_ok=True)


def resolve(settings: Settings, *, need_database: bool = True, need_redis: bool = True) -> Settings:
    """Fill unset URLs (and sealing secrets) from a running `heartline dev`; stop with one clear line when
    no URL is found."""
    db, rd = settings.database_url, settings.redis_url
    signing, webhooks = settings.signing_key_secret, settings.webhook_secret_key
    state_file = dev_state_path(settings)
    if None in (db, rd, signing, webhooks) and state_file.exists():
        state = json.loads(state_file.read_text())
        if process_alive(int(state.get("pid", 0))):
            db = db or state["database_url"]
            rd = rd or state["redis_url"]
            signing = signing or state.get(SIGNING_KEY_SECRET)
            webhooks = webhooks or state.get(WEBHOOK_SECRET_KEY)
    if need_database and db is None:
        raise SettingsError(f"{PREFIX}DATABASE_URL is not set and no `heartline dev` is running; "
                            "set it or start `heartline dev`")
    if need_redis and rd is None:
        raise SettingsError(f"{PREFIX}REDIS_URL is not set and no `heartline dev` is running; "
                            "set it or start `heartline dev`")
    return settings.replace(database_url=db, redis_url=rd, signing_key_secret=signing,
                            webhook_secret_key=webhooks)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as dead; no pid is not alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
