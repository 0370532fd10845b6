"""The protocol core both multiplexing clients share: one connection, writes batched per loop tick,
replies matched to futures in order, redis-py's exceptions, a bound on what may wait.

Every command is packed by hiredis, appended to one buffer with a future, and the buffer goes out
once per event-loop tick, or as soon as it holds `write_batch` commands; replies come back in order on
the same connection, so they are matched to the futures first in, first out.

Why `write_batch` (default 8): with one write per tick, an edge under load takes in every request in
flight, packs all their commands and writes them at once; Redis then works through that batch while the
edge has nothing to do, and the edge works through the answers while Redis has nothing to do.  The two
take turns instead of overlapping, and neither was busy more than ~60-70 % of the time (top during
loadtests.bench).  Writing every 8 commands as they are made lets Redis start on the first ones while the
edge makes the rest: 12-14 % more heartbeats/s on the bench's quiet 2-core box (docs/performance.md).

Three options change what a batch is:
- `write_batch` (above): at most this many commands per socket write, 0 for no bound (one write per
  tick).  Not applied with `min_replicas`, whose WAIT holds the connection once per write.
- `max_pending` bounds the commands written or waiting to be written whose replies have not come back
  (back-pressure): beyond it `send` refuses at once with `PlaneBusy`, a redis-py ConnectionError, which
  the edge answers 503 PLANE_UNAVAILABLE with Retry-After.  A slow Redis thus costs refusals, never
  unbounded memory in the edge.
- `min_replicas` > 0 appends one `WAIT min_replicas timeout` to every batch, and holds the batch's
  replies until WAIT answers: a caller learns its result only once its write reached that many replicas
  (one WAIT per socket write, not per command).  When fewer acknowledge in time the batch fails with
  `ReplicationTimeout` (a ConnectionError: 503, retry) — its writes were applied on the master but may
  not survive its loss.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Commands one connection may have in flight (sent or about to be, reply not back).  Far above what an
# edge process meets when Redis keeps up (a few hundred), far below what would hurt its memory.
DEFAULT_MAX_PENDING = 20_000
# Commands per socket write (write_batch above): 4-8 served the most heartbeats per second on the bench's
# 2-core box, 16 and 32 fewer, one write per tick the fewest (docs/performance.md).
DEFAULT_WRITE_BATCH = 8
# How long WAIT lets the replicas take to acknowledge a batch before it is failed.
REPLICA_WAIT_MS = 1000


class PlaneBusy(RedisConnectionError):
    """Too many commands wait for this Redis connection already: refused at once (back-pressure)."""


class ReplicationTimeout(RedisConnectionError):
    """A batch's writes did not reach `min_replicas` replicas within REPLICA_WAIT_MS."""


class _ReplyError(Exception):
    """What hiredis builds for an error reply; turned into redis-py's exception before it is raised."""


# Error prefixes -> redis-py's exception, which (as redis-py's own parser does) gets the message
# without its prefix: MovedError/AskError parse "slot host:port" from it.
_ERRORS: dict[str, type[ResponseError]] = {
    "NOSCRIPT": NoScriptError, "MOVED": MovedError, "ASK": AskError, "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError, "READONLY": ReadOnlyError,
}


def as_exception(error: Exception) -> ResponseError | BusyLoadingError:
    message = str(error)
    prefix, _, rest = message.partition(" ")
    if prefix == "LOADING":
        # a restarted server still reading its data: redis-py's BusyLoadingError, a ConnectionError,
        # so callers treat it as the plane being unavailable for a moment (the edge's 503)
        return BusyLoadingError(message)
    kind = _ERRORS.get(prefix)
    if kind is None:
        return ResponseError(message)
    if kind in (MovedError, AskError, NoScriptError, ReadOnlyError):
        return kind(rest)
    return kind(message)


class _Wait:
    """Stands in the reply queue for a batch's WAIT: the replies before it are held until it answers."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: list[tuple[asyncio.Future[Any], Any]] = []


class Connection(asyncio.Protocol):
    """One connection: writes batched per loop tick (at most `write_batch` commands each), replies
    matched to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, encoding: str | None,
                 command_timeout: float | None = None, *, max_pending: int = DEFAULT_MAX_PENDING,
                 min_replicas: int = 0, write_batch: int = DEFAULT_WRITE_BATCH) -> None:
        self.loop = loop
        self.command_timeout = command_timeout
        self.max_pending = max_pending
        self.min_replicas = min_replicas
        self.write_batch = write_batch
        # a hung server is noticed by a watchdog that runs only while replies are awaited: no timer and
        # no clock read per command
        self.last_progress = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = (hiredis.Reader(replyError=_ReplyError, encoding=encoding) if encoding
                       else hiredis.Reader(replyError=_ReplyError))
        self.waiting: collections.deque[Any] = collections.deque()  # futures, and _Wait markers
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.closed = loop.create_future()
        self.writes = 0
        self.commands = 0
        self.held: _Wait | None = None  # the batch whose replies are being held for its WAIT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not a subclass of asyncio.Transport, but has the same methods
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if len(self.waiting) >= self.max_pending:
            raise PlaneBusy(f"{len(self.waiting)} commands already wait for this Redis connection")
        future = self.loop.create_future()
        if not self.waiting:
            self.last_progress = self.loop.time()
            if self.command_timeout and self.watchdog is None:
                self.watchdog = self.loop.call_later(self.command_timeout, self._watch)
        self.waiting.append(future)
        self.outgoing.append(packed)
        self.commands += 1
        if len(self.outgoing) >= self.write_batch > 0 and not self.min_replicas:
            self._write()  # Redis starts on these while the loop makes the next ones
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def send_unchecked(self, packed: bytes) -> asyncio.Future[Any]:
        """`send` for a handshake or control command that must not be refused by back-pressure."""
        limit, self.max_pending = self.max_pending, len(self.waiting) + 1
        try:
            return self.send(packed)
        finally:
            self.max_pending = limit

    def _flush(self) -> None:
        self.flush_scheduled = False
        self._write()

    def _write(self) -> None:
        """Write what is waiting to go out, in one socket write (with its WAIT under min_replicas)."""
        if self.transport is None or self.transport.is_closing() or not self.outgoing:
            return
        if self.min_replicas:
            # hiredis's stub declares a one-element tuple for pack_command
            self.outgoing.append(hiredis.pack_command(("WAIT", self.min_replicas, REPLICA_WAIT_MS)))  # type: ignore[arg-type]
            self.waiting.append(_Wait())
        data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
        self.outgoing.clear()
        self.transport.write(data)
        self.writes += 1

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting or self.command_timeout is None:
            return
        idle = self.loop.time() - self.last_progress
        # a WAIT may legitimately take REPLICA_WAIT_MS before the server answers anything
        timeout = self.command_timeout + (REPLICA_WAIT_MS / 1000 if self.min_replicas else 0)
        if idle < timeout:
            self.watchdog = self.loop.call_later(timeout - idle, self._watch)
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
            if self.min_replicas:
                self._hold(future, reply)
                continue
            if future.done():  # its caller was cancelled; the reply is dropped, the order is kept
                continue
            if isinstance(reply, _ReplyError):
                future.set_exception(as_exception(reply))
            else:
                future.set_result(reply)

    def _hold(self, entry: Any, reply: Any) -> None:
        """min_replicas: keep each reply until its batch's WAIT answers, then release or fail them all."""
        if not isinstance(entry, _Wait):
            self.held = self.held or _Wait()
            self.held.held.append((entry, reply))
            return
        batch, self.held = self.held, None
        if isinstance(reply, _ReplyError):  # e.g. the node became a replica: WAIT is refused there
            error: Exception | None = ReplicationTimeout(f"WAIT failed: {reply}")
        elif isinstance(reply, int) and reply >= self.min_replicas:
            error = None
        else:
            error = ReplicationTimeout(f"write reached {reply if isinstance(reply, int) else 0} of "
                                       f"{self.min_replicas} replicas within {REPLICA_WAIT_MS} ms")
        for future, held in (batch.held if batch else []):
            if future.done():
                continue
            if isinstance(held, _ReplyError):
                # a command's own error stands whatever WAIT said: nothing of it was written, and a
                # MOVED must reach the cluster client (a master restarted as a replica answers MOVED to
                # every write and refuses the WAIT; masking it would keep the stale slot map for good)
                future.set_exception(as_exception(held))
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(held)

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
        held, self.held = self.held, None
        for future, _ in (held.held if held else []):
            if not future.done():
                future.set_exception(error)
        while self.waiting:
            future = self.waiting.popleft()
            if isinstance(future, _Wait):
                continue
            if not future.done():
                future.set_exception(error)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()
