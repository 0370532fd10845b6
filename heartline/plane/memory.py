"""Redis memory as `heartline status` and the worker's /metrics report it, for one Redis or a cluster.

On a cluster every node is asked (redis-py's RedisCluster sends INFO to one node unless told otherwise):
a cluster is as full as its fullest node, and that node refuses writes first.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster


async def info_per_node(client: Any, section: str) -> list[dict[str, Any]]:
    """INFO `section` of the Redis, or of every node of a cluster."""
    if isinstance(client, RedisCluster):
        answers = await client.info(section, target_nodes=RedisCluster.ALL_NODES)
        return [a for a in answers.values() if isinstance(a, dict)]
    return [await client.info(section)]


async def read_memory(client: Any) -> tuple[int, int, int]:
    """(used_memory, maxmemory, nodes): of the Redis, or of the cluster node nearest its limit (0: no limit)."""
    nodes = [(int(n.get("used_memory", 0)), int(n.get("maxmemory", 0))) for n in await info_per_node(client, "memory")]
    used, limit = max(nodes, key=lambda n: (n[0] / n[1] if n[1] else 0.0, n[0]), default=(0, 0))
    return used, limit, len(nodes)
