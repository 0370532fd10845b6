"""The one-command locust run against a `heartline dev` it starts itself, and its helpers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from shared_support import process_env

from loadtests.run import license_specs, parse_duration, summarize
from loadtests.scenarios.context import ScenarioContext, ScenarioOptions
from loadtests.seed import Seed, SeededLicense


def test_durations_read_like_locusts() -> None:
    assert parse_duration("60s") == 60
    assert parse_duration("2m") == 120
    assert parse_duration("1h30m") == 5400
    assert parse_duration("15") == 15
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")


def test_summary_reads_locusts_csv_rows() -> None:
    def row(kind: str, name: str, count: int, fails: int) -> dict[str, str]:
        return {"Type": kind, "Name": name, "Request Count": str(count), "Failure Count": str(fails),
                "Requests/s": "12.5", "50%": "2", "95%": "7", "99%": "12"}

    text, ratio = summarize([row("POST", "heartbeat", 300, 1), row("", "Aggregated", 400, 2)])
    assert ratio == pytest.approx(2 / 400)
    assert "heartbeat" in text and "failure ratio: 0.0050 (2 of 400)" in text


def test_programs_get_two_per_license_and_refusals_their_own_licenses() -> None:
    specs = license_specs(users=10)
    lic = [SeededLicense(id=i, key=f"LT-{i:08d}", device_limit=s.device_limit, sessions_limit=s.sessions_limit,
                         interval_s=30, status=s.status)
           for i, s in enumerate(spec for spec in specs for _ in range(spec.count))]
    ctx = ScenarioContext.from_seed(Seed(run_id="r", api_key="k", customer_id=1, licenses=lic),
                                    ScenarioOptions())
    picks = [ctx.program_license().id for _ in range(6)]
    assert picks == [picks[0], picks[0], picks[2], picks[2], picks[4], picks[4]] and len(set(picks)) == 3
    assert all(p.sessions_limit == 2 for p in ctx.programs)
    assert all(r.sessions_limit == 1 and r.status == "active" for r in ctx.refusals)
    assert [s.status for s in ctx.suspended] == ["suspended"]


@pytest.mark.slow
def test_run_drives_a_dev_stack_and_finds_every_accepted_heartbeat_in_postgresql(tmp_path: Path) -> None:
    env = process_env(sealing_secrets=False)
    res = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--users", "6", "--spawn-rate", "6", "--duration", "8s",
         "--time-scale", "30", "--start-stack", "--drain-timeout", "30", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + (
        (tmp_path / "stack.log").read_text()[-3000:] if (tmp_path / "stack.log").exists() else "")
    assert "-> equal" in res.stdout
    accepted = json.loads((tmp_path / "accepted.json").read_text())
    assert accepted["accepted_heartbeats"] > 0
    assert (tmp_path / "report.html").exists() and (tmp_path / "locust_stats.csv").exists()
    assert "heartbeat" in res.stdout and "failure ratio: 0.0000" in res.stdout
