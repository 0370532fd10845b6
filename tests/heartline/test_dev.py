"""`heartline dev` as a new user runs it: real servers from the wheels, migrations, demo data, the parts,
and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_support import process_env, pump

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
    env = process_env(sealing_secrets=False)
    edge_port, admin_port = free_port(), free_port()
    env.update(HEARTLINE_DATA_DIR=str(tmp_path / "data"), HEARTLINE_EDGE_PORT=str(edge_port),
               HEARTLINE_ADMIN_PORT=str(admin_port), HEARTLINE_WORKER_METRICS_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "heartline", "dev"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(proc.stdout or [], lines), daemon=True).start()
    seen: list[str] = []
    try:
        _read_until(lines, "Press Ctrl-C to stop everything.", 300, seen)
        out = "".join(seen)
        assert "Migrations: 5 applied" in out or "Migrations:" in out
        assert "Demo license key: HL-" in out
        assert "Demo API key:     AF-" in out
        # the credentials come last, once every part listens: nothing to wait for any more
        tail = out.rstrip("\n").splitlines()[-5:]
        assert [line.split(":")[0] for line in tail] == ["Demo license key", "Demo API key", "Demo admin",
                                                         "All up", "Press Ctrl-C to stop everything."]
        assert f"EDGE=http://127.0.0.1:{edge_port}" in tail[3] and f"http://127.0.0.1:{admin_port}/" in tail[3]
        for url in (f"http://127.0.0.1:{edge_port}/healthz", f"http://127.0.0.1:{admin_port}/login/"):
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200, url
        assert "Added Permission" not in out           # Flask-AppBuilder's start-up chatter stays out
        # when they scrolled away: the same credentials again, without starting anything
        shown = subprocess.run([sys.executable, "-m", "heartline", "dev", "--show-credentials"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        assert [line for line in shown.stdout.splitlines() if line.startswith("Demo")] == tail[:3]
        pg_port = int(out.split("postgresql://postgres:***@127.0.0.1:")[1].split("/")[0])
        assert _port_open(pg_port)
        # the generated passwords are printed nowhere, and the files holding them are the user's only
        secrets = json.loads((tmp_path / "data" / "dev-secrets.json").read_text())
        assert secrets["postgres_password"] not in out and secrets["redis_password"] not in out
        for private in ("dev-secrets.json", "dev.json"):
            assert stat.S_IMODE((tmp_path / "data" / private).stat().st_mode) == 0o600, private
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) & 0o066 == 0
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


def test_dev_restarts_an_embedded_server_that_died_and_ctrl_c_stops_the_restarted_one(dev_dir: Path) -> None:
    """kill -9 of the embedded Redis and PostgreSQL: `heartline dev` says so and restarts them, edge and
    admin keep running (and work again), and Ctrl-C afterwards stops the restarted servers too."""
    env = process_env(sealing_secrets=False)
    edge_port, admin_port = free_port(), free_port()
    env.update(HEARTLINE_DATA_DIR=str(dev_dir / "data"), HEARTLINE_EDGE_PORT=str(edge_port),
               HEARTLINE_ADMIN_PORT=str(admin_port))
    proc = subprocess.Popen([sys.executable, "-m", "heartline", "dev", "--without", "worker"], env=env,
                            cwd=dev_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(proc.stdout or [], lines), daemon=True).start()
    seen: list[str] = []
    services = dev_dir / "data" / "services"
    try:
        _read_until(lines, "Press Ctrl-C to stop everything.", 300, seen)
        _wait_answer(f"http://127.0.0.1:{edge_port}/readyz", 60)
        _wait_answer(f"http://127.0.0.1:{admin_port}/login/", 120)
        redis_pid = int((services / "redis" / "redis.pid").read_text())
        pg_pid = int((services / "postgres" / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
        pg_port = int((services / "postgres" / "pgdata" / "postmaster.pid").read_text().splitlines()[3])

        os.kill(redis_pid, signal.SIGKILL)
        _read_until(lines, "Redis (embedded) stopped unexpectedly; restarted on port", 60, seen)
        _wait_answer(f"http://127.0.0.1:{edge_port}/readyz", 60)
        os.kill(pg_pid, signal.SIGKILL)
        _read_until(lines, "PostgreSQL (embedded) stopped unexpectedly; restarted on port", 60, seen)
        _wait_answer(f"http://127.0.0.1:{edge_port}/readyz", 60)
        _wait_answer(f"http://127.0.0.1:{admin_port}/login/", 60)
        assert proc.poll() is None
        new_redis = int((services / "redis" / "redis.pid").read_text())
        assert new_redis != redis_pid and _alive(new_redis)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert code == 0, out
    assert "stopping the others" not in out
    assert not _alive(new_redis) and not _port_open(pg_port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_line = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat_line.rsplit(")", 1)[-1][:4]


def _wait_answer(url: str, timeout: float) -> None:
    """Until `url` answers 200 (the parts come back by themselves after a server restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.5)
