"""The Redis-only measurement end to end with tiny numbers: its own two Redis servers filled through the
plane, the shipped heartbeat, its variants and the controls driven at both sizes, Redis's figures read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shared_support import process_env

from loadtests.plane_cpu import PARTS, heartbeat_without, workloads


def test_every_variant_takes_out_exactly_its_part_of_the_shipped_heartbeat() -> None:
    # the variants follow heartbeat.lua by its lines: a renamed call fails loudly instead of measuring
    # the whole script under another name
    for part in PARTS:
        assert heartbeat_without(part).count("-- (taken out for the measurement)") == 1
    assert heartbeat_without(*PARTS).count("-- (taken out for the measurement)") == len(PARTS)


@pytest.mark.slow
def test_plane_cpu_measures_both_sizes_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "plane_cpu.json"
    res = subprocess.run(
        [sys.executable, "-m", "loadtests.plane_cpu", "--sizes", "30,200", "--per-license", "3",
         "--hot-set", "40", "--duration", "0.2", "--rounds", "1", "--idle", "0.1", "--shards", "4",
         "--json", str(out)],
        env=process_env(sealing_secrets=False), capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [t["sessions"] for t in data["targets"]] == [30, 200]
    assert all(t["expiry_after"]["keys"] > 0 for t in data["targets"])
    names = [w.name for w in workloads()]
    for target in data["targets"]:
        results = data["results"][target["label"]]
        assert list(results) == names
        for name, (figures,) in results.items():
            # every call answered, and Redis counted the command driven
            assert figures["calls"] > 0, (target["label"], name)
            command = next(w.command for w in workloads() if w.name == name)
            assert figures["commandstats"][command]["calls"] == figures["calls"], (target["label"], name)
        # the shipped heartbeat ran its own commands inside: the live-set ZADD and the deadline index's
        assert results["heartbeat (as shipped)"][0]["commandstats"]["zadd"]["calls"] >= \
            results["heartbeat (as shipped)"][0]["calls"]
    assert "heartbeat (as shipped)" in res.stdout and "expiry at 200" in res.stdout
