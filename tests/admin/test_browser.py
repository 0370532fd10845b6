"""The admin end to end in real headless Chromium, with a real edge and worker beside it: sign in, enrol
TOTP from the shown secret, sign out and in again with a code, create a customer and a license, generate
an API key, start a session through the edge, see it live, terminate it, find it in the history as
admin_terminated.  Screenshots of the dashboard and the license page go to artifacts/ (not committed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from admin_support import Admin
from flask import Flask
from shared_support import one, process_env

from admin.security.totp import code_for, current_step
from heartline.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def admin_server(admin_app: Flask) -> Iterator[str]:
    """The admin served by waitress, as `heartline admin` does, on a free port."""
    from waitress.server import create_server

    server = create_server(admin_app, host="127.0.0.1", port=free_port(), threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
    finally:
        server.close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {WAIT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def edge_and_worker(admin_settings: Settings, pg: psycopg.Connection[Any],
                    tmp_path: Path) -> Iterator[str]:
    """`heartline edge` and `heartline worker` as subprocesses on the suite's servers (started after
    `pg` emptied the tables and Redis, so the worker's consumer groups are its own)."""
    env = process_env()
    edge_port, metrics_port = free_port(), free_port()
    env.update({
        "HEARTLINE_DATABASE_URL": admin_settings.database_url or "",
        "HEARTLINE_REDIS_URL": admin_settings.redis_url or "",
        "HEARTLINE_STREAM_SHARDS": str(admin_settings.stream_shards),
        "HEARTLINE_HEARTBEAT_MIN_GAP_MS": "0",
        "HEARTLINE_DATA_DIR": str(tmp_path / "data"),
        "HEARTLINE_WORKER_METRICS_PORT": str(metrics_port),
        "HEARTLINE_FLUSH_INTERVAL_S": "0.2",
    })
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for part, args in (("edge", ["--port", str(edge_port)]), ("worker", [])):
            log = tmp_path / f"{part}.log"
            handle = log.open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "heartline", part, *args], cwd=ROOT, env=env,
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((proc, log))
        _wait_http(f"http://127.0.0.1:{edge_port}/readyz", *procs[0])
        _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", *procs[1])
        yield f"http://127.0.0.1:{edge_port}"
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def browser_page(admin_server: str) -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium); .ci/run installs it")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROMIUM_ARGS)
        context = await browser.new_context(base_url=admin_server, viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            await context.close()
            await browser.close()


async def sign_in_with_password(page: Any, admin: Admin) -> None:
    await page.goto("/login/")
    await page.fill("#username", admin.username)
    await page.fill("#password", admin.password)
    await page.click("input[type=submit]")


async def until(page: Any, url: str, text: str) -> str:
    """Reload `url` until its content shows `text` (the worker mirrors within a flush interval)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        await page.goto(url)
        content = str(await page.content())
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} did not appear on {url} within {WAIT_S}s")
        await asyncio.sleep(0.5)


async def test_admin_end_to_end_in_chromium(
        browser_page: Any, edge_and_worker: str, make_admin: Callable[..., Admin],
        pg: psycopg.Connection[Any], admin_app: Flask, admin_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    page = browser_page
    # the dashboard's refusal chart reads this run's edge
    monkeypatch.setitem(admin_app.config, "HEARTLINE_SETTINGS",
                        admin_settings.replace(admin_edge_metrics_urls=f"{edge_and_worker}/metrics"))
    admin = make_admin("browser")

    # First sign-in: password, then enrolment from the secret shown beside the QR code.
    await sign_in_with_password(page, admin)
    await page.wait_for_url("**/totp/enroll")
    assert await page.locator("#totp-qr svg").count() == 1
    secret = (await page.inner_text("#totp-secret")).strip()
    await page.fill("#code", code_for(secret, current_step()))
    await page.click("#confirm")
    await page.locator("#recovery-codes").wait_for()
    codes = await page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    await page.click("#continue")
    await page.wait_for_url("**/dashboard/")

    # Sign out, and in again with a code (the next step's: the current one was used, replays are refused).
    await page.goto("/logout/")
    await page.goto("/dashboard/")
    assert "/login/" in page.url
    await sign_in_with_password(page, admin)
    await page.wait_for_url("**/totp/verify")
    await page.fill("#code", code_for(secret, current_step() + 1))
    await page.click("#verify")
    await page.wait_for_url("**/dashboard/")

    # A customer and a license through the forms.
    await page.goto("/customerview/add")
    await page.fill("#name", "Browser Customer GmbH")
    await page.click("#model_form button[type=submit]")
    customer_id = one(pg.execute("SELECT id FROM customers WHERE name = 'Browser Customer GmbH'"))[0]
    await page.goto("/licenseview/add")
    await page.evaluate(f"$('#customer').val('{customer_id}').trigger('change')")
    await page.fill("#device_limit", "3")
    await page.fill("#concurrent_sessions_limit", "2")
    await page.click("#model_form button[type=submit]")
    await page.wait_for_load_state()
    flash = await page.inner_text(".alert-info")
    license_key = re.search(r"HL(-[A-Z0-9]{5}){4}", flash)
    assert license_key, flash
    license_id = one(pg.execute("SELECT id FROM licenses WHERE license_key = %s",
                            (license_key.group(0),)))[0]

    # The system API key from the "Lizenzserver Administration" page, shown once.
    await page.goto("/system/")
    await page.fill("#name", "browser test")
    await page.click("#generate")
    api_key = (await page.inner_text("#new-api-key")).strip()

    # A session started through the edge shows up among the live sessions.
    async with httpx.AsyncClient(base_url=edge_and_worker, headers={"X-API-Key": api_key}) as edge:
        started = await edge.post("/v1/sessions", json={"license_key": license_key.group(0),
                                                        "hardware_fingerprint": "browser-fp-1",
                                                        "device_name": "test laptop"})
        assert started.status_code == 201, started.text
        token = started.json()["session_token"]
        for _ in range(3):
            beat = await edge.post(f"/v1/sessions/{token}/heartbeat",
                                   json={"license_key": license_key.group(0)})
            assert beat.status_code == 200, beat.text
        # a second device fits the limit of 2 sessions, a third is refused (the dashboard counts it)
        second = await edge.post("/v1/sessions", json={"license_key": license_key.group(0),
                                                       "hardware_fingerprint": "browser-fp-2"})
        third = await edge.post("/v1/sessions", json={"license_key": license_key.group(0),
                                                      "hardware_fingerprint": "browser-fp-3"})
        assert (second.status_code, third.status_code) == (201, 409)
        assert third.json()["error"]["code"] == "SESSION_LIMIT_REACHED"
        await until(page, "/livesessionview/list/", token)

        content = await until(page, "/dashboard/", "last hour: 3")
        assert "SESSION_LIMIT_REACHED" in content
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
        await page.goto(f"/licenseview/show/{license_id}")
        await page.screenshot(path=str(ARTIFACTS / "admin-license.png"), full_page=True)

        # Terminate it from the list: tick the row, Actions → Terminate, confirm.
        await page.goto("/livesessionview/list/")
        await page.check(f"input.action_check[value='{token}']")
        await page.click("button.dropdown-toggle:has-text('Actions')")
        await page.click(".terminate_menu_item")
        await page.click("#modal-confirm-ok")
        await page.wait_for_load_state()
        assert "terminated" in await page.inner_text(".alert-success")

        # The client learns at its next heartbeat; the history says why.
        beat = await edge.post(f"/v1/sessions/{token}/heartbeat", json={"license_key": license_key.group(0)})
        assert beat.status_code == 404 and beat.json()["error"]["code"] == "SESSION_NOT_FOUND"
        ended = await edge.post(f"/v1/sessions/{second.json()['session_token']}/end",
                                json={"license_key": license_key.group(0)})
        assert ended.status_code == 200, ended.text
    content = await until(page, "/sessionhistoryview/list/?_flt_0_end_reason=admin_terminated", token)
    assert "admin_terminated" in content
    reason = pg.execute("SELECT end_reason FROM session_history WHERE session_token = %s", (token,)).fetchone()
    assert reason == ("admin_terminated",)
    await until(page, "/livesessionview/list/", "No records found")

    # Suspending the license on its page reaches the edge at once.
    await page.goto(f"/licenseview/show/{license_id}")
    await page.click("text=Suspend")
    await page.click("#modal-confirm-ok")
    await page.wait_for_load_state()
    assert "suspended" in await page.inner_text(".alert-success")
    async with httpx.AsyncClient(base_url=edge_and_worker, headers={"X-API-Key": api_key}) as edge:
        refused = await edge.post("/v1/sessions", json={"license_key": license_key.group(0),
                                                        "hardware_fingerprint": "browser-fp-1"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "LICENSE_SUSPENDED"
    actors = {r[0] for r in pg.execute("SELECT DISTINCT actor FROM audit_log WHERE table_name IN "
                                       "('customers', 'licenses', 'api_keys')")}
    assert actors == {f"admin:{admin.username}"}
    assert (ARTIFACTS / "admin-dashboard.png").stat().st_size > 10_000


async def test_the_admin_works_under_its_content_security_policy(
        browser_page: Any, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any]) -> None:
    """Every script FAB and our screens need runs under the CSP (nonce, no inline handlers): pages with
    widgets and a list action through its confirmation dialog work, and Chromium reports no violation."""
    from admin_rows import license_row

    page = browser_page
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.add_init_script("document.addEventListener('securitypolicyviolation', "
                               "e => console.error('Content Security Policy violation: ' + e.violatedDirective))")
    await signed_in_page(page, make_admin("csp"))
    answer = await page.goto("/licenseview/list/")
    assert answer is not None and "nonce-" in (await answer.all_headers())["content-security-policy"]

    lic = license_row(pg)
    for url in ("/dashboard/", f"/licenseview/show/{lic['id']}", f"/licenseview/edit/{lic['id']}",
                "/licenseview/add", "/livesessionview/list/", "/sessionhistoryview/list/", "/auditlogview/list/",
                "/resources/", "/system/"):
        await page.goto(url)
    # select2 (a script) turned the customer field into its widget
    await page.goto(f"/licenseview/edit/{lic['id']}")
    assert await page.locator(".select2-container").count() > 0
    await page.goto("/licenseview/list/")
    await page.check(f"input.action_check[value='{lic['id']}']")
    await page.click("button.dropdown-toggle:has-text('Actions')")
    await page.click(".suspend_menu_item")
    await page.click("#modal-confirm-ok")
    await page.wait_for_load_state()
    assert "suspended" in await page.inner_text(".alert-success")
    assert violations == []


async def signed_in_page(page: Any, admin: Admin) -> None:
    """Password, TOTP enrolment from the shown secret, recovery codes: on the dashboard."""
    await sign_in_with_password(page, admin)
    await page.wait_for_url("**/totp/enroll")
    # mid-sign-in: the navbar offers no "Login" (the password was accepted)
    assert await page.locator(".navbar a:has-text('Login')").count() == 0
    secret = (await page.inner_text("#totp-secret")).strip()
    await page.fill("#code", code_for(secret, current_step()))
    await page.click("#confirm")
    await page.click("#continue")
    await page.wait_for_url("**/dashboard/")


async def literal_cells(page: Any) -> list[str]:
    """Table cells (lists and show pages) that print a Python literal instead of a value."""
    cells = await page.locator("table td").all_inner_texts()
    return [c for c in cells if c.strip() in ("None", "True", "False", "[]")]


async def test_license_pages_show_which_license_and_guard_the_destructive_action(
        browser_page: Any, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any]) -> None:
    from admin_rows import license_row

    page = browser_page
    await signed_in_page(page, make_admin("polish"))
    # notes, device-change limit, heartbeat values: all empty in this row
    lic = license_row(pg, valid_until=None)
    for url in ("/licenseview/list/", f"/licenseview/show/{lic['id']}", "/customerview/list/",
                "/users/list/", "/apikeyview/list/"):
        await page.goto(url)
        assert await literal_cells(page) == [], url
    await page.goto(f"/licenseview/show/{lic['id']}")
    assert (await page.inner_text("#license-header-key")).strip() == lic["license_key"]
    assert (await page.inner_text("#license-header-status")).strip() == "active"
    assert "never expires" in await page.inner_text("#license-header")
    assert await page.locator("td:has-text('—')").count() >= 2
    assert await page.locator(".favicon, link[rel=icon]").count() == 1
    # an active license offers no Reactivate; Revoke is the destructive one, in red
    actions = page.locator(".hl-show-actions")
    assert await actions.locator("a:has-text('Reactivate')").count() == 0
    revoke = actions.locator("a:has-text('Revoke')")
    assert "btn-danger" in (await revoke.get_attribute("class") or "")

    # Edit from the show page: the form says which license it edits, dates as 24-hour UTC text
    await page.click("#hl-edit")
    await page.wait_for_url(f"**/licenseview/edit/{lic['id']}")
    assert (await page.inner_text("#license-header-key")).strip() == lic["license_key"]
    assert await page.get_attribute("#valid_from", "type") == "text"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", await page.input_value("#valid_from"))
    assert "Quota: domains" in await page.inner_text("#model_form")
    widths = {await page.eval_on_selector(f"#{field}", "e => e.getBoundingClientRect().width")
              for field in ("product", "valid_from", "device_limit", "quota_domains", "offline_grace_s")}
    assert len(widths) == 1, widths

    # Revoke asks first; Cancel changes nothing
    await page.goto(f"/licenseview/show/{lic['id']}")
    await page.click(".hl-show-actions a:has-text('Revoke')")
    dialog = page.locator("#modal-confirm").first  # one per embedded list, too: the first is the page's
    await dialog.wait_for(state="visible")
    assert "for good" in await dialog.inner_text()
    await dialog.locator("button:has-text('Cancel')").click()
    await dialog.wait_for(state="hidden")
    assert pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)).fetchone() == ("active",)
    # OK revokes, and the admin is back on the license's page, which now offers Reactivate
    await page.click(".hl-show-actions a:has-text('Revoke')")
    await dialog.wait_for(state="visible")
    await page.click("#modal-confirm-ok")
    await page.wait_for_url(f"**/licenseview/show/{lic['id']}")
    assert "revoked" in await page.inner_text(".alert-success")
    assert pg.execute("SELECT status FROM licenses WHERE id = %s", (lic["id"],)).fetchone() == ("revoked",)
    assert (await page.inner_text("#license-header-status")).strip() == "revoked"
    assert await actions.locator("a:has-text('Reactivate')").count() == 1
    assert await actions.locator("a:has-text('Revoke')").count() == 0


async def test_sessions_found_by_token_and_terminated_from_the_filtered_list(
        browser_page: Any, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any],
        admin_settings: Settings) -> None:
    from admin_rows import license_row, mirror_session
    from admin_support import is_live, start_live_session

    page = browser_page
    lic = license_row(pg)
    tokens = [await asyncio.to_thread(start_live_session, admin_settings, lic["id"], f"fp-{n}") for n in range(2)]
    for n, token in enumerate(tokens):
        mirror_session(pg, lic["id"], token, f"fp-{n}")
    await signed_in_page(page, make_admin("support"))
    await page.goto("/livesessionview/list/")
    assert await literal_cells(page) == []
    body = await page.inner_text("table.table-bordered")
    assert tokens[0] in body and tokens[1] in body

    # Search → Add filter → Session, the token a customer read out, Search
    await page.click("a.accordion-toggle:has-text('Search')")
    await page.click("#filter_form button.dropdown-toggle")
    await page.click("#filter_form a.filter[name=session_token]")
    await page.fill("#filter_form input.filter_val", tokens[1])
    await page.click("#filter_form button[type=submit]")
    await page.wait_for_url("**_flt_0_session_token=*")
    filtered = page.url.split("#")[0]
    body = await page.inner_text("table.table-bordered")
    assert tokens[1] in body and tokens[0] not in body
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "admin-sessions-search.png"), full_page=True)

    # terminate it from there: the admin lands back on the same filtered list, not on the dashboard
    await page.check(f"input.action_check[value='{tokens[1]}']")
    await page.click("button.dropdown-toggle:has-text('Actions')")
    menu_item = page.locator(".terminate_menu_item")
    assert await menu_item.evaluate("e => getComputedStyle(e).color") == "rgb(201, 48, 44)"  # red
    await menu_item.click()
    await page.click("#modal-confirm-ok")
    await page.wait_for_load_state()
    assert page.url.split("#")[0] == filtered
    assert "terminated" in await page.inner_text(".alert-success")
    assert not await asyncio.to_thread(is_live, admin_settings, lic["id"], tokens[1])
    assert await asyncio.to_thread(is_live, admin_settings, lic["id"], tokens[0])
