"""The chaos soak for two minutes: its own stack, the population, every kind of fault, and the verdict.

It runs `python -m loadtests.chaos` exactly as documented (docs/durability.md) and holds it to its exit
status: non-zero means a promise was broken (a heartbeat answered 200 and lost outside a Redis crash's
loss window, a session without its true end reason, a license over its limits, a 500, a process that
died by itself, a backlog that did not drain) and the report's violations say which.  Nothing in it
depends on how fast the machine is: the checks compare times only with the server's own clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from shared_support import process_env

from loadtests.chaos.faults import FaultKind

REPO = Path(__file__).resolve().parents[2]
MINUTES = 2


@pytest.mark.slow
def test_two_minute_soak_breaks_no_promise(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "loadtests.chaos", "--minutes", str(MINUTES), "--out", str(tmp_path)]
    server = os.environ.get("HEARTLINE_TEST_DATABASE_URL")
    if server:
        command += ["--database-url", server]   # a fresh database on it, dropped at the end
    env = process_env(sealing_secrets=False)
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                         timeout=MINUTES * 60 + 900)
    output = run.stdout[-8000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # every kind of fault was injected, and the population really worked between them
    assert {f["kind"] for f in report["faults"]} == {k.value for k in FaultKind}, output
    assert report["figures"]["heartbeats"]["answered_200"] > 0, output
    assert report["figures"]["sessions"]["reasons"].get("client_end", 0) > 0, output
    assert run.returncode == 0, output
    assert report["violations"] == [], output
