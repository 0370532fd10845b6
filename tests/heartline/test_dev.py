"""`heartline dev` as a new user runs it: real servers from the wheels, migrations, demo data, the parts,
and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from heartline.devstack import free_port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_until(lines: queue.Queue[str], needle: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} not seen within {timeout}s; output:\n" + "".join(seen))


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: pytest keeps /tmp/pytest-of-<user> at mode 0700, which the unprivileged
    # user that runs PostgreSQL (when the tests run as root) cannot enter.
    with tempfile.TemporaryDirectory(prefix="heartline-dev-") as tmp:
        yield Path(tmp)


def test_dev_brings_up_everything_and_stops_cleanly_on_ctrl_c(dev_dir: Path) -> None:
    tmp_path = dev_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTLINE_")}
    edge_port, admin_port = free_port(), free_port()
    env.update(HEARTLINE_DATA_DIR=str(tmp_path / "data"), HEARTLINE_EDGE_PORT=str(edge_port),
               HEARTLINE_ADMIN_PORT=str(admin_port), HEARTLINE_WORKER_METRICS_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "heartline", "dev"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    seen: list[str] = []
    try:
        _read_until(lines, "Press Ctrl-C to stop everything.", 120, seen)
        out = "".join(seen)
        assert "Migrations: 5 applied" in out or "Migrations:" in out
        assert "Demo license key: HL-" in out
        assert "Demo API key:     AF-" in out
        pg_port = int(out.split("postgresql://postgres@127.0.0.1:")[1].split("/")[0])
        assert _port_open(pg_port)
        # another command in the same folder finds the running stack without any setting
        migrate = subprocess.run([sys.executable, "-m", "heartline", "migrate"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert migrate.stdout.strip() == "schema is up to date", migrate.stderr
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{edge_port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    while not lines.empty():
        seen.append(lines.get())
    assert code == 0, "".join(seen)
    assert "stopped" in "".join(seen)
    assert not _port_open(pg_port)
    assert not (tmp_path / "data" / "dev.json").exists()
