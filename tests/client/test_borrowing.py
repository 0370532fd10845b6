"""Borrowing through the client library against a real edge and worker: the seat stays taken while the
client is offline (edge down), the lease verifies with no network, a return frees the seat, an expired
borrow is ended by the reaper as borrow_expired."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from client_support import ServerProcess
from heartline_client import AsyncClient, AsyncSession, KeySet, Lease, LeaseError, Refused

pytestmark = pytest.mark.slow


def _in(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


async def test_a_borrow_holds_its_seat_offline_and_frees_it_on_return(
        edge: ServerProcess, pinned: KeySet, api_key: str, make_license: Callable[..., Any]) -> None:
    lic = await make_license(heartbeat_interval_s=1, heartbeat_timeout_s=3, concurrent_sessions_limit=1,
                             max_borrow_s=3600, offline_grace_s=120)
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as client:
        session = AsyncSession(client, "fp-laptop", handle_sigterm=False, backoff_cap_s=1)
        await session.open()
        assert session.offline_grace_s == 120
        lease = await session.borrow(_in(600))
        stored = lease.to_json()                                  # kept on disk by a real program

        await asyncio.to_thread(edge.stop)                        # offline, far past the 3 s timeout
        await session.close()                                     # the program exits; the borrow stays
        await asyncio.sleep(5)
        offline = Lease.from_json(stored)
        offline.check(pinned, fingerprint="fp-laptop")            # verifies with no network at all
        with pytest.raises(LeaseError, match="another device"):
            offline.check(pinned, fingerprint="fp-desktop")
        with pytest.raises(LeaseError, match="ran out"):
            offline.check(pinned, now=_in(3600))
        forged = dataclasses.replace(offline, evidence=dataclasses.replace(
            offline.evidence, body=offline.evidence.body.replace(b'"until":"', b'"until":"2')))
        with pytest.raises(LeaseError, match="does not verify"):
            forged.check(pinned)

        await asyncio.to_thread(edge.start)
        with pytest.raises(Refused) as full:                      # the seat is still taken
            await client.start_session("fp-desktop")
        assert full.value.code == "SESSION_LIMIT_REACHED"
        await client.return_borrow(offline.borrow_id)
        assert (await client.start_session("fp-desktop")).status == 201


async def test_an_expired_borrow_is_ended_by_the_reaper_as_borrow_expired(
        edge: ServerProcess, worker: ServerProcess, pinned: KeySet, api_key: str,
        make_license: Callable[..., Any], db: asyncpg.Connection) -> None:
    lic = await make_license(heartbeat_interval_s=1, heartbeat_timeout_s=60, concurrent_sessions_limit=1,
                             max_borrow_s=3600)
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned) as client:
        async with AsyncSession(client, "fp-laptop", handle_sigterm=False) as session:
            lease = await session.borrow(_in(3))
        with pytest.raises(Refused):
            await client.start_session("fp-desktop")
        row = None
        for _ in range(600):
            row = await db.fetchrow("SELECT end_reason FROM session_history WHERE session_token = $1::uuid",
                                    lease.session_token)
            if row is not None:
                break
            await asyncio.sleep(0.1)
        assert row is not None and row["end_reason"] == "borrow_expired"
        assert (await client.start_session("fp-desktop")).status == 201
