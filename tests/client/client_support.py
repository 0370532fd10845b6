"""Helpers of the client tests: the edge and the worker as real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from shared_support import process_env

from heartline.devstack import free_port
from heartline.settings import Settings

REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`heartline edge` or `heartline worker` as a child process that can be stopped and started again
    (the edge on the same port, as a restarted server would be)."""

    def __init__(self, part: str, settings: Settings, log_path: Path, **env: str) -> None:
        self.part = part
        self.port = free_port()
        self.log_path = log_path
        self.env = {**process_env(),
                    "HEARTLINE_DATABASE_URL": settings.database_url or "",
                    "HEARTLINE_REDIS_URL": settings.redis_url or "",
                    "HEARTLINE_STREAM_SHARDS": str(settings.stream_shards),
                    "HEARTLINE_DATA_DIR": str(settings.data_dir),
                    "HEARTLINE_SIGNING_KEY_SECRET": settings.signing_key_secret or "",
                    "HEARTLINE_WORKER_METRICS_PORT": "0", "HEARTLINE_FLUSH_INTERVAL_S": "0.1",
                    "HEARTLINE_REAP_INTERVAL_S": "0.5", "HEARTLINE_LOG_LEVEL": "INFO", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "heartline", self.part]
        if self.part == "edge":
            argv += ["--port", str(self.port)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        if self.part == "edge":
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the edge did not answer /readyz"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
