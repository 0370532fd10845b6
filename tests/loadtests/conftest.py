"""Fixtures of the load-test smoke tests: a real uvicorn serving the floor, on a free port."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from shared_support import process_env

from heartline.devstack import free_port


@pytest.fixture(scope="module")
def floor_url() -> Iterator[str]:
    port = free_port()
    env = process_env(sealing_secrets=False)
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.serve", "floor", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the floor server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
