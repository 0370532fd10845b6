"""The benchmark harness, end to end with tiny numbers: its own databases, three servers, real load."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from shared_support import process_env

from heartline.devstack import free_port
from loadtests.servers import process_cpu_s, tree_cpu_s


@pytest.mark.slow
def test_bench_measures_floor_heartbeats_and_memory_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = process_env(sealing_secrets=False)
    res = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--rounds", "1", "--duration", "1", "--warmup", "1",
         "--sessions", "40", "--large-sessions", "300", "--hot-set", "40", "--connections", "4",
         "--variants", "edge,edge-unsigned,edge-multiplexed,edge-session-mac", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"edge", "edge-unsigned", "edge-multiplexed", "edge-session-mac"}
    # signed and unsigned side by side, from the same run
    assert len(data["signing"]["rps_ratio"]) == 1 and data["signing"]["rps_ratio"][0] > 0
    assert "heartbeat signed / unsigned" in res.stdout
    # session-bound answer MACs beside them (the heartbeats carrying Heartline-Answer-Key)
    assert len(data["session_mac"]["rps_ratio"]) == 1 and "MACed / Ed25519-signed" in res.stdout
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


@pytest.mark.slow
def test_bench_measures_the_edge_on_granian_against_a_granian_floor_beside_uvicorn(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--rounds", "1", "--duration", "1", "--warmup", "1",
         "--sessions", "40", "--large-sessions", "100", "--hot-set", "40", "--connections", "4",
         "--variants", "edge,edge-granian", "--json", str(out)],
        env=process_env(sealing_secrets=False), capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    (uvicorn_round,), (granian_round,) = data["variants"]["edge"], data["variants"]["edge-granian"]
    for variant, round_ in (("edge", uvicorn_round), ("edge-granian", granian_round)):
        for name in ("heartbeat", "heartbeat_large", "heartbeat_half_rate"):
            assert round_[name]["ok"] > 0, (variant, name)
            assert round_[name]["refused"] == 0 and round_[name]["socket_errors"] == 0, (variant, name)
        # CPU counted for the process that serves: granian's app runs in a worker process it spawned
        assert round_["cpu_us_per_request"]["heartbeat"] > 0 and round_["cpu_us_per_request"]["floor"] > 0
    # each edge against the floor on its own server, measured in the same round
    assert granian_round["floor"] != uvicorn_round["floor"]
    assert granian_round["floor_ratio"] == pytest.approx(
        granian_round["heartbeat"]["ok_rps"] / granian_round["floor"]["rps"], rel=0.01)
    choice = data["server_choice"]
    assert choice["rps_ratio"] == [pytest.approx(
        granian_round["heartbeat"]["ok_rps"] / uvicorn_round["heartbeat"]["ok_rps"], rel=0.01)]
    assert choice["ship_threshold"] == 1.2
    assert choice["ships"] == (choice["rps_ratio_median"] >= 1.2)
    assert "heartbeat granian / uvicorn" in res.stdout
    assert "(granian)" in res.stdout and "(uvicorn)" in res.stdout


def test_granian_variants_are_served_by_granian_with_the_app_in_a_worker_process(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.serve", "floor-granian", "--port", str(port)],
                            env=process_env(sealing_secrets=False), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/sessions/abc/heartbeat",
                                    json={"license_key": "HL-ABCDE"}, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "floor-granian did not start"
                time.sleep(0.1)
        assert answer.status_code == 200 and answer.headers["server"] == "granian"
        assert set(answer.json()) == {"expires_at", "next_heartbeat_in_s", "offline_grace_s"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                assert client.post("/v1/sessions/abc/heartbeat", json={"license_key": "HL-ABCDE"}).is_success
        # the requests were answered by granian's worker, a child process: its CPU time is in the tree's
        assert tree_cpu_s(proc.pid) > process_cpu_s(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)
