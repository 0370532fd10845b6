"""The floor server and both load generators, against a real uvicorn."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest

from loadtests.floor import create_app
from loadtests.loadgen import (
    pace_for,
    read_requests,
    run_asyncio_client,
    run_wrk,
    write_requests,
    wrk_available,
)


def _requests(tmp_path: Path, good: int, bad: int = 0) -> Path:
    pairs = [(f"/v1/sessions/{uuid.uuid4()}/heartbeat", b'{"license_key":"HL-AAAAA-BBBBB-CCCCC-DDDDD"}')
             for _ in range(good)]
    pairs += [(f"/v1/sessions/{uuid.uuid4()}/heartbeat", b'{"license_key":7}') for _ in range(bad)]
    return write_requests(tmp_path / "requests.txt", pairs)


async def test_floor_decodes_the_heartbeat_body_and_answers_like_the_edge() -> None:
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
        ok = await client.post(f"/v1/sessions/{uuid.uuid4()}/heartbeat", json={"license_key": "HL-ABCDE"})
        bad = await client.post(f"/v1/sessions/{uuid.uuid4()}/heartbeat", json={"license": 1})
    assert ok.status_code == 200
    assert set(ok.json()) == {"expires_at", "next_heartbeat_in_s", "offline_grace_s"}
    # the same encoding as the edge's HeartbeatResponse: a msgspec datetime in UTC
    assert ok.json()["expires_at"].endswith("Z")
    assert bad.status_code == 422


def test_request_files_round_trip_and_refuse_multiline_bodies(tmp_path: Path) -> None:
    pairs = [("/a", b'{"x":1}'), ("/b", b"{}")]
    assert read_requests(write_requests(tmp_path / "r.txt", pairs)) == pairs
    with pytest.raises(ValueError):
        write_requests(tmp_path / "bad.txt", [("/a", b'{\n"x":1}')])


def test_pacing_makes_whole_millisecond_delays_that_give_the_rate() -> None:
    connections, delay_ms = pace_for(5000, 64)
    assert delay_ms == 13 and connections == 65
    assert connections * 1000 / delay_ms == 5000
    assert pace_for(10, 64) == (64, 6400)


def test_asyncio_client_counts_answers_refusals_and_latencies(floor_url: str, tmp_path: Path) -> None:
    result = run_asyncio_client(floor_url, _requests(tmp_path, good=30, bad=10), "AF-test", duration_s=1.0,
                                connections=4)
    assert result.tool == "asyncio"
    assert result.requests == result.ok + result.refused
    assert result.ok > 0 and result.refused > 0  # the 422s of the bad bodies are counted, not hidden
    assert result.socket_errors == 0
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert json.loads(json.dumps(result.as_dict()))["ok_rps"] > 0


def test_paced_asyncio_client_never_exceeds_its_rate(floor_url: str, tmp_path: Path) -> None:
    result = run_asyncio_client(floor_url, _requests(tmp_path, good=20), "AF-test", duration_s=1.0,
                                connections=4, rate=100)
    # a fixed schedule of 100/s for about a second: never more, whatever the machine's speed
    assert 0 < result.requests <= 100 * result.duration_s + 4
    assert result.target_rate == 100


@pytest.mark.skipif(not wrk_available(), reason="wrk is not installed")
def test_wrk_reports_the_same_figures(floor_url: str, tmp_path: Path) -> None:
    result = run_wrk(floor_url, _requests(tmp_path, good=30, bad=10), "AF-test", duration_s=1, connections=4)
    assert result.tool == "wrk"
    assert result.ok > 0 and result.refused > 0
    assert result.requests == result.ok + result.refused
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    paced = run_wrk(floor_url, _requests(tmp_path, good=30), "AF-test", duration_s=1, connections=4, rate=100)
    assert 0 < paced.requests <= 100 * paced.duration_s + 4


def test_floor_reply_is_what_the_edge_encodes() -> None:
    from edge.schemas import HeartbeatResponse, encode, utc_from_ms
    from loadtests.floor import HeartbeatReply

    edge = encode(HeartbeatResponse(expires_at=utc_from_ms(1_800_000_000_123), next_heartbeat_in_s=30))
    floor = msgspec.json.encode(HeartbeatReply(expires_at=utc_from_ms(1_800_000_000_123), next_heartbeat_in_s=30))
    assert floor == edge
