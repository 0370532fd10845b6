"""A multiplexing Redis client for the hot path: concurrent requests share one connection and its writes.

redis-py spends 83-94 µs of client CPU per call and valkey-glide 54-70 µs, where this client spends 6-7
(docs/architecture.md: 64 concurrent tasks calling EVALSHA on one Redis) — and that client cost, not
Redis, is what caps the heartbeat.  Every command is packed by hiredis, appended to one buffer with a
future, and the buffer goes out once per event-loop tick or every 8 commands (protocol.py); under load
the heartbeats in flight share writes and reads; when idle a command waits at most one loop tick.
Redis Cluster is served by cluster.py, with one of these per master.

It speaks only what the heartbeat path needs, with redis-py's names and exceptions, so
`heartline.plane.scripts.PlaneScripts` takes it in place of a `redis.asyncio.Redis`:

    client = MultiplexedRedis.from_url(settings.redis_url)     # or heartline.plane.redis.multiplexed()
    scripts = PlaneScripts(client, shards=..., max_len=...)     # scripts.heartbeat(...) now multiplexes
    ...
    await client.aclose()

`execute()` returns an awaitable without creating a coroutine when connected (the common case), and
connects lazily — again after a lost connection — so a Redis restart costs the requests in flight an
error each and nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from heartline.plane.redis.protocol import DEFAULT_MAX_PENDING, DEFAULT_WRITE_BATCH, Connection


class MultiplexedRedis:
    """One pipelined connection to Redis shared by every caller of one event loop.

    `host`/`port`/`db`/`username`/`password` say where to connect; `decode_responses` decodes bulk
    replies as UTF-8 like redis-py's option of that name; `connect_timeout` bounds a (re)connect;
    `command_timeout` (None: wait forever) fails the commands in flight with redis-py's TimeoutError when
    the server sends nothing for that long while they wait, and drops the connection; `max_pending`,
    `min_replicas` and `write_batch`: back-pressure, replica acknowledgement and commands per socket
    write, see protocol.py.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 decode_responses: bool = False, connect_timeout: float = 5.0,
                 command_timeout: float | None = None, max_pending: int = DEFAULT_MAX_PENDING,
                 min_replicas: int = 0, write_batch: int = DEFAULT_WRITE_BATCH) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.encoding = "utf-8" if decode_responses else None
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_pending = max_pending
        self.min_replicas = min_replicas
        self.write_batch = write_batch
        self._protocol: Connection | None = None
        self._connecting: asyncio.Task[Connection] | None = None
        self._writes_before = 0  # writes and commands of connections already replaced
        self._commands_before = 0

    @staticmethod
    def supports_url(url: str) -> bool:
        """Whether `from_url` takes this URL (plain `redis://`; TLS and unix sockets stay on redis-py)."""
        return urlsplit(url).scheme == "redis"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MultiplexedRedis:
        """`redis://[[user]:password@]host[:port][/db]`, as redis-py reads it."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"only redis:// URLs are supported, not {parts.scheme}://")
        path = parts.path.lstrip("/")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, db=int(path) if path else 0,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None, **kwargs)

    @property
    def writes(self) -> int:
        """Socket writes so far: how many batches the commands went out in."""
        return self._writes_before + (self._protocol.writes if self._protocol else 0)

    @property
    def commands(self) -> int:
        """Commands sent so far; commands / writes is the average batch."""
        return self._commands_before + (self._protocol.commands if self._protocol else 0)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; the result (or redis-py's exception) arrives on the returned awaitable."""
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return protocol.send(hiredis.pack_command(args))
        return asyncio.ensure_future(self._execute_after_connect(args))

    async def _execute_after_connect(self, args: tuple[Any, ...]) -> Any:
        protocol = await self._connect()
        return await protocol.send(hiredis.pack_command(args))

    def execute_packed(self, packed: bytes) -> asyncio.Future[Any]:
        """`execute` for one command already packed as RESP (the plane's heartbeat packs its own, most of
        it once per license: heartline/plane/scripts.py)."""
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return protocol.send(packed)
        return asyncio.ensure_future(self._send_after_connect(packed))

    async def _send_after_connect(self, packed: bytes) -> Any:
        protocol = await self._connect()
        return await protocol.send(packed)

    async def execute_asking(self, *args: Any) -> Any:
        """ASKING and then the command, back to back on one connection (a cluster's ASK redirection:
        the slot is being imported here, and ASKING lets the next command in)."""
        protocol = await self._connect()
        asking = protocol.send_unchecked(hiredis.pack_command(("ASKING",)))
        reply = protocol.send(hiredis.pack_command(args))
        await asking
        return await reply

    async def _connect(self) -> Connection:
        if self._protocol is not None and self._protocol.usable:
            return self._protocol
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        # shield: one caller's cancellation must not abort the connect the others wait for
        return await asyncio.shield(self._connecting)

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(loop, self.encoding, self.command_timeout,
                                                          max_pending=self.max_pending,
                                                          write_batch=self.write_batch),
                                      self.host, self.port),
                self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from exc
        handshake = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            # hiredis's stub declares a one-element tuple for pack_command
            handshake.append(protocol.send(hiredis.pack_command(auth)))  # type: ignore[arg-type]
        if self.db:
            handshake.append(protocol.send(hiredis.pack_command(("SELECT", self.db))))  # type: ignore[arg-type]
        try:
            await asyncio.gather(*handshake)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        protocol.min_replicas = self.min_replicas  # after the handshake: it needs no replica
        if self._protocol is not None:
            self._writes_before += self._protocol.writes
            self._commands_before += self._protocol.commands
        self._protocol = protocol
        return protocol

    # --- the redis-py method names that the plane's scripts use --------------------------------------

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> asyncio.Future[Any]:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, source: str) -> Any:
        return await self.execute("SCRIPT", "LOAD", source)

    async def ping(self) -> bool:
        reply = await self.execute("PING")
        return reply in (b"PONG", "PONG")

    async def aclose(self) -> None:
        """Close the connection; commands still in flight fail with a ConnectionError."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await protocol.closed
