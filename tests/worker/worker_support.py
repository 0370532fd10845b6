"""Helpers shared by the worker tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from heartline.plane import keys


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")


async def add_heartbeat(redis: aioredis.Redis, shards: int, license_id: int, token: str,
                        device_id: int | None, entry_id: str = "*", *, old_format: bool = False,
                        count: int | None = None) -> str:
    """XADD one heartbeat entry as heartbeat.lua writes it (h = 'license|token|device', and n = count when
    `count` is given: a marked heartbeat), or with old_format as it wrote it before 'h' (three fields l,
    t, d): a stream may hold those at an upgrade."""
    device = "" if device_id is None else device_id
    fields: dict[str, Any] = (
        {"l": license_id, "t": token, "d": device} if old_format
        else {"h": f"{license_id}|{token}|{device}"} | ({} if count is None else {"n": count}))
    got = await redis.xadd(keys.heartbeat_stream(keys.shard_of(license_id, shards)), fields,  # type: ignore[arg-type]
                           id=entry_id)
    return got.decode() if isinstance(got, bytes) else str(got)


async def add_session_event(redis: aioredis.Redis, shards: int, *, kind: str, license_id: int, token: str,
                            device_id: int | None = None, fingerprint: str = "", started_ms: int,
                            at_ms: int, reason: str = "", count: int = 0) -> None:
    """XADD one session event with the fields start.lua / end_session write."""
    await redis.xadd(keys.event_stream(keys.shard_of(license_id, shards)), {
        "k": kind, "l": license_id, "t": token, "d": "" if device_id is None else device_id,
        "f": fingerprint, "s": started_ms, "at": at_ms, "r": reason, "n": count, "lh": "",
        "v": "1.2.3", "ip": "192.0.2.7"})


@dataclass
class LiveLicense:
    license_id: int
    license_key: str
    device_id: int
    fingerprint: str


class TcpProxy:
    """A TCP forwarder to a real server that a test can cut (refuse and drop every connection) and
    restore on the same port: PostgreSQL made unreachable without stopping the shared test server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
