"""The client library against a real edge, worker, PostgreSQL and Redis: a whole session life, a lost
session started again, a lost seat, SIGTERM, and a key rotation the client sails through."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from client_support import ServerProcess
from heartline_client import AsyncClient, AsyncSession, Callbacks, KeySet, Refused, SessionState, Unreachable

from heartline.settings import Settings
from heartline.signing.keys import KeyBox, create_key, rotate

pytestmark = pytest.mark.slow


async def until(check: Callable[[], Any], timeout: float = 60.0) -> None:
    """Wait for a condition the background heartbeats bring about (no assertion on how long it took)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_a_whole_session_life(edge: ServerProcess, worker: ServerProcess, pinned: KeySet, api_key: str,
                                    make_license: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic = await make_license(heartbeat_interval_s=1, heartbeat_timeout_s=30, concurrent_sessions_limit=1)
    heard: list[str] = []
    callbacks = Callbacks(on_offline=lambda left: heard.append("offline"),
                          on_restored=lambda: heard.append("restored"))
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as client:
        session = AsyncSession(client, "fp-life", device_name="laptop", client_version="1.2.3",
                               callbacks=callbacks, handle_sigterm=False, backoff_cap_s=2)
        await session.open()                                          # activate + start
        token = session.token
        assert session.valid and session.state is SessionState.ACTIVE and not session.resumed
        assert await db.fetchval("SELECT device_name FROM device_registrations WHERE license_id = $1 "
                                 "AND hardware_fingerprint = 'fp-life' AND is_active", lic["id"]) == "laptop"

        # Heartbeats at the license's 1 s interval against a 1.5 s minimum gap: some get 429 + Retry-After,
        # which the client honours, and the session carries on.
        await until(lambda: session.stats.heartbeats >= 3 and session.stats.too_frequent >= 1)
        assert "HEARTBEAT_TOO_FREQUENT" in session.stats.reasons

        # The edge restarts: the client goes offline (still valid inside the 30 s timeout), backs off,
        # and comes back to the same session, which lived on in Redis.
        beats = session.stats.heartbeats
        await asyncio.to_thread(edge.stop)
        await until(lambda: session.stats.unreachable >= 1)
        assert session.state is SessionState.OFFLINE and session.valid
        await asyncio.to_thread(edge.start)
        await until(lambda: session.stats.heartbeats >= beats + 2 and session.state is SessionState.ACTIVE)
        assert session.token == token and heard[:1] == ["offline"] and "restored" in heard

        await session.close()                                         # end
        assert session.state is SessionState.ENDED and not session.valid
        with pytest.raises(Refused) as gone:
            await client.heartbeat(token or "")
        assert gone.value.code == "SESSION_NOT_FOUND"

    row = None
    for _ in range(600):
        row = await db.fetchrow("SELECT end_reason, heartbeat_count FROM session_history "
                                "WHERE session_token = $1", token)
        if row is not None:
            break
        await asyncio.sleep(0.1)
    assert row is not None and row["end_reason"] == "client_end"
    assert row["heartbeat_count"] >= beats + 2


async def test_a_lost_session_is_started_again_when_a_seat_is_free(
        edge: ServerProcess, pinned: KeySet, api_key: str, make_license: Callable[..., Any],
        redis: aioredis.Redis) -> None:
    lic = await make_license(heartbeat_interval_s=1, heartbeat_timeout_s=30, concurrent_sessions_limit=1)
    lost: list[str] = []
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as client, \
            AsyncSession(client, "fp-a", callbacks=Callbacks(on_seat_lost=lost.append),
                         handle_sigterm=False, backoff_cap_s=1) as session:
        first = session.token
        await redis.flushdb()                                    # Redis lost every session
        other = await client.start_session("fp-b")               # another device takes the only seat
        await until(lambda: session.state is SessionState.SEAT_LOST)
        assert lost == ["SESSION_LIMIT_REACHED"] and not session.valid
        await client.end_session(other.data["session_token"])
        await until(lambda: session.state is SessionState.ACTIVE)
        assert session.valid and session.token not in (None, first) and session.stats.restarts >= 1


async def test_sigterm_ends_the_session(edge: ServerProcess, pinned: KeySet, api_key: str,
                                        make_license: Callable[..., Any], tmp_path: Path) -> None:
    lic = await make_license(heartbeat_interval_s=2, heartbeat_timeout_s=30)
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(await asyncio.to_thread(_get, f"{edge.url}/v1/keys"))
    program = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from heartline_client import Client, KeySet, Session
        keys = KeySet.from_jwks(Path({str(jwks)!r}).read_bytes())
        with Client({edge.url!r}, api_key={api_key!r}, license_key={lic["license_key"]!r}, keys=keys) as client:
            with Session(client, "fp-sigterm") as session:
                print(session.token, flush=True)
                while session.valid:
                    time.sleep(0.1)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "client" / "src")}
    proc = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-c", program], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    token = (await asyncio.to_thread(proc.stdout.readline)).strip()
    assert token, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGTERM
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as client:
        with pytest.raises(Refused) as gone:
            await client.heartbeat(token)
    assert gone.value.code == "SESSION_NOT_FOUND"


def _get(url: str) -> bytes:
    import httpx

    return httpx.get(url, timeout=10).content


async def test_a_rotation_is_invisible_to_clients_that_pinned_the_announced_key(
        edge: ServerProcess, pinned: KeySet, api_key: str, make_license: Callable[..., Any],
        db: asyncpg.Connection, client_settings: Settings) -> None:
    lic = await make_license(heartbeat_interval_s=1, heartbeat_timeout_s=30)
    box = KeyBox(client_settings.signing_key_secret or "")
    announced = await create_key(db, box)                         # 1. publish the next key
    await until(lambda: announced.kid in _get(f"{edge.url}/v1/keys").decode(), timeout=30)
    both = KeySet.from_jwks(await asyncio.to_thread(_get, f"{edge.url}/v1/keys"))   # 2. ship it pinned
    assert set(both.kids()) == {*pinned.kids(), announced.kid}
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=both) as client, \
            AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as old_release, \
            AsyncSession(client, "fp-rot", handle_sigterm=False, backoff_cap_s=1) as session:
        assert (await client.validate("fp-rot")).kid == pinned.kids()[0]
        await rotate(db, box, announced.kid)                      # 3. rotate
        await until(lambda: session.stats.heartbeats >= 1)

        async def signs_with_new() -> bool:
            return (await client.validate("fp-rot")).kid == announced.kid

        for _ in range(300):
            if await signs_with_new():
                break
            await asyncio.sleep(0.1)
        assert await signs_with_new()
        beats = session.stats.heartbeats
        await until(lambda: session.stats.heartbeats >= beats + 2)
        assert session.valid and session.stats.untrusted == 0
        # A release that pinned only the old key refuses the new signatures: why step 2 comes first.
        with pytest.raises(Unreachable) as refused:
            await old_release.validate("fp-rot")
        assert refused.value.untrusted
