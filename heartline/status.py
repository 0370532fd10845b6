"""`heartline status`: one screen for an operator, and an exit code for cron and CI.

Checks, in order: PostgreSQL and Redis answer, migrations pending, live sessions, workers running (from
their presence records in Redis), the worker backlog per shard and the age of its oldest entry, the last
reap, the newest backup and upload, signing keys when that part exists.  Every check that needs
attention is listed at the end; the exit status is 0 when there is none, 1 otherwise (2: bad settings).
The thresholds are the alerts' (deploy/prometheus/heartline.rules.yml); docs/operations.md explains each.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from redis.exceptions import RedisError

from heartline import backup_events, migrations, services
from heartline.backup import display_target, mask_remote
from heartline.plane import keys
from heartline.plane import redis as plane_redis
from heartline.plane.backlog import StreamBacklog, read_backlog
from heartline.plane.memory import info_per_node, read_memory
from heartline.plane.presence import read_presence
from heartline.settings import Settings

# A server that has not answered in this long is unreachable.
CONNECT_TIMEOUT_S = 3.0
# A worker whose presence record (rewritten every 5 s) is older than this is not running.
WORKER_GONE_AFTER_S = 30.0
# The reaper of some worker must have succeeded this recently (alert HeartlineReaperStalled: 60 s).
REAPER_STALLED_AFTER_S = 60.0
# The oldest unstored stream entry may be this old (alert HeartlineWorkerBehind: 120 s).
BACKLOG_BEHIND_AFTER_S = 120.0


class Verdict(StrEnum):
    OK = "ok"
    ATTENTION = "ATTENTION"
    UNKNOWN = "unknown"   # could not be checked because a server it needs is down (that one is listed)


@dataclass
class Line:
    check: str
    verdict: Verdict
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)

    def add(self, check: str, verdict: Verdict, summary: str, details: list[str] | None = None) -> None:
        self.lines.append(Line(check, verdict, summary, details or []))

    @property
    def attention(self) -> list[Line]:
        return [line for line in self.lines if line.verdict is Verdict.ATTENTION]

    def render(self) -> str:
        out = []
        for line in self.lines:
            out.append(f"{line.check:<13} {line.verdict:<9} {line.summary}".rstrip())
            out.extend(f"{'':<13} {'':<9} {detail}" for detail in line.details)
        problems = self.attention
        out.append("")
        if problems:
            out.append(f"{len(problems)} check(s) need attention: {', '.join(p.check for p in problems)}")
        else:
            out.append("everything is ok")
        return "\n".join(out)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s ago" if seconds < 10 else f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _redis_display(url: str) -> str:
    if plane_redis.is_cluster_url(url):
        return "cluster " + ",".join(f"{h}:{p}" for h, p in plane_redis.parse_cluster_url(url).seeds)
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


def redis_client(url: str) -> Any:
    """The plane's redis-py client for `url` (one Redis or a cluster), with short timeouts so a dead server
    is reported, not waited for."""
    return plane_redis.connect(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)


async def collect(settings: Settings) -> Report:
    assert settings.database_url and settings.redis_url
    report = Report()
    pg_ok = await _check_postgres(report, settings.database_url)
    client = redis_client(settings.redis_url)
    try:
        redis_ok = await _check_redis(report, client, settings.redis_url)
        if pg_ok:
            await _check_migrations(report, settings.database_url)
        else:
            report.add("migrations", Verdict.UNKNOWN, "PostgreSQL is unreachable")
        if redis_ok:
            await _check_plane(report, client, settings)
        else:
            for check in ("sessions", "workers", "backlog", "reaper"):
                report.add(check, Verdict.UNKNOWN, "Redis is unreachable")
    finally:
        await client.aclose()
    if pg_ok:
        _check_backups(report, settings)
        await _check_signing_keys(report, settings.database_url)
    else:
        report.add("backups", Verdict.UNKNOWN, "PostgreSQL is unreachable")
    return report


async def _check_postgres(report: Report, dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        report.add("postgresql", Verdict.ATTENTION, f"{display_target(dsn)} unreachable: {exc}")
        return False
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    report.add("postgresql", Verdict.OK, f"{display_target(dsn)}, PostgreSQL {str(version).split()[0]}")
    return True


async def _check_redis(report: Report, client: Any, url: str) -> bool:
    try:
        used, limit, nodes = await read_memory(client)
        versions = sorted({str(n.get("redis_version", "?")) for n in await info_per_node(client, "server")})
    except (RedisError, OSError) as exc:
        report.add("redis", Verdict.ATTENTION, f"{_redis_display(url)} unreachable: {exc}")
        return False
    version = ", ".join(versions) + (f" on {nodes} nodes" if plane_redis.is_cluster_url(url) else "")
    share = f"{used / limit:.0%} of maxmemory {limit / 2**20:.0f} MB" if limit else "no maxmemory set"
    verdict = Verdict.ATTENTION if limit and used / limit > 0.8 else Verdict.OK
    report.add("redis", verdict, f"{_redis_display(url)}, Redis {version}, {used / 2**20:.1f} MB used ({share})")
    return True


async def _check_migrations(report: Report, dsn: str) -> None:
    try:
        pending = await migrations.pending(dsn)
    except migrations.MigrationError as exc:
        report.add("migrations", Verdict.ATTENTION, str(exc))
        return
    total = len(migrations.load_migrations())
    if pending:
        report.add("migrations", Verdict.ATTENTION, f"{len(pending)} pending: {', '.join(pending)} "
                                                    "(run `heartline migrate`)")
    else:
        report.add("migrations", Verdict.OK, f"{total} applied, none pending")


async def _check_plane(report: Report, client: Any, settings: Settings) -> None:
    shards = settings.stream_shards
    async with client.pipeline(transaction=False) as pipe:
        for shard in keys.all_shards(shards):
            pipe.get(keys.live_count(shard))
        counts = await pipe.execute()
    report.add("sessions", Verdict.OK, f"{sum(int(c) for c in counts if c is not None)} live")

    now = time.time()
    workers = await read_presence(client)
    running = [w for w in workers if now - w.seen <= WORKER_GONE_AFTER_S]
    gone = [w for w in workers if now - w.seen > WORKER_GONE_AFTER_S]
    details = [f"{w.name}: seen {_ago(now - w.seen)}" for w in running]
    details += [f"{w.name}: not seen since {_ago(now - w.seen)} (stopped without saying so?)" for w in gone]
    if running:
        report.add("workers", Verdict.OK, f"{len(running)} running", details)
    else:
        report.add("workers", Verdict.ATTENTION, "no worker is running: nothing is stored in PostgreSQL and no "
                                                 "session is reaped", details)

    backlog = await read_backlog(client, shards)
    report.add(*_backlog_line(backlog))

    reaps = [w.loops["reaper"] for w in workers if "reaper" in w.loops]
    if not reaps:
        report.add("reaper", Verdict.ATTENTION, "no running worker reports a reap")
    else:
        age = now - max(reaps)
        verdict = Verdict.ATTENTION if age > REAPER_STALLED_AFTER_S else Verdict.OK
        report.add("reaper", verdict, f"last reap {_ago(age)}")


def _backlog_line(backlog: list[StreamBacklog]) -> tuple[str, Verdict, str, list[str]]:
    total = sum(s.length for s in backlog)
    oldest = max((s.oldest_age_s for s in backlog), default=0.0)
    details = []
    for shard in sorted({s.shard for s in backlog}):
        parts = []
        for s in (s for s in backlog if s.shard == shard):
            parts.append(f"{s.kind} {s.length}" + (f" (oldest {s.oldest_age_s:.1f} s, {s.pending} pending)"
                                                    if s.length else ""))
        details.append(f"shard {shard}: " + ", ".join(parts))
    verdict = Verdict.ATTENTION if oldest > BACKLOG_BEHIND_AFTER_S else Verdict.OK
    summary = f"{total} entries not yet stored" + (f", oldest {oldest:.1f} s" if total else "")
    return "backlog", verdict, summary, details


def _check_backups(report: Report, settings: Settings) -> None:
    fresh = backup_events.read(settings.database_url or "")
    now = backup_events.utcnow()
    remote = bool(settings.backup_remote)
    details = []
    if fresh.last_created:
        details.append(f"newest created {_ago((now - fresh.last_created).total_seconds())}")
    if remote:
        details.append(f"remote {mask_remote(settings.backup_remote)}: " + (
            f"newest upload {_ago((now - fresh.last_uploaded).total_seconds())}" if fresh.last_uploaded
            else "nothing uploaded yet"))
    problems = fresh.problems(now, remote_configured=remote)
    if problems:
        report.add("backups", Verdict.ATTENTION, "; ".join(problems), details)
    else:
        report.add("backups", Verdict.OK, "fresh" + ("" if remote else " (no remote configured)"), details)


async def _check_signing_keys(report: Report, dsn: str) -> None:
    """Signing keys: one `active` key signs, `published` ones verify."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        if not await conn.fetchval("SELECT to_regclass('signing_keys') IS NOT NULL"):
            report.add("signing keys", Verdict.ATTENTION, "no signing_keys table (run `heartline migrate`)")
            return
        rows = await conn.fetch("SELECT kid, status, created_at FROM signing_keys "
                                "WHERE status <> 'retired' ORDER BY created_at")
    finally:
        await conn.close()
    details = [f"{r['kid']}: {r['status']}, created {r['created_at']:%Y-%m-%d %H:%M} UTC" for r in rows]
    if not any(r["status"] == "active" for r in rows):
        report.add("signing keys", Verdict.ATTENTION, "no active signing key: answers are not signed", details)
    else:
        report.add("signing keys", Verdict.OK, f"{len(rows)} published, 1 active", details)


def main(settings: Settings, argv: Sequence[str]) -> int:
    """`heartline status`: print the report; exit 1 when any check needs attention."""
    parser = argparse.ArgumentParser(
        prog="heartline status",
        description="Servers, migrations, sessions, workers, backlog, reaper, backups at a glance; exits 1 "
                    "when something needs attention (usable from cron or CI).")
    parser.parse_args(list(argv))
    settings = services.resolve(settings)
    report = asyncio.run(collect(settings))
    print(report.render())
    return 1 if report.attention else 0
