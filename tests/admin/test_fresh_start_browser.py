"""A newcomer's first minutes, kept clean: a fresh `heartline dev` (embedded PostgreSQL and Redis, a new
data folder), the demo admin signs in with the printed password and enrols TOTP in real Chromium, then
clicks every entry of the navbar.  Not one ERROR or WARNING line may be logged on the way, from
Heartline or from Flask-AppBuilder, waitress, uvicorn, arq: a first start that greets the user with
warnings teaches them to ignore warnings."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shared_support import process_env, pump

from admin.security.totp import code_for, current_step
from heartline.devstack import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# A log line of any part: "<date> <time> LEVEL logger message", possibly behind "admin  | " or "edge   | ".
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


class DevProcess:
    def __init__(self, data: Path) -> None:
        env = process_env(sealing_secrets=False)
        self.edge_port, self.admin_port = free_port(), free_port()
        env.update(HEARTLINE_DATA_DIR=str(data), HEARTLINE_EDGE_PORT=str(self.edge_port),
                   HEARTLINE_ADMIN_PORT=str(self.admin_port), HEARTLINE_WORKER_METRICS_PORT=str(free_port()))
        self.proc = subprocess.Popen([sys.executable, "-m", "heartline", "dev"], env=env, cwd=data.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=pump, args=(self.proc.stdout or [], self.lines), daemon=True)
        self.reader.start()

    def drain(self) -> str:
        """Everything printed, once the process has ended and its output is read to the end."""
        self.reader.join(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def read_until(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if needle in line:
                return "".join(self.seen)
        raise AssertionError(f"{needle!r} not seen within {timeout}s:\n" + "".join(self.seen))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def fresh_dev() -> Iterator[DevProcess]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium); .ci/run installs it")
    # not under pytest's tmp_path (0700 there; PostgreSQL runs as another user when the tests run as root)
    with tempfile.TemporaryDirectory(prefix="heartline-fresh-") as tmp:
        dev = DevProcess(Path(tmp) / "data")
        try:
            yield dev
        finally:
            if dev.proc.poll() is None:
                dev.stop()


def menu_links(links: list[list[str]]) -> list[tuple[str, str]]:
    """The navbar's entries that open a screen: not the dropdown toggles, not sign-out, not downloads."""
    found: list[tuple[str, str]] = []
    for text, href in links:
        if not href or href.startswith(("#", "javascript")) or "logout" in href or href.endswith(".csv"):
            continue
        if href not in [h for _, h in found]:
            found.append((text, href))
    return found


async def test_fresh_dev_start_and_every_menu_entry_log_no_warning_or_error(fresh_dev: DevProcess) -> None:
    from playwright.async_api import async_playwright

    out = fresh_dev.read_until("Press Ctrl-C to stop everything.", 300)
    password = re.search(r"Demo admin: +user 'admin', password '([^']+)'", out)
    assert password, out
    visited: list[tuple[str, str, int]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROMIUM_ARGS)
        context = await browser.new_context(base_url=f"http://127.0.0.1:{fresh_dev.admin_port}",
                                            viewport={"width": 1366, "height": 900})
        page: Any = await context.new_page()
        page.set_default_timeout(30_000)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        try:
            await page.goto("/login/")
            await page.fill("#username", "admin")
            await page.fill("#password", password.group(1))
            await page.click("input[type=submit]")
            await page.wait_for_url("**/totp/enroll")
            secret = (await page.inner_text("#totp-secret")).strip()
            await page.fill("#code", code_for(secret, current_step()))
            await page.click("#confirm")
            await page.click("#continue")
            await page.wait_for_url("**/dashboard/")
            links = menu_links(await page.eval_on_selector_all(
                ".navbar a[href]", "els => els.map(e => [e.textContent.trim(), e.getAttribute('href')])"))
            assert len(links) >= 20, links
            # every menu entry, and the demo license's own pages (show, edit, heartbeats)
            for text, href in [*links, ("license", "/licenseview/show/1"), ("license form", "/licenseview/edit/1"),
                               ("license heartbeats", "/heartbeats/?license=1")]:
                answer = await page.goto(href)
                assert answer is not None
                visited.append((text, href, answer.status))
                # the demo data fills the screens: no cell prints a Python literal
                cells = await page.locator("table td").all_inner_texts()
                literals = [c for c in cells if c.strip() in ("None", "True", "False", "[]")]
                assert literals == [], (href, literals)
                # the navbar fits on one row at 1366 px (one row is ~50 px high)
                assert await page.eval_on_selector(".navbar", "e => e.getBoundingClientRect().height") < 60, href
        finally:
            await context.close()
            await browser.close()
    assert [v for v in visited if v[2] != 200] == [], visited
    assert page_errors == []
    assert {"Live sessions", "Session history", "Heartbeats", "Licenses"} <= {t for t, _, _ in visited}
    assert fresh_dev.stop() == 0
    log = fresh_dev.drain()
    problems = [line for line in log.splitlines() if PROBLEM.search(line)]
    assert problems == [], "\n".join(problems)
