"""The client library's session-bound answer MACs against a real edge process: the start hands over the
session's answer key, heartbeat answers come back MACed and verify, a changed one is not believed (the
same as a changed Ed25519 one), and a client that does not opt in gets Ed25519 answers as before."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from client_support import ServerProcess
from heartline_client import Answer, AsyncClient, KeySet, Refused, Unreachable

pytestmark = pytest.mark.slow


class Tamper(httpx.AsyncBaseTransport):
    """A man in the middle: passes everything through, and changes heartbeat answers' bodies when armed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.armed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not (self.armed and request.url.path.endswith("/heartbeat")):
            return response
        body = (await response.aread()).replace(b'"offline_grace_s":', b'"offline_grace_s":9')
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _beat(client: AsyncClient, token: str) -> Answer:
    """One accepted heartbeat, honouring 429's Retry-After (the edge's 1.5 s minimum gap)."""
    for _ in range(20):
        try:
            return await client.heartbeat(token)
        except Refused as refused:
            if refused.status != 429:
                raise
            await asyncio.sleep(refused.retry_after_s or 1)
    raise AssertionError("no heartbeat accepted")


async def test_heartbeat_answers_are_maced_under_the_session_key(
        edge: ServerProcess, pinned: KeySet, api_key: str, make_license: Callable[..., Any]) -> None:
    lic = await make_license(heartbeat_interval_s=30, heartbeat_timeout_s=120)
    tamper = Tamper()
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned,
                           transport=tamper) as client:
        await client.activate("fp-mac")
        started = await client.start_session("fp-mac")
        token = started.data["session_token"]
        assert started.kid in pinned.kids() and token in client.answer_keys
        held = client.answer_keys[token]
        assert held.kid == started.kid

        beat = await _beat(client, token)
        assert beat.kid == f"session:{held.kid}" and beat.data["next_heartbeat_in_s"] == 30
        assert beat.evidence is not None and beat.evidence.verify(pinned) == beat.created

        tamper.armed = True
        with pytest.raises(Unreachable, match="not trusted") as untrusted:
            await _beat(client, token)
        assert untrusted.value.untrusted
        tamper.armed = False

        await client.end_session(token)
        assert token not in client.answer_keys


async def test_a_client_that_does_not_opt_in_gets_ed25519(
        edge: ServerProcess, pinned: KeySet, api_key: str, make_license: Callable[..., Any]) -> None:
    lic = await make_license(heartbeat_interval_s=30, heartbeat_timeout_s=120)
    async with AsyncClient(edge.url, api_key=api_key, license_key=lic["license_key"], keys=pinned,
                           session_macs=False) as client:
        await client.activate("fp-plain")
        started = await client.start_session("fp-plain")
        token = started.data["session_token"]
        assert "answer_key" not in started.data and not client.answer_keys
        beat = await _beat(client, token)
        assert beat.kid in pinned.kids()
        await client.end_session(token)
