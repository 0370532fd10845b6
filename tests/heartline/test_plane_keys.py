"""Every plane script declares every key it touches, and all of them share one cluster slot.

Checked on a real server rather than by reading the Lua: MONITOR shows each command a script runs
(`[db lua]`), and `COMMAND GETKEYS` names the keys of each, which must all be among the KEYS of the
EVALSHA that ran it.  Redis Cluster routes a script by its KEYS, so an undeclared key may live on
another node; that is the bug this test exists to catch (heartline/plane/scripts.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from heartline.plane import keys
from heartline.plane.cached_license import CachedLicense
from heartline.plane.scripts import SCRIPT_NAMES, SCRIPTS, PlaneScripts
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings

LICENSE_ID = 11
MONITOR_LINE = re.compile(r"^[\d.]+ \[(\d+) ([^\]]+)\] (.*)$")
MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _cached(**changes: Any) -> CachedLicense:
    fields: dict[str, Any] = {"license_id": LICENSE_ID, "version": 1, "status": "active", "valid_from_ms": 0,
                              "valid_until_ms": None, "device_limit": 10, "sessions_limit": 3,
                              "interval_s": 1, "timeout_s": 2, "max_borrow_s": 60}
    fields.update(changes)
    return CachedLicense(**fields)


class ScriptTrace:
    """What each marked step ran: its EVALSHAs (sha, KEYS) and the commands its scripts ran."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.steps: list[str] = []

    async def step(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        result = await call()
        self.steps.append(name)
        await self.redis.echo(f"heartline-step:{len(self.steps) - 1}")
        return result


def _parse(line: str) -> tuple[int, str, list[str]] | None:
    match = MONITOR_LINE.match(line)
    if match is None:
        return None
    args = [bytes(a, "utf-8").decode("unicode_escape") for a in MONITOR_ARG.findall(match.group(3))]
    return int(match.group(1)), match.group(2), args


@pytest.fixture
async def traced(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[tuple[Any, ...]]:
    """A plane on the test's Redis and a MONITOR connection reading every command of its database."""
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    monitor_client = aioredis.Redis(**redis.connection_pool.connection_kwargs)
    segments: list[list[Any]] = [[]]
    done = asyncio.Event()
    async with monitor_client.monitor() as monitor:
        assert monitor.connection is not None

        async def read() -> None:
            while True:
                raw = await monitor.connection.read_response()  # type: ignore[union-attr]
                parsed = _parse(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
                if parsed is None or parsed[0] != db:
                    continue
                _, source, args = parsed
                if args[:1] == ["echo"] or args[:1] == ["ECHO"]:
                    if args[1] == "heartline-step:end":
                        done.set()
                        return
                    if args[1].startswith("heartline-step:"):
                        segments.append([])
                    continue
                segments[-1].append((source, args))

        reader = asyncio.create_task(read())
        plane = SessionPlane(redis, settings)
        await plane.load_scripts()
        await redis.echo("heartline-step:start")  # lines before it (loading) are not a step
        trace = ScriptTrace(redis)

        async def finish() -> list[list[Any]]:
            """Every step's commands, once MONITOR has shown them all."""
            await redis.echo("heartline-step:end")
            await asyncio.wait_for(done.wait(), 10)
            return segments[1:-1]  # the last one is opened by the last step's marker and stays empty

        try:
            yield plane, trace, finish
        finally:
            reader.cancel()
    await monitor_client.aclose()


async def _keys_of(redis: aioredis.Redis, args: list[str]) -> set[str]:
    try:
        found = await redis.command_getkeys(*args)
    except ResponseError:  # TIME and other commands without keys
        return set()
    return {k.decode() if isinstance(k, bytes) else k for k in found}


async def test_every_script_declares_every_key_it_touches_and_they_share_one_slot(traced: Any) -> None:
    plane, trace, finish = traced
    scripts: PlaneScripts = plane.scripts
    shard = keys.shard_of(LICENSE_ID, plane.shards)
    devices = {f"fp{i}": 100 + i for i in range(3)}
    await trace.step("cache_license", lambda: plane.cache_license(_cached(), devices))
    first = await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp1"))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))  # resume
    until = await plane.now_ms() + 30_000
    borrowed = await trace.step("borrow", lambda: plane.borrow(LICENSE_ID, first.token, until))
    assert borrowed.code is PlaneCode.BORROWED
    await trace.step("heartbeat", lambda: plane.heartbeat(LICENSE_ID, first.token))
    await trace.step("end", lambda: scripts.end(LICENSE_ID, first.token, "client_end"))
    await trace.step("end_license", lambda: scripts.end_license(LICENSE_ID, "device_deactivated", "fp1"))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp2"))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "offered", device_id=900))
    await trace.step("cache_license", lambda: plane.cache_license(_cached(version=2), {"fp0": 100}))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))
    await trace.step("end_license", lambda: scripts.end_license(LICENSE_ID, "admin_terminated"))
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))
    await asyncio.sleep(2.1)  # the session's 2 s timeout passes
    due = await trace.step("due", lambda: scripts.due(shard, 10))
    assert due == [LICENSE_ID]
    assert await trace.step("reap", lambda: scripts.reap(shard, due)) == 1
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))
    # the seat queue: a queued start refused for the limit takes a ticket, and renews it
    await trace.step("cache_license", lambda: plane.cache_license(_cached(version=3, sessions_limit=1),
                                                                  {"fp0": 100, "fp1": 101}))
    queued = await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp1", queue=True))
    assert queued.code is PlaneCode.SESSION_LIMIT_REACHED and queued.ticket
    await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp1", ticket=queued.ticket))
    await trace.step("refuse", lambda: scripts.refuse(LICENSE_ID, "DEVICE_LIMIT_REACHED", "fp9", None, "start"))
    await trace.step("suspend_license", lambda: plane.suspend_license(LICENSE_ID, "suspended", 4))
    # a refused start appends its refused event from start.lua
    refused = await trace.step("start", lambda: plane.start_session(LICENSE_ID, "fp0"))
    assert refused.code is PlaneCode.LICENSE_SUSPENDED
    await trace.step("forget_license", lambda: plane.invalidate_license(LICENSE_ID))
    await trace.step("recount", lambda: scripts.recount(shard, [LICENSE_ID]))
    ran = await finish()
    assert len(ran) == len(trace.steps)
    assert set(trace.steps) == set(SCRIPT_NAMES)
    touched_by: dict[str, set[str]] = {}
    for name, segment in zip(trace.steps, ran, strict=True):
        evals = [args for source, args in segment if source != "lua" and args[0].upper() == "EVALSHA"]
        assert evals, f"{name}: no EVALSHA seen"
        assert {a[1] for a in evals} <= {SCRIPTS[name].sha, SCRIPTS[name].flagged_sha}
        declared = set(evals[-1][3:3 + int(evals[-1][2])])
        assert len({key_slot(k.encode()) for k in declared}) == 1, f"{name} declares keys of several slots"
        for source, args in segment:
            if source != "lua":
                continue
            touched = await _keys_of(plane.redis, args)
            assert touched <= declared, f"{name} runs {args[0]} on undeclared {touched - declared}"
            touched_by.setdefault(name, set()).update(touched)
    # the check saw the scripts at work, not only their EVALSHAs
    assert {"start", "heartbeat", "reap", "cache_license"} <= set(touched_by)


async def test_scripts_load_with_the_shebang_where_the_server_takes_it(redis: aioredis.Redis,
                                                                     settings: Settings) -> None:
    plane = SessionPlane(redis, settings)
    await plane.load_scripts()
    version = (await redis.info("server"))["redis_version"]
    assert plane.scripts.flagged is (int(str(version).split(".")[0]) >= 7)
