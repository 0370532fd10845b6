"""The faults a soak injects, one at a time, in a shuffled cycle of every kind (so even a short run sees
each kind once), with a few quiet seconds between them.

| kind | what is done | comes back |
|---|---|---|
| `edge_kill` | SIGKILL to one edge process | restarted on the same port after 0.5–3 s |
| `worker_kill` | SIGKILL to one worker process | restarted after 0.5–3 s |
| `redis_crash` | SIGKILL to Redis | restarted after 0.5–3 s with its append-only file: nothing is lost |
| `redis_wipe` | SIGKILL to Redis, its data deleted | restarted empty, as Redis without persistence does |
| `redis_slow` | every byte to and from Redis delayed 50–400 ms (the proxy) | after 8–25 s (6–12 s) |
| `redis_stall` | `DEBUG SLEEP` 2–7 s: Redis answers nobody, then everything queued at once | by itself |
| `pg_outage` | PostgreSQL refused, or black-holed (open connections freeze) | after 10–40 s (10–15 s) |

(In brackets: runs shorter than 5 minutes, which also pause 2–5 s between faults instead of 3–8 s, so that
a 2-minute run sees every kind.)

The supervisor beside them restarts a process that exits without being killed, and records that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loadtests.chaos.ledger import Fault, Ledger, SelfExit
from loadtests.chaos.proxy import ProxyProcess
from loadtests.chaos.stack import Part, RedisServer


class FaultKind(StrEnum):
    EDGE_KILL = "edge_kill"
    WORKER_KILL = "worker_kill"
    REDIS_CRASH = "redis_crash"
    REDIS_WIPE = "redis_wipe"
    REDIS_SLOW = "redis_slow"
    REDIS_STALL = "redis_stall"
    PG_OUTAGE = "pg_outage"


@dataclass
class Targets:
    """What the faults act on."""

    edges: list[Part]
    workers: list[Part]
    redis: RedisServer
    redis_proxy: ProxyProcess
    pg_proxy: ProxyProcess
    extra_parts: list[Part] = field(default_factory=list)

    @property
    def parts(self) -> list[Part]:
        return [*self.edges, *self.workers, *self.extra_parts]


async def _wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        await asyncio.sleep(0.05)
    return False


class Injector:
    def __init__(self, targets: Targets, ledger: Ledger, rng: random.Random, *, short: bool,
                 kinds: list[FaultKind] | None = None) -> None:
        self.t = targets
        self.ledger = ledger
        self.rng = rng
        self.short = short
        self.kinds = list(FaultKind) if kinds is None else kinds
        # a stall longer than the edge's Redis timeout (5 s) makes some 503s whose command still ran later

    async def run(self, stop: asyncio.Event, until: float) -> None:
        """Inject faults until `until` (wall clock) or `stop`; the fault in progress is healed either way."""
        cycle: list[FaultKind] = []
        await _sleep(stop, self.rng.uniform(5, 10))
        while self.kinds and not stop.is_set() and time.time() < until:
            if not cycle:
                cycle = self.kinds[:]
                self.rng.shuffle(cycle)
            kind = cycle.pop()
            await self.inject(kind, stop, until)
            await _sleep(stop, self.rng.uniform(2, 5) if self.short else self.rng.uniform(3, 8))

    async def inject(self, kind: FaultKind, stop: asyncio.Event, until: float) -> Fault:
        rng = self.rng
        fault = Fault(kind=str(kind), target="", started=time.time())
        self.ledger.faults.append(fault)
        if kind in (FaultKind.EDGE_KILL, FaultKind.WORKER_KILL):
            part = rng.choice(self.t.edges if kind is FaultKind.EDGE_KILL else self.t.workers)
            fault.target = part.name
            fault.started = time.time()
            part.kill()
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            part.start()
        elif kind in (FaultKind.REDIS_CRASH, FaultKind.REDIS_WIPE):
            fault.target = "redis"
            fault.started = time.time()
            self.t.redis.kill()
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            self.t.redis.start(wipe=kind is FaultKind.REDIS_WIPE)
            if not await _wait_port(self.t.redis.port):
                fault.detail = "redis did not listen again within 20 s"
        elif kind is FaultKind.REDIS_SLOW:
            delay = rng.uniform(0.05, 0.4)
            fault.target, fault.detail = "redis proxy", f"delay {delay * 1000:.0f} ms"
            await self.t.redis_proxy.set_delay(delay)
            seconds = rng.uniform(6, 12) if self.short else rng.uniform(8, 25)
            await _sleep(stop, min(seconds, max(1.0, until - time.time())))
            await self.t.redis_proxy.set_delay(0.0)
        elif kind is FaultKind.REDIS_STALL:
            seconds = rng.uniform(2, 7)
            fault.target, fault.detail = "redis", f"DEBUG SLEEP {seconds:.1f}"
            client = aioredis.Redis.from_url(self.t.redis.url, socket_timeout=seconds + 30)
            try:
                await client.execute_command("DEBUG", "SLEEP", f"{seconds:.1f}")
            except RedisError as exc:
                fault.detail += f" failed: {exc}"
            finally:
                await client.aclose()
        elif kind is FaultKind.PG_OUTAGE:
            blackhole = rng.random() < 0.5
            seconds = rng.uniform(10, 15) if self.short else rng.uniform(10, 40)
            seconds = min(seconds, max(1.0, until - time.time()))
            fault.target = "postgres proxy"
            fault.detail = f"{'black-holed' if blackhole else 'refused'} for {seconds:.0f} s"
            if blackhole:
                await self.t.pg_proxy.blackhole()
            else:
                await self.t.pg_proxy.refuse()
            await _sleep(stop, seconds)
            await self.t.pg_proxy.restore()
        fault.ended = time.time()
        return fault


async def supervise(targets: Targets, ledger: Ledger, stop: asyncio.Event) -> None:
    """Restart any process that exited without our SIGKILL, and record that it did."""
    while not stop.is_set():
        for part in targets.parts:
            code = part.exited_by_itself()
            if code is not None:
                ledger.self_exits.append(SelfExit(part.name, code, time.time(), part.log_tail()))
                part.killed = True      # recorded once; restarted below
                await asyncio.sleep(1.0)
                part.start()
        await _sleep(stop, 0.5)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass
