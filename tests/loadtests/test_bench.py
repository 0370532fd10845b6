"""The benchmark harness, end to end with tiny numbers: its own databases, three servers, real load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shared_support import process_env


@pytest.mark.slow
def test_bench_measures_floor_heartbeats_and_memory_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = process_env(sealing_secrets=False)
    res = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--rounds", "1", "--duration", "1", "--warmup", "1",
         "--sessions", "40", "--large-sessions", "300", "--hot-set", "40", "--connections", "4",
         "--variants", "edge,edge-unsigned,edge-multiplexed", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"edge", "edge-unsigned", "edge-multiplexed"}
    # signed and unsigned side by side, from the same run
    assert len(data["signing"]["rps_ratio"]) == 1 and data["signing"]["rps_ratio"][0] > 0
    assert "heartbeat signed / unsigned" in res.stdout
    for variant, (round_,) in data["variants"].items():
        assert round_["floor"]["rps"] > 0
        # every heartbeat of the hot set was accepted: the sessions the bench started are live on the edges
        for name in ("heartbeat", "heartbeat_large", "heartbeat_half_rate"):
            assert round_[name]["ok"] > 0, (variant, name)
            assert round_[name]["refused"] == 0 and round_[name]["socket_errors"] == 0, (variant, name)
        assert round_["floor_ratio"] == pytest.approx(round_["heartbeat"]["ok_rps"] / round_["floor"]["rps"],
                                                      rel=0.01)
    small, large = data["planes"]
    assert (small["sessions"], large["sessions"]) == (40, 300)
    # measured without the filling connection's buffers, so even 40 sessions show their own bytes
    assert small["bytes_per_session"] > 0 and large["bytes_per_session"] > 0
    assert large["breakdown"] and all(isinstance(v, float) for v in small["breakdown"].values())
    assert data["machine"]["nproc"] >= 1
    assert "heartbeat / floor" in res.stdout and "Redis memory per live session" in res.stdout
