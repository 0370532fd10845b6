"""A multiplexing Redis client for the hot path: concurrent requests share one connection and its writes.

redis-py spends ~60 µs of client CPU per call (docs/architecture.md, performance notes) — a pooled connection checked out and back,
a command object, a parser round — and that, not Redis, is what caps the heartbeat.  Here every command
is packed by hiredis, appended to one buffer with a future, and the buffer goes out in ONE socket write
per event-loop tick; replies come back in order on the same connection, so they are matched to the
futures first in, first out.  Under load all heartbeats in flight share a write and a read; when idle a
command waits at most one loop tick.

It speaks only what the heartbeat path needs, with redis-py's names and exceptions, so
`heartline.plane.scripts.PlaneScripts` takes it in place of a `redis.asyncio.Redis`:

    client = MultiplexedRedis.from_url(settings.redis_url)
    scripts = PlaneScripts(client, shards=..., max_len=...)     # scripts.heartbeat(...) now multiplexes
    ...
    await client.aclose()

`execute()` returns an awaitable without creating a coroutine when connected (the common case), and
connects lazily — again after a lost connection — so a Redis restart costs the requests in flight an
error each and nothing more.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _ReplyError(Exception):
    """What hiredis builds for an error reply; turned into redis-py's exception before it is raised."""


def _as_exception(error: _ReplyError) -> ResponseError | BusyLoadingError:
    message = str(error)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("LOADING"):
        # a restarted server still reading its data: redis-py's BusyLoadingError, a ConnectionError,
        # so callers treat it as the plane being unavailable for a moment (the edge's 503)
        return BusyLoadingError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    """One connection: writes batched per loop tick, replies matched to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, encoding: str | None,
                 command_timeout: float | None = None) -> None:
        self.loop = loop
        self.command_timeout = command_timeout
        # a hung server is noticed by a watchdog that runs only while replies are awaited: no timer and
        # no clock read per command
        self.last_progress = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = (hiredis.Reader(replyError=_ReplyError, encoding=encoding) if encoding
                       else hiredis.Reader(replyError=_ReplyError))
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.closed = loop.create_future()
        self.writes = 0
        self.commands = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not a subclass of asyncio.Transport, but has the same methods
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if not self.waiting:
            self.last_progress = self.loop.time()
            if self.command_timeout and self.watchdog is None:
                self.watchdog = self.loop.call_later(self.command_timeout, self._watch)
        self.waiting.append(future)
        self.outgoing.append(packed)
        self.commands += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is None or self.transport.is_closing() or not self.outgoing:
            return
        data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
        self.outgoing.clear()
        self.transport.write(data)
        self.writes += 1

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting or self.command_timeout is None:
            return
        idle = self.loop.time() - self.last_progress
        if idle < self.command_timeout:
            self.watchdog = self.loop.call_later(self.command_timeout - idle, self._watch)
            return
        # no reply for a whole timeout while commands wait: give up on this connection, as redis-py's
        # socket_timeout would; the next command connects anew
        self._fail(RedisTimeoutError(f"no reply from Redis within {self.command_timeout:g} s"))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_progress = self.loop.time()
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # the server sent a reply nobody asked for: the stream is corrupt
                self._fail(RedisConnectionError("unexpected reply from Redis"))
                if self.transport is not None:
                    self.transport.close()
                return
            future = self.waiting.popleft()
            if future.done():  # its caller was cancelled; the reply is dropped, the order is kept
                continue
            if isinstance(reply, _ReplyError):
                future.set_exception(_as_exception(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.outgoing.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class MultiplexedRedis:
    """One pipelined connection to Redis shared by every caller of one event loop.

    `host`/`port`/`db`/`username`/`password` say where to connect; `decode_responses` decodes bulk
    replies as UTF-8 like redis-py's option of that name; `connect_timeout` bounds a (re)connect;
    `command_timeout` (None: wait forever) fails the commands in flight with redis-py's TimeoutError when
    the server sends nothing for that long while they wait, and drops the connection.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 decode_responses: bool = False, connect_timeout: float = 5.0,
                 command_timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.encoding = "utf-8" if decode_responses else None
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
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

    async def _connect(self) -> _Protocol:
        if self._protocol is not None and self._protocol.usable:
            return self._protocol
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        # shield: one caller's cancellation must not abort the connect the others wait for
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(loop, self.encoding, self.command_timeout),
                                      self.host, self.port),
                self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from exc
        handshake = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            handshake.append(protocol.send(hiredis.pack_command(auth)))
        if self.db:
            handshake.append(protocol.send(hiredis.pack_command(("SELECT", self.db))))
        try:
            await asyncio.gather(*handshake)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
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
