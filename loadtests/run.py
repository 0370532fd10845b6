"""One command for a load run: seed, run locust headless for a bounded time, summarise, check PostgreSQL.

    python -m loadtests.run --users 200 --spawn-rate 50 --duration 60s --time-scale 30 --start-stack
    python -m loadtests.run --users 200 --spawn-rate 50 --duration 60s --host http://127.0.0.1:8000

Against a running stack, PostgreSQL is found like every other command does (HEARTLINE_DATABASE_URL, or a
running `heartline dev`); the worker must be running, since the check waits for it.  With `--start-stack`
the command brings up `heartline dev --without admin` on free ports in a temporary folder and stops it at
the end; it then also divides the server's minimum heartbeat gap by the time scale, as the clients
divide their intervals.

Reports go to loadtests/reports/<time>/: locust's CSV files and HTML report, the seed, the locust log.
The summary shows requests/s, p50/p95/p99 per endpoint and the failure ratio; then the command waits for
the worker to drain and compares the heartbeats the edge accepted (200 answers counted by the clients)
with the rows of the run's licenses in license_heartbeats.  Exit status 0 only when they are equal and
the failure ratio is at most --max-failure-ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from heartline import db, services
from heartline.devstack import free_port
from heartline.settings import Settings, SettingsError
from loadtests.seed import PROGRAM_PRODUCT, REFUSAL_PRODUCT, LicenseSpec, Seed, dump, seed

REPORTS = Path(__file__).with_name("reports")
LOCUSTFILE = Path(__file__).with_name("locustfile.py")

COUNT_HEARTBEATS = "SELECT count(*) FROM license_heartbeats WHERE license_id = ANY($1::bigint[])"


@dataclass
class Stack:
    url: str
    database_url: str
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `heartline dev` stops its parts and the databases
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_duration(text: str) -> float:
    """'60s', '2m', '1h30m' or plain seconds, as locust's --run-time takes them."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 60s, 2m, 1h30m)")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def started_stack(workdir: Path, time_scale: float, log_path: Path) -> Iterator[Stack]:
    """`heartline dev --without admin` with its own data folder and ports."""
    data_dir = workdir / "stack"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTLINE_")}
    env.update({"HEARTLINE_DATA_DIR": str(data_dir), "HEARTLINE_EDGE_PORT": str(port),
                "HEARTLINE_ADMIN_PORT": str(free_port()), "HEARTLINE_WORKER_METRICS_PORT": str(free_port()),
                "HEARTLINE_BACKUP_DIR": str(workdir / "backups"),
                # clients beat time_scale times faster, so the server's minimum gap shrinks alike
                "HEARTLINE_HEARTBEAT_MIN_GAP_MS": str(int(Settings().heartbeat_min_gap_ms / time_scale))})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "heartline", "dev", "--without", "admin"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = Stack(url=f"http://127.0.0.1:{port}", database_url="", proc=proc)
    try:
        state = data_dir / "dev.json"
        deadline = time.monotonic() + 180
        while not state.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`heartline dev` did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        stack.database_url = json.loads(state.read_text())["database_url"]
        _wait_http(f"{stack.url}/readyz", 120, proc, log_path)
        yield stack
    finally:
        stack.stop()


def license_specs(users: int) -> list[LicenseSpec]:
    """Two programs per license (sessions limit 2, device limit 3); a license per ten misbehaving
    clients with 2 devices / 1 session, and one suspended license."""
    return [
        LicenseSpec(count=users // 2 + 1, device_limit=3, sessions_limit=2, product=PROGRAM_PRODUCT),
        LicenseSpec(count=users // 200 + 1, device_limit=2, sessions_limit=1, product=REFUSAL_PRODUCT),
        LicenseSpec(count=1, device_limit=1, sessions_limit=1, status="suspended", product=REFUSAL_PRODUCT),
    ]


def read_stats(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summarize(rows: list[dict[str, str]]) -> tuple[str, float]:
    """Text table of the locust stats, and the failure ratio over all requests."""
    lines = [f"{'endpoint':<34} {'requests':>9} {'fails':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)"]
    total = failures = 0
    for row in rows:
        name = row["Name"] if row["Type"] != "" else "Aggregated"
        count, fails = int(row["Request Count"]), int(row["Failure Count"])
        if name == "Aggregated":
            total, failures = count, fails
        lines.append(f"{name[:34]:<34} {count:>9} {fails:>6} {float(row['Requests/s']):>8.1f} "
                     f"{row['50%']:>6} {row['95%']:>6} {row['99%']:>6}")
    ratio = failures / total if total else 0.0
    lines.append(f"failure ratio: {ratio:.4f} ({failures} of {total})")
    return "\n".join(lines), ratio


async def wait_for_heartbeats(database_url: str, license_ids: list[int], accepted: int,
                              timeout_s: float) -> int:
    """Rows of these licenses in license_heartbeats once they reach `accepted` or stop growing."""
    conn = await db.connect(database_url, actor="loadtest")
    try:
        last, last_change = -1, time.monotonic()
        while True:
            stored = int(await conn.fetchval(COUNT_HEARTBEATS, license_ids))
            now = time.monotonic()
            if stored != last:
                last, last_change = stored, now
            if stored >= accepted and stored == last and now - last_change >= 1.0:
                return stored  # reached, and nothing more trickling in
            if now - last_change > timeout_s:
                return stored
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def seed_run(database_url: str, users: int) -> Seed:
    conn = await db.connect(database_url, actor="loadtest")
    try:
        return await seed(conn, license_specs(users))
    finally:
        await conn.close()


def run_locust(args: argparse.Namespace, host: str, seed_file: Path, out: Path) -> tuple[int, Path]:
    accepted_file = out / "accepted.json"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{int(args.duration)}s",
           "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
           "--stop-timeout", "15", "--loglevel", "WARNING",
           "--seed-file", str(seed_file), "--time-scale", str(args.time_scale),
           "--validate-share", str(args.validate_share), "--restart-share", str(args.restart_share),
           "--accepted-file", str(accepted_file)]
    with (out / "locust.log").open("wb") as log_file:
        proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, check=False,
                              timeout=args.duration + 180)
    return proc.returncode, accepted_file


def execute(args: argparse.Namespace, stack: Stack, out: Path) -> int:
    started = time.perf_counter()
    seed_data = asyncio.run(seed_run(stack.database_url, args.users))
    seed_file = out / "seed.json"
    seed_file.write_bytes(dump(seed_data))
    print(f"run {seed_data.run_id}: {len(seed_data.licenses)} licenses seeded; {args.users} users at "
          f"{args.spawn_rate}/s for {args.duration:.0f} s against {stack.url} (time scale {args.time_scale:g})",
          flush=True)
    code, accepted_file = run_locust(args, stack.url, seed_file, out)
    stats_csv = out / "locust_stats.csv"
    if not stats_csv.exists() or not accepted_file.exists():
        print(f"locust did not finish (exit {code}); its log:\n{(out / 'locust.log').read_text()[-3000:]}",
              file=sys.stderr)
        return 1
    table, failure_ratio = summarize(read_stats(stats_csv))
    print(table)
    counts = json.loads(accepted_file.read_text())
    accepted = int(counts["accepted_heartbeats"])
    print(f"waiting for the worker to store {accepted} accepted heartbeats ...", flush=True)
    stored = asyncio.run(wait_for_heartbeats(stack.database_url, seed_data.license_ids(), accepted,
                                             args.drain_timeout))
    same = stored == accepted
    print(f"heartbeats accepted by the edge: {accepted}; rows in license_heartbeats: {stored} -> "
          f"{'equal' if same else 'MISMATCH'}")
    print(f"reports: {out}  (locust_stats.csv, report.html, locust.log); took {time.perf_counter() - started:.0f} s")
    ok = same and accepted > 0 and failure_ratio <= args.max_failure_ratio
    if accepted == 0:
        print("no heartbeat was accepted: nothing was load-tested (see locust.log)")
    if failure_ratio > args.max_failure_ratio:
        print(f"failure ratio {failure_ratio:.4f} is above --max-failure-ratio {args.max_failure_ratio}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="simulated clients (default 100)")
    parser.add_argument("--spawn-rate", type=float, default=20, help="clients started per second (default 20)")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="run time, e.g. 60s or 5m")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="divide heartbeat intervals by this (30: a 30 s interval runs at 1 s)")
    parser.add_argument("--validate-share", type=float, default=0.05)
    parser.add_argument("--restart-share", type=float, default=0.01)
    parser.add_argument("--host", default=None, help="edge URL (default from HEARTLINE_EDGE_HOST/PORT)")
    parser.add_argument("--start-stack", action="store_true",
                        help="bring up `heartline dev` (edge + worker, own databases) for this run")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="give up waiting for the worker after this many seconds without progress")
    parser.add_argument("--max-failure-ratio", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default loadtests/reports/<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0 or args.time_scale <= 0:
        print("loadtests.run: --users, --spawn-rate and --time-scale must be positive", file=sys.stderr)
        return 2
    out = args.out or REPORTS / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.start_stack:
        with tempfile.TemporaryDirectory(prefix="heartline-load-") as tmp, \
                started_stack(Path(tmp), args.time_scale, out / "stack.log") as stack:
            return execute(args, stack, out)
    try:
        settings = services.resolve(Settings.from_env(), need_redis=False)
    except SettingsError as exc:
        print(f"loadtests.run: {exc} (or pass --start-stack)", file=sys.stderr)
        return 2
    host = args.host or f"http://{settings.edge_host}:{settings.edge_port}"
    return execute(args, Stack(url=host, database_url=settings.database_url or ""), out)


if __name__ == "__main__":
    raise SystemExit(main())
