"""`heartline signing-key create | list | rotate | retire`, run as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
from shared_support import process_env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = process_env(sealing_secrets=False)
    return subprocess.run([sys.executable, "-m", "heartline", "signing-key", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)


async def test_create_rotate_retire_and_list(database_url: str, tmp_path: Path, db: asyncpg.Connection) -> None:
    env = {"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_DATA_DIR": str(tmp_path),
           "HEARTLINE_SIGNING_KEY_SECRET": "a-secret-for-the-signing-keys-test"}
    first = _run(["create", "--activate"], env)
    assert first.returncode == 0, first.stderr
    first_kid = first.stdout.split()[0]
    announced = _run(["create"], env)
    announced_kid = announced.stdout.split()[0]
    assert "published" in announced.stdout and "edges sign" not in announced.stdout

    rotated = _run(["rotate", "--to", announced_kid], env)
    assert rotated.returncode == 0 and "active" in rotated.stdout
    refused = _run(["retire", announced_kid], env)
    assert refused.returncode == 1 and "rotate to another key first" in refused.stderr
    assert _run(["retire", first_kid], env).returncode == 0
    assert _run(["rotate", "--to", first_kid], env).returncode == 1
    assert _run(["retire", "hl-nope"], env).returncode == 1

    listing = _run(["list"], env).stdout.splitlines()
    assert [line.split()[:2] for line in listing] == [[first_kid, "retired"], [announced_kid, "active"]]
    jwks = json.loads(_run(["list", "--jwks"], env).stdout)
    assert [k["kid"] for k in jwks["keys"]] == [announced_kid]

    # Another secret cannot open the keys: rotating to one is refused before it could sign.
    third = _run(["create"], env).stdout.split()[0]
    wrong = _run(["rotate", "--to", third], {**env, "HEARTLINE_SIGNING_KEY_SECRET": "x" * 20})
    assert wrong.returncode == 1 and "SIGNING_KEY_SECRET changed" in wrong.stderr
    output = "".join(r.stdout + r.stderr for r in (first, announced, rotated))
    sealed = await db.fetch("SELECT sealed FROM signing_key_secrets")
    assert all(bytes(r["sealed"]).hex()[:24] not in output for r in sealed)
    actors = {r["actor"] for r in await db.fetch("SELECT actor FROM audit_log WHERE table_name = 'signing_keys'")}
    assert actors == {"cli"}
