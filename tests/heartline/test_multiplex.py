"""The multiplexing Redis client, on real Redis."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import cast

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heartline.devstack import free_port
from heartline.plane.cached_license import CachedLicense
from heartline.plane.redis.protocol import PlaneBusy, ReplicationTimeout
from heartline.plane.redis.single import MultiplexedRedis
from heartline.plane.scripts import SCRIPTS
from heartline.plane.sessions import PlaneCode, SessionPlane
from heartline.settings import Settings


@pytest.fixture
async def client(redis: aioredis.Redis, redis_url: str):  # `redis` flushes the database first
    mux = MultiplexedRedis.from_url(redis_url)
    try:
        yield mux
    finally:
        await mux.aclose()


async def test_concurrent_commands_get_their_own_replies(client: MultiplexedRedis) -> None:
    replies = await asyncio.gather(*(client.execute("INCR", "counter") for _ in range(500)))
    assert sorted(replies) == list(range(1, 501))
    # FIFO matching: the n-th command sent got the n-th reply
    assert replies == list(range(1, 501))


async def test_commands_of_one_tick_go_out_every_write_batch_and_the_rest_at_the_tick_end(
        client: MultiplexedRedis, redis: aioredis.Redis) -> None:
    assert client.write_batch == 8  # the default: Redis starts on the first 8 while the rest are made
    await client.ping()
    writes, commands = client.writes, client.commands
    replies = await asyncio.gather(*(client.execute("INCR", "k") for _ in range(203)))
    assert client.writes - writes == 203 // 8 + 1  # 25 full writes as the commands were made, 3 at the tick's end
    assert client.commands - commands == 203
    assert replies == list(range(1, 204))
    assert await redis.get("k") == b"203"


async def test_write_batch_0_sends_the_commands_of_one_tick_in_one_write(redis: aioredis.Redis,
                                                                        redis_url: str) -> None:
    client = MultiplexedRedis.from_url(redis_url, write_batch=0)
    try:
        await client.ping()
        writes, commands = client.writes, client.commands
        await asyncio.gather(*(client.execute("SET", f"k{i}", i) for i in range(200)))
        assert client.writes - writes == 1
        assert client.commands - commands == 200
        assert await redis.get("k199") == b"199"
    finally:
        await client.aclose()


async def test_error_reply_raises_without_shifting_later_replies(client: MultiplexedRedis,
                                                                  redis: aioredis.Redis) -> None:
    await cast("Awaitable[int]", redis.hset("h", "f", "v"))
    results = await asyncio.gather(client.execute("SET", "a", "1"), client.execute("INCR", "h"),
                                   client.execute("GET", "a"), return_exceptions=True)
    assert results[0] == b"OK"
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert results[2] == b"1"


async def test_evalsha_of_unknown_script_raises_noscript_then_runs_once_loaded(
        client: MultiplexedRedis) -> None:
    source = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
    sha = hashlib.sha1(source.encode()).hexdigest()
    await client.execute("SCRIPT", "FLUSH")
    with pytest.raises(NoScriptError):
        await client.evalsha(sha, 1, "n", "x")
    assert await client.script_load(source) == sha.encode()
    assert await client.evalsha(sha, 1, "n", "x") == [b"n", b"x", 1]


async def test_cancelled_caller_does_not_shift_the_replies_of_others(client: MultiplexedRedis,
                                                                     redis: aioredis.Redis) -> None:
    await redis.mset({"a": "A", "b": "B"})
    first = client.execute("GET", "a")
    first.cancel()
    assert await client.execute("GET", "b") == b"B"
    assert await client.execute("GET", "a") == b"A"


async def test_reconnects_after_the_connection_is_killed(client: MultiplexedRedis,
                                                         redis: aioredis.Redis) -> None:
    first_id = await client.execute("CLIENT", "ID")
    await redis.client_kill_filter(_id=first_id)
    reply = None
    for _ in range(50):  # the first call may still meet the dying connection and fail
        try:
            reply = await client.execute("CLIENT", "ID")
            break
        except RedisConnectionError:
            await asyncio.sleep(0.01)
    assert reply is not None and reply != first_id
    assert await client.ping()


async def test_decode_responses_returns_text(redis: aioredis.Redis, redis_url: str) -> None:
    await redis.set("greeting", "héllo")
    mux = MultiplexedRedis.from_url(redis_url, decode_responses=True)
    try:
        assert await mux.execute("GET", "greeting") == "héllo"
    finally:
        await mux.aclose()


async def test_writes_land_in_the_database_of_the_url(client: MultiplexedRedis,
                                                      redis: aioredis.Redis) -> None:
    await client.execute("SET", "where", "here")
    assert await redis.get("where") == b"here"


async def test_unreachable_server_raises_connection_error() -> None:
    mux = MultiplexedRedis("127.0.0.1", free_port(), connect_timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await mux.execute("PING")


def test_works_on_uvloop_as_the_edge_runs_it(redis_url: str) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> list[object]:
        mux = MultiplexedRedis.from_url(redis_url)
        try:
            # bounded: a client that cannot take uvloop's transport would wait forever
            return await asyncio.wait_for(asyncio.gather(*(mux.execute("ECHO", str(i)) for i in range(100))), 10)
        finally:
            await mux.aclose()

    assert uvloop.run(run()) == [str(i).encode() for i in range(100)]


async def test_a_server_that_stops_answering_times_out_and_the_next_call_reconnects(
        redis_url: str) -> None:
    # a TCP server that takes the connection and the commands and never answers: a hung Redis
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1024))
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mux = MultiplexedRedis("127.0.0.1", port, command_timeout=0.3)
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(mux.execute("PING"), 10)
        assert received and b"PING" in received[0]
    finally:
        await mux.aclose()
        server.close()
        await server.wait_closed()
    # against a live server the watchdog never fires, however long the client idles between commands
    live = MultiplexedRedis.from_url(redis_url, command_timeout=0.2)
    try:
        assert await live.ping()
        await asyncio.sleep(0.5)
        assert await live.ping()
    finally:
        await live.aclose()


async def test_session_plane_runs_its_scripts_on_the_multiplexed_client(client: MultiplexedRedis,
                                                                        redis: aioredis.Redis,
                                                                        settings: Settings) -> None:
    plane = SessionPlane(redis, settings, scripts_client=client)
    await plane.load_scripts()
    await plane.cache_license(CachedLicense(license_id=7, version=1, status="active", valid_from_ms=0,
                                            valid_until_ms=None, device_limit=3, sessions_limit=2,
                                            interval_s=30, timeout_s=60), {"fp-a": 1, "fp-b": 2, "fp-c": 3})
    sent = client.commands
    starts = await asyncio.gather(*(plane.start_session(7, fp) for fp in ("fp-a", "fp-b", "fp-c")))
    # the start script's limit holds through the multiplexed client: two sessions, the third refused
    assert sorted(o.code for o in starts) == [PlaneCode.SESSION_LIMIT_REACHED, PlaneCode.STARTED,
                                              PlaneCode.STARTED]
    token = next(o.token for o in starts if o.token)
    beat = await plane.heartbeat(7, token)
    assert beat.code is PlaneCode.OK and beat.interval_s == 30
    assert client.commands - sent == 4  # the scripts went through the multiplexed client ...
    assert await plane.is_live(7, token)  # ... and the plain calls through redis-py still see them


async def test_heartbeat_packed_once_per_license_is_the_command_hiredis_packs(client: MultiplexedRedis,
                                                                             settings: Settings) -> None:
    plane = SessionPlane(cast("aioredis.Redis", client), settings, scripts_client=client)
    scripts = plane.scripts
    for license_id, token, gap in ((7, "5b1c7b0e-8f1e-4b53-9d2a-4f1b2a9b7c11", 0), (7, "other", 0),
                                   (7, "5b1c7b0e-8f1e-4b53-9d2a-4f1b2a9b7c11", 250), (123456, "t", 9)):
        script_keys, args = scripts._heartbeat_call(license_id, token, gap)
        for flagged in (False, True):
            scripts.flagged = flagged
            sha = SCRIPTS["heartbeat"].flagged_sha if flagged else SCRIPTS["heartbeat"].sha
            expected = hiredis.pack_command(("EVALSHA", sha, len(script_keys), *script_keys, *args))
            assert scripts.packed_heartbeat(license_id, token, gap) == expected


async def test_packed_heartbeat_reloads_a_flushed_script_cache(client: MultiplexedRedis, redis: aioredis.Redis,
                                                               settings: Settings) -> None:
    plane = SessionPlane(redis, settings.replace(heartbeat_min_gap_ms=0), scripts_client=client)
    await plane.load_scripts()
    await plane.cache_license(CachedLicense(license_id=7, version=1, status="active", valid_from_ms=0,
                                            valid_until_ms=None, device_limit=3, sessions_limit=2,
                                            interval_s=30, timeout_s=60), {"fp-a": 1})
    token = (await plane.start_session(7, "fp-a")).token
    assert token is not None
    assert (await plane.heartbeat(7, token)).code is PlaneCode.OK
    await redis.script_flush()
    assert (await plane.heartbeat(7, token)).code is PlaneCode.OK  # NOSCRIPT: loaded again, then run
    assert (await plane.heartbeat(7, token)).code is PlaneCode.OK
    assert (await plane.heartbeat(7, "5b1c7b0e-8f1e-4b53-9d2a-4f1b2a9b7c11")).code is PlaneCode.SESSION_NOT_FOUND


def test_from_url_reads_credentials_and_database() -> None:
    mux = MultiplexedRedis.from_url("redis://user:p%40ss@example.org:6380/4")
    assert (mux.host, mux.port, mux.db, mux.username, mux.password) == ("example.org", 6380, 4, "user",
                                                                        "p@ss")
    with pytest.raises(ValueError):
        MultiplexedRedis.from_url("rediss://example.org")
    assert MultiplexedRedis.supports_url("redis://example.org:6379/0")
    assert not MultiplexedRedis.supports_url("rediss://example.org")
    assert not MultiplexedRedis.supports_url("unix:///run/redis.sock")


async def test_commands_beyond_the_pending_bound_are_refused_at_once(redis: aioredis.Redis,
                                                                     redis_url: str) -> None:
    client = MultiplexedRedis.from_url(redis_url, max_pending=50)
    try:
        await client.ping()
        results = await asyncio.gather(*(_call(client, "INCR", "bounded") for _ in range(80)),
                                       return_exceptions=True)
        assert sum(isinstance(r, PlaneBusy) for r in results) == 30
        assert isinstance(PlaneBusy("x"), RedisConnectionError)  # the edge answers it 503
        assert await redis.get("bounded") == b"50"
        assert await client.execute("GET", "bounded") == b"50"  # the bound frees as replies come back
    finally:
        await client.aclose()


async def _call(client: MultiplexedRedis, *args: object) -> object:
    return await client.execute(*args)


async def test_min_replicas_fails_the_batch_when_no_replica_acknowledges(redis: aioredis.Redis,
                                                                        redis_url: str) -> None:
    assert int((await redis.info("replication"))["connected_slaves"]) == 0
    client = MultiplexedRedis.from_url(redis_url, min_replicas=1)
    try:
        # 20 commands of one tick: one write and one WAIT, not one per write_batch (a WAIT holds the
        # connection, so each more would cost the batch up to a second more)
        results = await asyncio.gather(*(client.execute("INCR", "unreplicated") for _ in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, ReplicationTimeout) for r in results)
        assert isinstance(results[0], RedisConnectionError)  # 503, retry
        assert await redis.get("unreplicated") == b"20"  # applied on the master, unconfirmed
        handshake = 1 if client.db else 0  # the SELECT of the test's database, before min_replicas applies
        assert client.writes == handshake + 1
    finally:
        await client.aclose()
