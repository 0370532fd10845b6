"""The embedded servers of `heartline dev` ask for their generated credentials and keep their data to
their user; a server that died is restarted on the same port with the same data."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from heartline.devstack import EmbeddedServices


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # not under pytest's tmp_path (0700 folders the PostgreSQL system user cannot enter when run as root)
    with tempfile.TemporaryDirectory(prefix="heartline-devstack-") as tmp:
        yield Path(tmp)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _command_lines() -> str:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(lines)


def test_embedded_servers_require_their_credentials_and_keep_their_data_private(dev_dir: Path) -> None:
    services = EmbeddedServices(dev_dir / "services", postgres_password="pg-Secret-4711",
                                redis_password="rd-Secret-0815")
    try:
        pg_url, rd_url = services.start()
        assert pg_url and rd_url and services.pg and services.rd
        port, redis_port = services.pg.port, services.rd.port
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5).close()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with redis.Redis(port=redis_port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis.from_url(rd_url) as client:
            assert client.ping()
        assert "pg-Secret-4711" not in _command_lines() and "rd-Secret-0815" not in _command_lines()
        assert _mode(dev_dir / "services") & 0o077 in (0, 0o011)     # traversable at most (as root)
        for private in (services.pg.root, services.pg.pgdata, services.rd.root):
            assert _mode(private) == 0o700, private
        assert _mode(services.rd.root / "redis.conf") == 0o600

        # a cluster an earlier version made with trust authentication is made to ask for the password
        services.pg.stop()
        hba = services.pg.pgdata / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        services.pg.start()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5).close()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        services.stop()


def test_a_server_that_died_is_restarted_on_its_port_with_its_data(dev_dir: Path) -> None:
    services = EmbeddedServices(dev_dir / "services", postgres_password="pw1", redis_password="pw2")
    try:
        pg_url, rd_url = services.start()
        assert pg_url and rd_url and services.pg and services.rd
        with redis.Redis.from_url(rd_url) as client:
            client.set("kept", "yes")
            client.execute_command("CONFIG", "SET", "appendfsync", "always")
            client.set("kept-after-fsync", "yes")
        assert services.revive() == []                  # nothing died: nothing to say
        old_redis, old_pg = services.rd.pid(), services.pg.pid()
        assert old_redis and old_pg
        os.kill(old_redis, signal.SIGKILL)
        os.kill(old_pg, signal.SIGKILL)
        services.rd._proc.wait()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while services.pg.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        said = services.revive()
        assert said == [f"PostgreSQL (embedded) stopped unexpectedly; restarted on port {services.pg.port}",
                        f"Redis (embedded) stopped unexpectedly; restarted on port {services.rd.port}"]
        assert services.rd.pid() not in (None, old_redis) and services.pg.pid() not in (None, old_pg)
        with redis.Redis.from_url(rd_url) as client:                    # same URL: same port
            assert client.get("kept-after-fsync") == b"yes"
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        restarted = services.rd.pid()
    finally:
        services.stop()
    # stopping after a restart stops the restarted servers
    assert restarted is not None
    with pytest.raises(ProcessLookupError):
        os.kill(restarted, 0)
    assert services.pg.pid() is None
