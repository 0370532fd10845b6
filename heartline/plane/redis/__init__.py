"""Redis clients of the session plane, for one node or a Redis Cluster, chosen by the URL.

- `redis://…` (and `rediss://`, `unix://`): one Redis.
- `redis+cluster://[user:password@]host:port[,host:port…]`: a Redis Cluster; the hosts are seed nodes,
  asked for the slot map (any one that answers will do).

`connect(url)` gives redis-py's client for that URL — `redis.asyncio.Redis`, or `RedisCluster` in
cluster mode — for everything whose speed does not matter (worker loops, admin, health).
`multiplexed(url)` gives the hot path's multiplexing client (single.py, or cluster.py with one
multiplexed connection per master), or None for URLs it does not speak (TLS, unix sockets), where the
caller stays on redis-py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster, get_node_name

from heartline.plane.redis.cluster import ClusterMultiplexedRedis
from heartline.plane.redis.single import MultiplexedRedis

CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class ClusterURL:
    seeds: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == CLUSTER_SCHEME


def parse_cluster_url(url: str) -> ClusterURL:
    """`redis+cluster://[user:password@]host:port[,host:port…]` (a path or query is not allowed)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != CLUSTER_SCHEME or not rest:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {url!r}")
    userinfo, _, hosts = rest.rpartition("@")
    if "/" in hosts or "?" in hosts:
        raise ValueError(f"a {CLUSTER_SCHEME}:// URL names seed nodes only (no database, no options)")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"seed node {item!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return ClusterURL(seeds=seeds, username=username, password=password)


class SeededRedisCluster(RedisCluster):
    """redis-py's RedisCluster that never forgets the seed nodes of its URL.

    On a connection error redis-py drops the node it was talking to from its startup nodes and closes
    every connection; with several tasks failing at once during a master failover, each closes the
    others' connections, and the healthy nodes get dropped too until none is left.  From then on every
    command fails with "Redis Cluster cannot be connected ... reachable node: None" for good, whatever
    the cluster does (redis-py issue #3221; seen as a worker whose loops all stopped after a failover).
    Before each re-initialisation the seeds are put back, so the client finds the cluster again.
    """

    def __init__(self, *, seeds: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(startup_nodes=[ClusterNode(host, port) for host, port in seeds], **kwargs)
        self._seeds = list(seeds)
        # redis-py fails a command at once (MaxConnectionsError) when its node has max_connections in use;
        # a burst (hundreds of refused starts reading their seat holders) waits for a connection instead,
        # as the single-node client's blocking pool does.  Bounding the whole client bounds every node.
        self._slots_free = asyncio.Semaphore(int(kwargs.get("max_connections") or 2**31))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._slots_free:
            return await super().execute_command(*args, **kwargs)

    def restore_seeds(self) -> None:
        manager = self.nodes_manager
        for host, port in self._seeds:
            if get_node_name(host, port) not in manager.startup_nodes:
                node = ClusterNode(host, port, **manager.connection_kwargs)
                manager.startup_nodes[node.name] = node

    async def initialize(self) -> SeededRedisCluster:
        if self._initialize:
            self.restore_seeds()
        await super().initialize()
        return self


def connect(url: str, **kwargs: Any) -> Any:
    """redis-py's asyncio client for `url`: Redis, or RedisCluster for a cluster URL.

    kwargs go to the client (socket_timeout, decode_responses, max_connections, …)."""
    if not is_cluster_url(url):
        if not kwargs.get("max_connections"):
            return aioredis.Redis.from_url(url, **kwargs)
        # A blocking pool: with max_connections in use a command waits for one (up to the socket timeout)
        # instead of failing at once with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=kwargs.get("socket_timeout") or 20,
                                                        **kwargs)
        return aioredis.Redis.from_pool(pool)
    parsed = parse_cluster_url(url)
    # redis-py declares `connection_pool` abstract on its commands mixin; RedisCluster never sets it (it
    # pools per node), and mypy only sees that once the class is subclassed.
    return SeededRedisCluster(seeds=parsed.seeds, username=parsed.username,  # type: ignore[abstract]
                              password=parsed.password, **kwargs)


def multiplexed(url: str, **kwargs: Any) -> MultiplexedRedis | ClusterMultiplexedRedis | None:
    """The multiplexing client for `url`, or None where it does not apply (TLS, unix sockets).

    kwargs: connect_timeout, command_timeout, max_pending, min_replicas, write_batch, decode_responses."""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        return ClusterMultiplexedRedis(parsed.seeds, username=parsed.username, password=parsed.password,
                                       **kwargs)
    if MultiplexedRedis.supports_url(url):
        return MultiplexedRedis.from_url(url, **kwargs)
    return None
