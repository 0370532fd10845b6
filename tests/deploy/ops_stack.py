"""A running Heartline for the operations tests: a real `heartline edge` and `heartline worker` (processes,
on free ports) over a given PostgreSQL database and Redis, plus the `heartline` command pointed at them."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import shared_support

from heartline.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 4


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker then finishes its batch and leaves its presence record), kill after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class OpsStack:
    env: dict[str, str]
    tmp: Path
    edge_url: str
    worker_url: str
    edge: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]

    def heartline(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run the `heartline` command against this stack, as an operator would."""
        return subprocess.run([sys.executable, "-m", "heartline", *args], env={**self.env, **extra_env},
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    def stop_worker(self) -> None:
        stop_process(self.worker)


def process_env(database_url: str, redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    return shared_support.process_env({
        "HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_REDIS_URL": redis_url,
        "HEARTLINE_STREAM_SHARDS": SHARDS, "HEARTLINE_HEARTBEAT_MIN_GAP_MS": 0,
        "HEARTLINE_DATA_DIR": tmp / "data", "HEARTLINE_BACKUP_DIR": tmp / "backups",
        "HEARTLINE_LOG_LEVEL": "WARNING", **extra})


@contextlib.contextmanager
def running_stack(database_url: str, redis_url: str, tmp: Path) -> Iterator[OpsStack]:
    """Edge and worker processes over these servers (the database must be migrated); stopped on exit."""
    edge_port, worker_port = free_port(), free_port()
    env = process_env(database_url, redis_url, tmp)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        edge_log, worker_log = tmp / "edge.log", tmp / "worker.log"
        edge = subprocess.Popen(
            [sys.executable, "-m", "heartline", "edge", "--port", str(edge_port)], cwd=ROOT,
            start_new_session=True, stdout=open(edge_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env={**env, "HEARTLINE_EDGE_WORKERS": "1"})
        procs.append(edge)
        worker = subprocess.Popen(
            [sys.executable, "-m", "heartline", "worker"], cwd=ROOT, start_new_session=True,
            stdout=open(worker_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env={**env, "HEARTLINE_WORKER_METRICS_PORT": str(worker_port), "HEARTLINE_REAP_INTERVAL_S": "0.2",
                 "HEARTLINE_FLUSH_INTERVAL_S": "0.1"})
        procs.append(worker)
        edge_url, worker_url = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{worker_port}"
        _wait_http(f"{edge_url}/healthz", edge, edge_log)
        _wait_http(f"{worker_url}/healthz", worker, worker_log)
        yield OpsStack(env, tmp, edge_url, worker_url, edge, worker)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
