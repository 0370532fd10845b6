"""Helpers of the admin tests (import as `from admin_support import ...`; tests/admin is on sys.path
when pytest collects it): admin users, CSRF-aware form posts, password + TOTP sign-in."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from admin.security.totp import code_for, current_step

PASSWORD = "correct horse battery"


@dataclass
class Admin:
    username: str
    password: str
    id: int
    secret: str | None = None

    def code(self, step_offset: int = 0) -> str:
        assert self.secret
        return code_for(self.secret, current_step() + step_offset)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def post_form(client: FlaskClient, url: str, data: dict[str, Any], *, page: str | None = None,
              follow: bool = False) -> Any:
    """POST like a browser: fetch the page for its CSRF token first (or use `page`)."""
    html = client.get(page or url).get_data(as_text=True)
    return client.post(url, data={**data, "csrf_token": csrf_token(html)}, follow_redirects=follow)


def password_step(client: FlaskClient, admin: Admin) -> Any:
    return post_form(client, "/login/", {"username": admin.username, "password": admin.password})


def enrol(client: FlaskClient, admin: Admin) -> list[str]:
    """Password, then enrolment with the secret shown on the page; returns the recovery codes."""
    response = password_step(client, admin)
    assert response.status_code == 302 and response.location.endswith("/totp/enroll")
    page = client.get("/totp/enroll").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page)
    assert secret
    admin.secret = secret.group(1)
    done = client.post("/totp/enroll", data={"code": admin.code(), "csrf_token": csrf_token(page)})
    assert done.status_code == 200, done.get_data(as_text=True)
    codes = re.findall(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>", done.get_data(as_text=True))
    assert len(codes) == 10
    return codes


def wait_next_step() -> None:
    """Sleep into the next 30 s TOTP step (a code of the current step was used already)."""
    time.sleep(30 - time.time() % 30 + 0.05)
